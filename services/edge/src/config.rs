//! The edge service's configuration: flags, each also an `AS2_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use as2_common::config::{
    AdminServerConfig, GrpcTlsConfig, RedisConfig, ShutdownConfig, TelemetryConfig,
};
use clap::{Args, Parser};

use crate::kafka::KafkaConfig;

/// Everything the edge needs to run.
#[derive(Parser, Clone, Debug)]
#[command(name = "as2-edge", version, about = "The AS2 gateway's inbound edge")]
pub struct EdgeConfig {
    /// Address the AS2 endpoint (HTTP/1.1 and h2c) listens on.
    #[arg(
        long = "as2-listen",
        env = "AS2_EDGE_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub as2_listen: SocketAddr,

    /// URL of the routing service's gRPC endpoint.
    #[arg(
        long = "routing-url",
        env = "AS2_ROUTING_URL",
        default_value = "https://127.0.0.1:50051"
    )]
    pub routing_url: String,

    /// URL of the MDN service's gRPC endpoint, which delivers asynchronous MDNs. Without
    /// it, messages that ask for an asynchronous MDN are answered 503 after nothing was
    /// published, so the partner resends once it is configured.
    #[arg(long = "mdn-url", env = "AS2_MDN_URL")]
    pub mdn_url: Option<String>,

    /// URL of the sender's gRPC endpoint, which reconciles the MDNs partners return for
    /// our outbound messages (see `partner_mdn`). Without it such MDNs get 503.
    #[arg(long = "sender-url", env = "AS2_SENDER_URL")]
    pub sender_url: Option<String>,

    /// HTTPS on the AS2 endpoint (without it: plain HTTP, TLS at the load balancer).
    #[command(flatten)]
    pub as2_tls: crate::tls::As2TlsConfig,

    /// The credential the edge calls routing, MDN service and sender with (mutual TLS;
    /// its certificate's common name is `edge`).
    #[command(flatten)]
    pub grpc_tls: GrpcTlsConfig,

    /// How inbound messages are read and answered.
    #[command(flatten)]
    pub inbound: InboundConfig,

    /// Our keys.
    #[command(flatten)]
    pub keys: KeysConfig,

    /// Admin HTTP server (health, metrics).
    #[command(flatten)]
    pub admin: AdminServerConfig,

    /// Redis (dedup records); the URL `memory://` keeps them in the process instead.
    #[command(flatten)]
    pub redis: RedisConfig,

    /// Kafka (documents).
    #[command(flatten)]
    pub kafka: KafkaConfig,

    /// The object store for documents too large for their Kafka record. Without
    /// `AS2_OBJECT_STORE_URL` there is none, and messages are limited to what a record
    /// holds (16 MiB bodies, 15 MiB documents).
    #[command(flatten)]
    pub object_store: as2_store::ObjectStoreArgs,

    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,

    /// Draining on SIGTERM.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

/// The default limit on message and document size: 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Limits without an object store: what one Kafka record holds.
pub const INLINE_ONLY_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// See [`INLINE_ONLY_MAX_BODY_BYTES`].
pub const INLINE_ONLY_MAX_DOCUMENT_BYTES: usize = 15 * 1024 * 1024;

/// Limits, timeouts and retention of the inbound path.
#[derive(Args, Clone, Debug)]
pub struct InboundConfig {
    /// Largest request body accepted, in bytes, from partnerships that set no limit of
    /// their own; larger ones get 413. (Without an object store: at most 16 MiB.)
    #[arg(long = "max-body-bytes", env = "AS2_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub max_body_bytes: u64,

