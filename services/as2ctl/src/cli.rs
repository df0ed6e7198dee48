//! Command-line syntax of as2ctl.

use std::path::PathBuf;

use as2_rpc::mdn::v1::DeliveryState;
use as2_rpc::routing::v1::{Compression, EncryptionCipher, MdnMode, SigningDigest};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operate the AS2 gateway: manage partnerships and their certificates, follow
/// asynchronous MDN deliveries.
#[derive(Parser, Debug)]
#[command(name = "as2ctl", version)]
pub struct Cli {
    /// URL of the routing service's gRPC endpoint.
    #[arg(
        long,
        env = "AS2_ROUTING_URL",
        default_value = "https://127.0.0.1:50051",
        global = true
    )]
    pub routing_url: String,

    /// URL of the MDN service's gRPC endpoint (for `mdn` commands).
    #[arg(
        long,
        env = "AS2_MDN_URL",
        default_value = "https://127.0.0.1:50052",
        global = true
    )]
    pub mdn_url: String,

    /// PEM client certificate for the gRPC services (mutual TLS); its common name must
    /// name the operator role (`operator` or `operator:NAME`). Without this flag as2ctl
    /// uses `operator.crt`, `operator.key` and `ca.crt` from `--credentials-dir`.
    #[arg(long, env = "AS2_GRPC_TLS_CERT", global = true)]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of `--grpc-tls-cert`.
    #[arg(long, env = "AS2_GRPC_TLS_KEY", global = true)]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM CA bundle the services' certificates must chain to.
    #[arg(long, env = "AS2_GRPC_TLS_CA", global = true)]
    pub grpc_tls_ca: Option<PathBuf>,

    /// Where the quick start keeps its local CA and the operator's credential; used
    /// when no `--grpc-tls-*` file is given.
    #[arg(
        long,
        env = "AS2_CTL_CREDENTIALS_DIR",
        default_value = ".as2-gateway/grpc",
        global = true
    )]
    pub credentials_dir: PathBuf,

    /// Development only: talk to services that run gRPC in plain text.
    #[arg(long, env = "AS2_GRPC_INSECURE_PLAINTEXT", global = true)]
    pub grpc_insecure_plaintext: bool,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for the routing service to answer.
    #[arg(
        long,
        env = "AS2_CTL_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub timeout_secs: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only complicate matching"
)]
pub enum Command {
    /// Manage partnerships.
    #[command(subcommand)]
    Partnership(PartnershipCommand),
    /// Follow asynchronous MDN deliveries.
    #[command(subcommand)]
    Mdn(MdnCommand),
    /// Send a file to an AS2 endpoint as a trading partner would, and judge the MDN.
    ///
    /// Exits 0 when the message was delivered (a processed MDN for our Message-ID with
    /// the right MIC, signature verified when one was asked for), 1 otherwise.
    Send(SendArgs),
    /// Read documents from a Kafka topic (without joining a consumer group).
    Consume(ConsumeArgs),
    /// Find archived messages (as received) and the answers we returned.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Redis set-up: the per-service ACL users.
    #[command(subcommand)]
    Redis(RedisCommand),
}

/// `as2ctl redis ...`
#[derive(Subcommand, Debug)]
pub enum RedisCommand {
    /// Print one `ACL SETUSER` line per service (edge, routing, mdn, sender), each user
    /// limited to its service's keys and to the commands the gateway uses; pipe them
    /// into `redis-cli` as an admin user.
    Acl(RedisAclArgs),
}

/// `as2ctl redis acl`
#[derive(Args, Debug)]
pub struct RedisAclArgs {
    /// The gateway's key prefix (users are named `{prefix}-{service}`).
    #[arg(long, env = "AS2_REDIS_KEY_PREFIX", default_value = "as2")]
    pub key_prefix: String,
    /// Only this service's user.
    #[arg(long, value_parser = ["edge", "routing", "mdn", "sender"])]
    pub service: Option<String>,
    /// Take each user's password from `AS2_REDIS_PASSWORD_{SERVICE}`
    /// (`AS2_REDIS_PASSWORD_EDGE`, ...) instead of printing a placeholder.
    #[arg(long)]
    pub passwords_from_env: bool,
}

/// `as2ctl archive ...`
#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// The archive entries of one partnership on one day (UTC).
    List(ArchiveListArgs),
    /// Every archived attempt of one message, by its AS2 ids; with --output-dir, the
    /// message as received and our answer are written there.
    Get(ArchiveGetArgs),
}

/// `as2ctl archive list`
#[derive(Args, Debug)]
pub struct ArchiveListArgs {
    /// The partnership id.
    #[arg(long)]
    pub partnership: String,

    /// The day, YYYY-MM-DD (UTC); default: today.
    #[arg(long)]
    pub date: Option<String>,

    /// The object store.
    #[command(flatten)]
    pub store: ArchiveStoreArgs,
}

/// `as2ctl archive get`
#[derive(Args, Debug)]
pub struct ArchiveGetArgs {
    /// AS2-From of the message (the partner's AS2 ID, unquoted).
    #[arg(long, value_name = "AS2_ID")]
    pub from: String,

    /// AS2-To of the message (ours).
    #[arg(long, value_name = "AS2_ID")]
    pub to: String,

    /// The Message-ID as sent (angle brackets included when it had them).
    #[arg(long)]
    pub message_id: String,

    /// Write `message` and `answer` of each attempt into this directory.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// The object store.
    #[command(flatten)]
    pub store: ArchiveStoreArgs,
}

/// Where the archive is.
#[derive(Args, Debug)]
pub struct ArchiveStoreArgs {
    /// The store's options; without `--object-store-url`, the quick start's
    /// `.as2-gateway/objects` in the current directory.
    #[command(flatten)]
    pub object_store: as2_store::ObjectStoreArgs,
}

/// `as2ctl send`
#[derive(Args, Debug)]
pub struct SendArgs {
    /// The file to send.
    pub file: PathBuf,

    /// The receiver's AS2 URL.
    #[arg(long)]
    pub url: String,

    /// AS2-From: the sender's AS2 ID.
    #[arg(long, value_name = "AS2_ID")]
    pub from: String,

    /// AS2-To: the receiver's AS2 ID.
    #[arg(long, value_name = "AS2_ID")]
    pub to: String,

    /// Sign with this private key (PEM); needs --sign-cert.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,

    /// The certificate (PEM) of --sign-key.
    #[arg(long, value_name = "FILE")]
    pub sign_cert: Option<PathBuf>,

    /// Digest of the signature, the MIC and the signed MDN asked for.
    #[arg(long, value_enum, default_value_t = DigestArg::Sha256)]
    pub digest: DigestArg,

    /// Sign with RSASSA-PSS instead of PKCS #1 v1.5.
    #[arg(long)]
    pub pss: bool,

    /// Encrypt for this certificate (PEM or DER): the receiver's.
    #[arg(long, value_name = "FILE")]
    pub encrypt_cert: Option<PathBuf>,

    /// Content cipher when encrypting.
    #[arg(long, value_enum, default_value_t = CipherArg::Aes256Cbc)]
    pub cipher: CipherArg,

    /// Wrap the content key with RSAES-OAEP (SHA-256) instead of PKCS #1 v1.5.
    #[arg(long)]
    pub oaep: bool,

    /// Compress the document (RFC 5402), before or after signing.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compress: CompressionArg,

    /// How the MDN comes back: in the response, POSTed to a local listener, or not at all.
    #[arg(long, value_enum, default_value_t = MdnModeArg::Sync)]
    pub mdn: MdnModeArg,

    /// Ask for an unsigned MDN instead of a signed one.
    #[arg(long)]
    pub unsigned_mdn: bool,

    /// Certificate (PEM or DER) that verifies the MDN's signature; defaults to
    /// --encrypt-cert.
    #[arg(long, value_name = "FILE")]
    pub mdn_cert: Option<PathBuf>,

    /// Where to listen for an asynchronous MDN.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDRESS")]
    pub async_mdn_listen: std::net::SocketAddr,

    /// The URL the receiver POSTs the asynchronous MDN to, when it is not
    /// `http://{listen address}/mdn` (behind NAT or a proxy).
    #[arg(long, value_name = "URL")]
    pub async_mdn_url: Option<String>,

    /// Seconds to wait for an asynchronous MDN.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub mdn_timeout_secs: u64,

    /// Seconds the partner may take to read more of the body, and to answer once it has
    /// all of it (a large file on a slow line is not cut for its size).
    #[arg(
        long = "send-timeout-secs",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub timeout_secs: u64,

    /// Send the body chunked, as it is built, instead of building it into a temporary
    /// file first and sending it with a Content-Length.
    #[arg(long)]
    pub chunked: bool,