    /// Largest document after decompression, in bytes, for partnerships that set no
    /// limit of their own (decompression bombs stop here). (Without an object store: at
    /// most 15 MiB.)
    #[arg(
        long = "max-document-bytes",
        env = "AS2_MAX_DOCUMENT_BYTES",
        default_value_t = DEFAULT_MAX_BYTES as usize
    )]
    pub max_document_bytes: usize,

    /// Most decompressed bytes per compressed byte (past the first MiB): a
    /// decompression bomb fails long before it reaches the size limit.
    #[arg(
        long = "max-compression-ratio",
        env = "AS2_MAX_COMPRESSION_RATIO",
        default_value_t = as2_protocol::unwrap::DEFAULT_MAX_COMPRESSION_RATIO
    )]
    pub max_compression_ratio: u64,

    /// Documents larger than this go to the object store, and their Kafka record
    /// carries a reference (claim check); smaller ones stay in the record.
    #[arg(
        long = "claim-check-threshold-bytes",
        env = "AS2_CLAIM_CHECK_THRESHOLD_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub claim_check_threshold_bytes: usize,

    /// Days a document stored for a reference record is kept; an hourly sweep deletes
    /// older ones (0: never; leave it to the store's lifecycle rules). Keep it at least
    /// as long as the topics' retention.
    #[arg(
        long = "claim-check-retention-days",
        env = "AS2_CLAIM_CHECK_RETENTION_DAYS",
        default_value_t = 7
    )]
    pub claim_check_retention_days: u32,

    /// Days each message of a known partnership is archived (the message as received and
    /// our answer, in the object store), for partnerships that set no retention of their
    /// own; 0: only partnerships with their own retention are archived. Needs an object
    /// store.
    #[arg(
        long = "archive-retention-days",
        env = "AS2_ARCHIVE_RETENTION_DAYS",
        default_value_t = 365
    )]
    pub archive_retention_days: u32,

    /// Memory budget, in MiB, for the bytes all requests together hold: body chunks in
    /// flight, inline documents (and the Kafka producer's copy), object-store upload
    /// parts. A request that finds it spent gets 503 with Retry-After.
    #[arg(
        long = "memory-budget-mib",
        env = "AS2_MEMORY_BUDGET_MIB",
        default_value_t = 512
    )]
    pub memory_budget_mib: usize,

    /// Seconds a client has to send the request headers.
    #[arg(
        long = "header-read-timeout-secs",
        env = "AS2_HEADER_READ_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub header_read_timeout_secs: u64,

    /// Seconds the request body may go without a byte arriving (408 beyond it); a big
    /// body on a slow line takes as long as it needs. The name is kept from when this
    /// bounded the whole body.
    #[arg(
        long = "body-read-timeout-secs",
        env = "AS2_BODY_READ_TIMEOUT_SECS",
        default_value_t = 300
    )]
    pub body_read_timeout_secs: u64,

    /// Slowest average rate, in bytes per second, at which a request body may arrive
    /// once it has taken longer than the body read timeout (408 below it; 0: no
    /// minimum). Only time spent waiting for the client counts. Against clients that
    /// send a byte now and then to hold a request open (slow loris); the default
    /// (1 KiB/s, 8 kbit/s) is far below any line that carries AS2 traffic.
    #[arg(
        long = "body-min-rate-bytes-per-sec",
        env = "AS2_BODY_MIN_RATE_BYTES_PER_SEC",
        default_value_t = 1024
    )]
    pub body_min_rate_bytes_per_sec: u64,

    /// Open connections to the AS2 endpoint at most; further clients wait in the
    /// listen backlog until one closes (a flood of idle connections cannot exhaust file
    /// descriptors or memory).
    #[arg(
        long = "max-connections",
        env = "AS2_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,

    /// Concurrent HTTP/2 streams per connection (each stream is a request with a
    /// body; the memory budget bounds their bytes, this their number).
    #[arg(
        long = "http2-max-concurrent-streams",
        env = "AS2_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 16
    )]
    pub http2_max_concurrent_streams: u32,

    /// Requests a minute accepted from one source address (IPv6: one /64) by this
    /// replica, in bursts of up to as many; more get 429 with Retry-After before
    /// anything else is done. 0: no limit (the default: behind a load balancer every
    /// request comes from its address; limit at the balancer then, and per partnership
    /// with `max_messages_per_minute`).
    #[arg(
        long = "rate-limit-per-source-per-minute",
        env = "AS2_RATE_LIMIT_PER_SOURCE_PER_MINUTE",
        default_value_t = 0
    )]
    pub rate_limit_per_source_per_minute: u32,

    /// Milliseconds a message stays claimed by a request that stopped renewing its claim
    /// (the request renews it every third of this while it works, however long that
    /// takes). A resend while the claim is held gets 503; after an edge dies, its
    /// messages are free again within this time.
    #[arg(
        long = "dedup-lease-ms",
        env = "AS2_DEDUP_LEASE_MS",
        default_value_t = 5_000
    )]
    pub dedup_lease_ms: u64,

    /// Seconds the answer to a processed message is kept, so a resend within that time
    /// gets the same MDN and publishes nothing.
    #[arg(long = "dedup-retention-secs", env = "AS2_DEDUP_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub dedup_retention_secs: u64,

    /// Seconds after which a document object whose attempt has not ended (the edge died
    /// between making it visible and storing the receipt, and no resend came) is settled
    /// by the orphan sweep: deleted when no record references it, kept when one does.
    #[arg(
        long = "orphan-sweep-after-secs",
        env = "AS2_ORPHAN_SWEEP_AFTER_SECS",
        default_value_t = 900
    )]
    pub orphan_sweep_after_secs: u64,

    /// Seconds between rounds of the orphan sweep (0: no sweep; objects of dead attempts
    /// then go with the claim-check retention).
    #[arg(
        long = "orphan-sweep-interval-secs",
        env = "AS2_ORPHAN_SWEEP_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub orphan_sweep_interval_secs: u64,

    /// Seconds a resolved partnership is cached when no change event drops it earlier.
    #[arg(
        long = "route-cache-ttl-secs",
        env = "AS2_ROUTE_CACHE_TTL_SECS",
        default_value_t = 60
    )]
    pub route_cache_ttl_secs: u64,

    /// The Reporting-UA of our MDNs.
    #[arg(
        long = "reporting-ua",
        env = "AS2_REPORTING_UA",
        default_value = "as2-gateway edge"
    )]
    pub reporting_ua: String,

    /// Domain part of the Message-IDs of our MDNs.
    #[arg(
        long = "message-id-domain",
        env = "AS2_MESSAGE_ID_DOMAIN",
        default_value = "as2-gateway.local"
    )]
    pub message_id_domain: String,

    /// Seconds suggested to partners in Retry-After when we answer 503.
    #[arg(
        long = "retry-after-secs",
        env = "AS2_RETRY_AFTER_SECS",
        default_value_t = 60
    )]
    pub retry_after_secs: u64,
}