    /// The document's MIME type.
    #[arg(long, default_value = "application/octet-stream")]
    pub content_type: String,

    /// Subject header.
    #[arg(long)]
    pub subject: Option<String>,
}

/// `as2ctl consume`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Kafka bootstrap servers, `host:port,...` (the services' flag and variable;
    /// `--bootstrap-servers` is its old name and still works).
    #[arg(
        long = "kafka-bootstrap-servers",
        alias = "bootstrap-servers",
        env = "AS2_KAFKA_BOOTSTRAP_SERVERS"
    )]
    pub bootstrap_servers: String,

    /// The topic to read.
    #[arg(long)]
    pub topic: String,

    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<usize>,

    /// Stop after this many seconds without a record.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub idle_secs: u64,

    /// Start at the end of each partition (only records arriving from now on).
    #[arg(long)]
    pub from_end: bool,

    /// Write each document to a file in this directory instead of printing it; a
    /// document the record references in the object store is fetched from there (and
    /// its SHA-256 checked).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// The object store of referenced documents: by default the one the record's
    /// `as2-document-location` names, with these credentials.
    #[command(flatten)]
    pub object_store: as2_store::ObjectStoreArgs,

    /// Extra librdkafka properties, `key=value` (TLS, SASL), repeatable (comma-separated
    /// in the variable), as for the services.
    #[arg(
        long = "kafka-option",
        env = "AS2_KAFKA_OPTIONS",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = as2_common::config::parse_key_value
    )]
    pub kafka_options: Vec<(String, String)>,
}

/// `as2ctl mdn ...`
#[derive(Subcommand, Debug)]
pub enum MdnCommand {
    /// Show one delivery.
    Status(MdnStatusArgs),
    /// List recent deliveries, newest first.
    List(MdnListArgs),
}

/// `mdn status`
#[derive(Args, Debug)]
pub struct MdnStatusArgs {
    /// The delivery id (as EnqueueMdnDelivery returned it, or as `mdn list` shows it).
    pub delivery_id: String,
}

/// `mdn list`
#[derive(Args, Debug)]
pub struct MdnListArgs {
    /// Only deliveries of this partnership.
    #[arg(long, value_name = "ID")]
    pub partnership: Option<String>,

    /// Only deliveries in this state.
    #[arg(long, value_enum)]
    pub state: Option<DeliveryStateArg>,

    /// Show at most this many deliveries.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// A delivery state on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeliveryStateArg {
    /// Stored, not attempted yet.
    Queued,
    /// Being attempted.
    InFlight,
    /// Waiting for the next attempt.
    RetryScheduled,
    /// Accepted by the partner.
    Delivered,
    /// Every attempt failed (or the URL is not supported).
    Failed,
}

impl From<DeliveryStateArg> for DeliveryState {
    fn from(state: DeliveryStateArg) -> Self {
        match state {
            DeliveryStateArg::Queued => Self::Queued,
            DeliveryStateArg::InFlight => Self::InFlight,
            DeliveryStateArg::RetryScheduled => Self::RetryScheduled,
            DeliveryStateArg::Delivered => Self::Delivered,
            DeliveryStateArg::Failed => Self::Failed,
        }
    }
}

/// `as2ctl partnership ...`
#[derive(Subcommand, Debug)]
pub enum PartnershipCommand {
    /// Create a partnership.
    Add(AddArgs),
    /// Change a partnership; only the options given change.
    Update(UpdateArgs),
    /// Delete a partnership.
    Remove(RemoveArgs),
    /// List all partnerships.
    List,
    /// Show one partnership, by id or by its AS2-From / AS2-To pair.
    Show(ShowArgs),
}

/// `partnership add`
#[derive(Args, Debug)]
pub struct AddArgs {
    /// Partnership id (lowercase letters, digits, '.', '_', '-'); generated
    /// when left out.
    #[arg(long)]
    pub id: Option<String>,

    /// The partner's AS2 ID (the AS2-From of messages it sends us).
    #[arg(long)]
    pub from: String,

    /// Our AS2 ID (the AS2-To of messages the partner sends us).
    #[arg(long)]
    pub to: String,

    /// Kafka topic that the partner's documents are published to.
    #[arg(long)]
    pub topic: String,

    /// A file with the partner's certificate(s), PEM or DER; repeat for
    /// several (e.g. during a rotation).
    #[arg(long = "partner-cert", value_name = "FILE")]
    pub partner_certificates: Vec<PathBuf>,