impl InboundConfig {
    /// Defaults as the flags have them.
    pub fn defaults() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BYTES,
            max_document_bytes: DEFAULT_MAX_BYTES as usize,
            max_compression_ratio: as2_protocol::unwrap::DEFAULT_MAX_COMPRESSION_RATIO,
            claim_check_threshold_bytes: 1024 * 1024,
            claim_check_retention_days: 7,
            archive_retention_days: 365,
            memory_budget_mib: 512,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 300,
            body_min_rate_bytes_per_sec: 1024,
            max_connections: 4096,
            http2_max_concurrent_streams: 16,
            rate_limit_per_source_per_minute: 0,
            dedup_lease_ms: 5_000,
            dedup_retention_secs: 7 * 24 * 3600,
            orphan_sweep_after_secs: 900,
            orphan_sweep_interval_secs: 60,
            route_cache_ttl_secs: 60,
            reporting_ua: "as2-gateway edge".to_owned(),
            message_id_domain: "as2-gateway.local".to_owned(),
            retry_after_secs: 60,
        }
    }

    /// Header read timeout.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// Body idle timeout.
    pub fn body_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }
}

/// Where our private keys are.
#[derive(Args, Clone, Debug)]
pub struct KeysConfig {
    /// Directory with one sub-directory per key id, each holding `tls.key` and `tls.crt`
    /// (the layout of mounted `kubernetes.io/tls` Secrets).
    #[arg(
        long = "keys-dir",
        env = "AS2_KEYS_DIR",
        default_value = "/etc/as2/keys"
    )]
    pub keys_dir: PathBuf,

    /// Key id that decrypts messages of partnerships that name none.
    #[arg(
        long = "default-decryption-key-id",
        env = "AS2_DEFAULT_DECRYPTION_KEY_ID"
    )]
    pub default_decryption_key_id: Option<String>,

    /// Key id that signs MDNs of partnerships that name none, and the error MDNs sent to
    /// unknown partners.
    #[arg(long = "default-signing-key-id", env = "AS2_DEFAULT_SIGNING_KEY_ID")]
    pub default_signing_key_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_defaults_function_matches_the_flag_defaults() {
        let parsed = EdgeConfig::try_parse_from(["as2-edge"]).unwrap();
        let defaults = InboundConfig::defaults();
        assert_eq!(format!("{:?}", parsed.inbound), format!("{defaults:?}"));
    }

    #[test]
    fn every_flag_has_an_as2_environment_variable() {
        let missing =
            as2_common::config::flags_without_as2_environment_variable(&EdgeConfig::command());
        assert_eq!(missing, Vec::<String>::new());
    }
}