    /// A file with the partner's HTTPS client certificate(s), PEM or DER, matched by
    /// fingerprint under `--require-tls-client-cert`; repeatable.
    #[arg(long = "partner-tls-client-cert", value_name = "FILE")]
    pub partner_tls_client_certificates: Vec<PathBuf>,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// `partnership update`
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The partnership to change.
    pub id: String,

    /// New AS2-From (partner's AS2 ID).
    #[arg(long)]
    pub from: Option<String>,

    /// New AS2-To (our AS2 ID).
    #[arg(long)]
    pub to: Option<String>,

    /// New Kafka topic.
    #[arg(long)]
    pub topic: Option<String>,

    /// Replace all partner certificates with the ones in these files (PEM or
    /// DER); repeatable.
    #[arg(
        long = "partner-cert",
        value_name = "FILE",
        conflicts_with = "remove_partner_certificates"
    )]
    pub partner_certificates: Vec<PathBuf>,

    /// Add the certificate(s) in this file (PEM or DER); repeatable.
    #[arg(long = "add-partner-cert", value_name = "FILE")]
    pub add_partner_certificates: Vec<PathBuf>,

    /// Add the partner's HTTPS client certificate(s) in this file (PEM or DER);
    /// repeatable.
    #[arg(long = "add-partner-tls-client-cert", value_name = "FILE")]
    pub add_partner_tls_client_certificates: Vec<PathBuf>,

    /// Remove the certificate with this SHA-256 fingerprint (as `show`
    /// prints it, colons optional); repeatable.
    #[arg(long = "remove-partner-cert", value_name = "SHA256")]
    pub remove_partner_certificates: Vec<String>,

    /// Only update if the partnership is still at this revision.
    #[arg(long)]
    pub expected_revision: Option<u64>,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// `partnership remove`
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The partnership to delete.
    pub id: String,

    /// Only delete if the partnership is still at this revision.
    #[arg(long)]
    pub expected_revision: Option<u64>,
}

/// `partnership show`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "from"])))]
pub struct ShowArgs {
    /// The partnership's id.
    pub id: Option<String>,

    /// Find the partnership by AS2-From instead (needs --to).
    #[arg(long, requires = "to")]
    pub from: Option<String>,

    /// AS2-To to go with --from.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
}

/// Settings shared by `add` and `update`. Boolean options take an optional
/// value: `--require-signature` means true, `--require-signature=false` turns
/// it off.
#[derive(Args, Debug, Default)]
pub struct SettingsArgs {
    /// Human-readable label.
    #[arg(long)]
    pub name: Option<String>,

    /// Id of our key that decrypts the partner's messages.
    #[arg(long, value_name = "KEY_ID")]
    pub decryption_key_id: Option<String>,

    /// Id of our key that signs MDNs for this partner.
    #[arg(long, value_name = "KEY_ID")]
    pub mdn_signing_key_id: Option<String>,

    /// Refuse unsigned messages.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub require_signature: Option<bool>,

    /// Refuse unencrypted messages.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub require_encryption: Option<bool>,

    /// Refuse messages that do not come over the edge's HTTPS with one of the partner's
    /// TLS client certificates (`--partner-tls-client-cert`): 403 with the reason.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub require_tls_client_cert: Option<bool>,

    /// Messages a minute accepted from this partner by each edge replica (bursts of as
    /// many); more get 429 with Retry-After. 0: no limit.
    #[arg(long, value_name = "COUNT")]
    pub max_messages_per_minute: Option<u32>,

    /// Largest message and document accepted from this partner, in bytes (0: the
    /// edge's global limit).
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<u64>,

    /// Archive this partner's messages as received, with our answers (default: on).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub archive: Option<bool>,

    /// Days this partner's archived messages are kept (0: the edge's default).
    #[arg(long, value_name = "DAYS")]
    pub archive_retention_days: Option<u32>,

    /// URL patterns the partner's asynchronous MDN URLs must match
    /// (comma-separated `scheme://host[:port][/path-prefix]`, host optionally
    /// `*.name`); empty list: any URL.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "PATTERNS")]
    pub async_mdn_url_patterns: Option<Vec<String>>,

    /// Deliver asynchronous MDNs to loopback, private and other non-public
    /// addresses too (default: public addresses only).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub async_mdn_allow_private_targets: Option<bool>,

    /// Most asynchronous MDNs of this partner queued at once (0: the default,
    /// 1000).
    #[arg(long, value_name = "COUNT")]
    pub async_mdn_max_queued: Option<u32>,

    /// Asynchronous MDNs: id of our key presented as the TLS client certificate
    /// (`tls.crt`, `tls.key` of the MDN service's key directory); empty: none.
    #[arg(long, value_name = "KEY_ID")]
    pub async_mdn_tls_client_key_id: Option<String>,

    /// Asynchronous MDNs: a file of the CA certificates (PEM or DER) the partner's
    /// server certificate must chain to, instead of the system's; empty: the system's.
    #[arg(long, value_name = "FILE")]
    pub async_mdn_tls_ca_file: Option<String>,

    /// Asynchronous MDNs: pin the partner's server certificate, by SHA-256
    /// fingerprint (colons optional) or a certificate file (PEM or DER) whose
    /// fingerprint is taken; comma-separated for several; empty list: no pin.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "SHA256_OR_FILE")]
    pub async_mdn_tls_pin: Option<Vec<String>>,

    /// Asynchronous MDNs: the egress proxy, `http://host:port` (tunnelled with
    /// CONNECT), `direct` (none, whatever the MDN service has) or `default` (the
    /// service's AS2_EGRESS_PROXY_URL).
    #[arg(long, value_name = "URL|direct|default")]
    pub async_mdn_egress_proxy: Option<String>,

    /// Digests accepted in signatures (comma-separated); empty list: all
    /// supported.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "DIGESTS")]
    pub signing_digests: Option<Vec<DigestArg>>,

    /// Ciphers accepted for encryption (comma-separated); empty list: all
    /// supported.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "CIPHERS")]
    pub encryption_ciphers: Option<Vec<CipherArg>>,

    /// Accept MD5 (insecure; legacy partners only).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_md5: Option<bool>,

    /// Refuse RSA PKCS #1 v1.5 key transport (accept RSA-OAEP only) in the partner's
    /// encrypted messages.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub refuse_rsa_pkcs1v15_key_transport: Option<bool>,

    /// Sign MDNs when the partner asks for a signed receipt.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub signed_mdn: Option<bool>,

    /// MIC algorithm when none of the partner's preferences fits.
    #[arg(long, value_name = "DIGEST")]
    pub default_micalg: Option<DigestArg>,

    /// Interop: accept signatures from certificates outside their validity
    /// period.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub skip_certificate_validity_check: Option<bool>,

    /// Outbound: the partner's AS2 URL (empty string: no outbound).
    #[arg(long, value_name = "URL")]
    pub outbound_url: Option<String>,

    /// Outbound: sign messages.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub outbound_sign: Option<bool>,

    /// Outbound: signature digest.
    #[arg(long, value_name = "DIGEST")]
    pub outbound_signing_digest: Option<DigestArg>,

    /// Outbound: id of our signing key (default: the MDN signing key).
    #[arg(long, value_name = "KEY_ID")]
    pub outbound_signing_key_id: Option<String>,

    /// Outbound: encrypt messages.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub outbound_encrypt: Option<bool>,

    /// Outbound: encryption cipher.
    #[arg(long, value_name = "CIPHER")]
    pub outbound_cipher: Option<CipherArg>,

    /// Outbound: compression.
    #[arg(long, value_name = "MODE")]
    pub outbound_compression: Option<CompressionArg>,

    /// Outbound: how the partner returns MDNs.
    #[arg(long, value_name = "MODE")]
    pub outbound_mdn: Option<MdnModeArg>,

    /// Outbound: ask for signed MDNs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub outbound_signed_mdn: Option<bool>,

    /// Outbound: our URL for asynchronous MDNs.
    #[arg(long, value_name = "URL")]
    pub async_mdn_url: Option<String>,

    /// Outbound: timeout of one send attempt in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub outbound_timeout_secs: Option<u32>,

    /// Outbound: retries of a failed send.
    #[arg(long, value_name = "COUNT")]
    pub outbound_max_retries: Option<u32>,

    /// Outbound: Subject header.
    #[arg(long, value_name = "TEXT")]
    pub outbound_subject: Option<String>,

    /// Outbound: send bodies with chunked transfer coding instead of a Content-Length.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub outbound_chunked: Option<bool>,

    /// Outbound: id of our key presented as the TLS client certificate to the
    /// partner's HTTPS endpoint (`tls.crt`, `tls.key` of the sender's key directory);
    /// empty: none.
    #[arg(long, value_name = "KEY_ID")]
    pub outbound_tls_client_key_id: Option<String>,

    /// Outbound: a file of the CA certificates (PEM or DER) the partner's server
    /// certificate must chain to, instead of the system's; empty: the system's.
    #[arg(long, value_name = "FILE")]
    pub outbound_tls_ca_file: Option<String>,

    /// Outbound: pin the partner's server certificate, by SHA-256 fingerprint (colons
    /// optional) or a certificate file (PEM or DER) whose fingerprint is taken;
    /// comma-separated for several; empty list: no pin. A server presenting another
    /// certificate gets nothing.
    #[arg(long, value_delimiter = ',', num_args = 0.., value_name = "SHA256_OR_FILE")]
    pub outbound_tls_pin: Option<Vec<String>>,

    /// Outbound: the egress proxy, `http://host:port` (tunnelled with CONNECT),
    /// `direct` (none, whatever the sender has) or `default` (the sender's
    /// AS2_EGRESS_PROXY_URL).
    #[arg(long, value_name = "URL|direct|default")]
    pub outbound_egress_proxy: Option<String>,
}

/// A signing digest on the command line and in JSON output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DigestArg {
    /// MD5 (needs --allow-md5).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl From<DigestArg> for SigningDigest {
    fn from(digest: DigestArg) -> Self {
        match digest {
            DigestArg::Md5 => Self::Md5,
            DigestArg::Sha1 => Self::Sha1,
            DigestArg::Sha224 => Self::Sha224,
            DigestArg::Sha256 => Self::Sha256,
            DigestArg::Sha384 => Self::Sha384,
            DigestArg::Sha512 => Self::Sha512,
        }
    }
}

/// An encryption cipher on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CipherArg {
    /// Triple DES (CBC).
    #[value(name = "3des")]
    DesEde3Cbc,
    /// AES-128-CBC.
    Aes128Cbc,
    /// AES-192-CBC.
    Aes192Cbc,
    /// AES-256-CBC.
    Aes256Cbc,
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
}

impl From<CipherArg> for EncryptionCipher {
    fn from(cipher: CipherArg) -> Self {
        match cipher {
            CipherArg::DesEde3Cbc => Self::DesEde3Cbc,
            CipherArg::Aes128Cbc => Self::Aes128Cbc,
            CipherArg::Aes192Cbc => Self::Aes192Cbc,
            CipherArg::Aes256Cbc => Self::Aes256Cbc,
            CipherArg::Aes128Gcm => Self::Aes128Gcm,
            CipherArg::Aes256Gcm => Self::Aes256Gcm,
        }
    }
}

/// Outbound compression on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// No compression.
    None,
    /// Compress, then sign.
    BeforeSigning,
    /// Sign, then compress.
    AfterSigning,
}

impl From<CompressionArg> for Compression {
    fn from(compression: CompressionArg) -> Self {
        match compression {
            CompressionArg::None => Self::Unspecified,
            CompressionArg::BeforeSigning => Self::BeforeSigning,
            CompressionArg::AfterSigning => Self::AfterSigning,
        }
    }
}

/// Outbound MDN mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MdnModeArg {
    /// No MDN requested.
    None,
    /// MDN in the HTTP response.
    Sync,
    /// MDN sent later to --async-mdn-url.
    Async,
}

impl From<MdnModeArg> for MdnMode {
    fn from(mode: MdnModeArg) -> Self {
        match mode {
            MdnModeArg::None => Self::Unspecified,
            MdnModeArg::Sync => Self::Sync,
            MdnModeArg::Async => Self::Async,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn booleans_take_an_optional_value() {
        let cli = Cli::try_parse_from([
            "as2ctl",
            "partnership",
            "update",
            "p1",
            "--require-signature",
            "--allow-md5=false",
            "--refuse-rsa-pkcs1v15-key-transport",
            "--signing-digests",
            "sha256,sha512",
        ])
        .unwrap();
        let Command::Partnership(PartnershipCommand::Update(update)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(update.settings.require_signature, Some(true));
        assert_eq!(update.settings.allow_md5, Some(false));
        assert_eq!(
            update.settings.refuse_rsa_pkcs1v15_key_transport,
            Some(true)
        );
        assert_eq!(
            update.settings.signing_digests,
            Some(vec![DigestArg::Sha256, DigestArg::Sha512])
        );
        assert_eq!(update.settings.require_encryption, None);
    }
}
