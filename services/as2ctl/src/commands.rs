//! Carrying out as2ctl's commands against the routing service.

use std::path::PathBuf;
use std::time::Duration;

use as2_common::config::GrpcTlsConfig;
use as2_common::error_chain;
use as2_common::grpc::local_ca::OPERATOR_CREDENTIAL;
use as2_common::grpc::{ChannelError, ChannelSettings, GrpcSecurity};
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    CertificateUsage, CreatePartnershipRequest, DeletePartnershipRequest, EncryptionCipher,
    GetPartnershipRequest, InteropSwitches, ListPartnershipsRequest, MdnPreferences,
    OutboundSettings, PartnerCertificate, Partnership, ResolvePartnershipRequest, SecurityPolicy,
    SigningDigest, UpdatePartnershipRequest,
};
use as2_rpc::tonic::transport::Channel;
use as2_rpc::tonic::{Code, Status};

use crate::certificates::{
    CertificateFileError, LoadedCertificate, load_certificates, normalize_fingerprint,
};
use crate::cli::{
    AddArgs, Cli, Command, PartnershipCommand, RedisCommand, RemoveArgs, SettingsArgs, ShowArgs,
    UpdateArgs,
};
use crate::https::apply_https_settings;
use crate::output::{PartnershipView, render_detail, render_table};

/// How long connecting to the routing service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size used by `list`.
const LIST_PAGE_SIZE: u32 = 500;

/// Why a command failed. The message is what the operator sees.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A service URL is malformed.
    #[error("invalid {service} url {url:?}: {reason}")]
    InvalidUrl {
        /// Which service: `routing` or `mdn`.
        service: &'static str,
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A service cannot be reached.
    #[error("cannot reach the {service} service at {url}: {reason}")]
    Unreachable {
        /// Which service: `routing` or `mdn`.
        service: &'static str,
        /// The URL given.
        url: String,
        /// The transport's explanation.
        reason: String,
    },
    /// The routing service refused or failed the request.
    #[error("{0}")]
    Refused(String),
    /// No usable gRPC credential.
    #[error("{0}")]
    Credentials(String),
    /// A certificate file is unusable.
    #[error(transparent)]
    CertificateFile(#[from] CertificateFileError),
    /// The options make no sense together.
    #[error("{0}")]
    Usage(String),
    /// JSON output failed.
    #[error("cannot write json: {0}")]
    Json(#[from] serde_json::Error),
    /// The command ran, and its report (printed on standard output) says it did not
    /// succeed: a message that was not delivered.
    #[error("{0}")]
    Unsuccessful(String),
}

/// Runs the command and returns what to print on standard output.
pub async fn execute(cli: Cli) -> Result<String, CtlError> {
    let timeout = Duration::from_secs(cli.timeout_secs);
    let json = cli.json;
    let credentials = GrpcCredentialArgs {
        config: GrpcTlsConfig {
            grpc_tls_cert: cli.grpc_tls_cert.clone(),
            grpc_tls_key: cli.grpc_tls_key.clone(),
            grpc_tls_ca: cli.grpc_tls_ca.clone(),
            grpc_insecure_plaintext: cli.grpc_insecure_plaintext,
        },
        directory: cli.credentials_dir.clone(),
    };
    let command = match cli.command {
        Command::Mdn(command) => {
            let security = grpc_security(&credentials)?;
            let channel = connect("mdn", &cli.mdn_url, timeout, &security).await?;
            return crate::deliveries::execute(
                MdnDeliveryServiceClient::new(channel),
                command,
                json,
            )
            .await;
        }
        Command::Send(args) => return crate::send::execute(args, json).await,
        Command::Consume(args) => return crate::consume::execute(args, json).await,
        Command::Archive(command) => return crate::archive::execute(command, json).await,
        Command::Redis(RedisCommand::Acl(args)) => return crate::redis_acl::execute(&args),
        Command::Partnership(command) => command,
    };
    let security = grpc_security(&credentials)?;
    let mut client =
        RoutingServiceClient::new(connect("routing", &cli.routing_url, timeout, &security).await?);
    match command {
        PartnershipCommand::Add(args) => add(&mut client, args, json).await,
        PartnershipCommand::Update(args) => update(&mut client, args, json).await,
        PartnershipCommand::Remove(args) => remove(&mut client, args, json).await,
        PartnershipCommand::List => list(&mut client, json).await,
        PartnershipCommand::Show(args) => show(&mut client, args, json).await,
    }
}

/// The credential flags, taken from the command line before the command is.
struct GrpcCredentialArgs {
    config: GrpcTlsConfig,
    directory: PathBuf,
}

/// The gRPC credential as2ctl presents: the `--grpc-tls-*` files, or else the quick
/// start's operator credential in `--credentials-dir`, or plain text under the
/// development flag.
fn grpc_security(credentials: &GrpcCredentialArgs) -> Result<GrpcSecurity, CtlError> {
    let mut config = credentials.config.clone();
    let nothing_given = config.grpc_tls_cert.is_none()
        && config.grpc_tls_key.is_none()
        && config.grpc_tls_ca.is_none();
    if nothing_given && !config.grpc_insecure_plaintext {
        let directory = &credentials.directory;
        let certificate = directory.join(format!("{OPERATOR_CREDENTIAL}.crt"));
        if !certificate.exists() {
            return Err(CtlError::Credentials(format!(
                "no gRPC client certificate: pass --grpc-tls-cert, --grpc-tls-key and \
                 --grpc-tls-ca (AS2_GRPC_TLS_*), or run as2ctl where the quick start keeps \
                 its credentials ({} not found)",
                certificate.display()
            )));
        }
        config = GrpcTlsConfig::mutual_tls(
            certificate,
            directory.join(format!("{OPERATOR_CREDENTIAL}.key")),
            directory.join("ca.crt"),
        );
    }
    GrpcSecurity::from_config(&config).map_err(|error| CtlError::Credentials(error_chain(&error)))
}

/// Connects to the gRPC endpoint of `service` at `url`.
async fn connect(
    service: &'static str,
    url: &str,
    timeout: Duration,
    security: &GrpcSecurity,
) -> Result<Channel, CtlError> {
    let settings = ChannelSettings {
        connect_timeout: CONNECT_TIMEOUT,
        request_timeout: timeout,
    };
    as2_common::grpc::connect(service, url, settings, security)
        .await
        .map_err(|error| match error {
            ChannelError::Unreachable { source, .. } => CtlError::Unreachable {
                service,
                url: url.to_owned(),
                reason: error_chain(&source),
            },
            other => CtlError::InvalidUrl {
                service,
                url: url.to_owned(),
                reason: match &other {
                    ChannelError::InvalidUrl { source, .. } => error_chain(source),
                    _ => other.to_string(),
                },
            },
        })
}

/// Turns a refusal into words; a complaint about `partner_certificates[N]`
/// also names the file that certificate came from.
fn refused(status: &Status, certificate_origins: &[String]) -> CtlError {
    let mut message = status.message().to_owned();
    if let Some(rest) = message.strip_prefix("partner_certificates[")
        && let Some((index, _)) = rest.split_once(']')
        && let Ok(index) = index.parse::<usize>()
        && let Some(origin) = certificate_origins.get(index)
    {
        message = format!("{message} (certificate from {origin})");
    }
    let text = match status.code() {
        Code::InvalidArgument => format!("invalid partnership: {message}"),
        Code::NotFound => format!("not found: {message}"),
        Code::AlreadyExists => format!("already exists: {message}"),
        Code::Aborted => format!("conflict: {message}; show it again and retry"),
        Code::Unavailable => format!("routing service unavailable: {message}"),
        Code::DeadlineExceeded => format!("routing service did not answer in time: {message}"),
        code => format!("routing service error ({code:?}): {message}"),
    };
    CtlError::Refused(text)
}

fn present_one(
    partnership: &Partnership,
    json: bool,
    headline: Option<String>,
) -> Result<String, CtlError> {
    let view = PartnershipView::from(partnership);
    if json {
        return Ok(serde_json::to_string_pretty(&view)? + "\n");
    }
    let detail = render_detail(&view);
    Ok(match headline {
        Some(headline) => format!("{headline}\n{detail}"),
        None => detail,
    })
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<LoadedCertificate>, CtlError> {
    let mut loaded = Vec::new();
    for path in paths {
        loaded.extend(load_certificates(path)?);
    }
    Ok(loaded)
}

fn into_entries(loaded: Vec<LoadedCertificate>) -> (Vec<PartnerCertificate>, Vec<String>) {
    into_entries_for(loaded, CertificateUsage::Unspecified)
}

fn into_entries_for(
    loaded: Vec<LoadedCertificate>,
    usage: CertificateUsage,
) -> (Vec<PartnerCertificate>, Vec<String>) {
    loaded
        .into_iter()
        .map(|certificate| {
            (
                PartnerCertificate {
                    pem: certificate.pem,
                    usage: usage as i32,
                    ..PartnerCertificate::default()
                },
                certificate.origin,
            )
        })
        .unzip()
}

async fn add(
    client: &mut RoutingServiceClient<Channel>,
    args: AddArgs,
    json: bool,
) -> Result<String, CtlError> {
    let (mut certificates, mut origins) = into_entries(load_all(&args.partner_certificates)?);
    let (tls_clients, tls_origins) = into_entries_for(
        load_all(&args.partner_tls_client_certificates)?,
        CertificateUsage::TlsClient,
    );
    certificates.extend(tls_clients);
    origins.extend(tls_origins);
    let mut partnership = Partnership {
        id: args.id.unwrap_or_default(),
        as2_from: args.from,
        as2_to: args.to,
        kafka_topic: args.topic,
        partner_certificates: certificates,
        ..Partnership::default()
    };
    apply_settings(&mut partnership, &args.settings);
    apply_https_settings(&mut partnership, &args.settings)?;
    let created = client
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership),
        })
        .await
        .map_err(|status| refused(&status, &origins))?
        .into_inner()
        .partnership
        .unwrap_or_default();
    present_one(
        &created,
        json,
        Some(format!("created partnership {}", created.id)),
    )
}

async fn update(
    client: &mut RoutingServiceClient<Channel>,
    args: UpdateArgs,
    json: bool,
) -> Result<String, CtlError> {
    let mut partnership = get(client, &args.id).await?;
    if let Some(expected) = args.expected_revision
        && expected != partnership.revision
    {
        return Err(CtlError::Refused(format!(
            "conflict: partnership {:?} is at revision {}, not the expected {expected}",
            partnership.id, partnership.revision
        )));
    }
    let mut changed = apply_settings(&mut partnership, &args.settings);
    changed |= apply_https_settings(&mut partnership, &args.settings)?;
    for (value, target) in [
        (args.from, &mut partnership.as2_from),
        (args.to, &mut partnership.as2_to),
        (args.topic, &mut partnership.kafka_topic),
    ] {
        if let Some(value) = value {
            *target = value;
            changed = true;
        }
    }

    // Certificates already stored keep their place; new files follow.
    let mut origins: Vec<String> = partnership
        .partner_certificates
        .iter()
        .map(|certificate| format!("the stored certificate {}", certificate.sha256_fingerprint))
        .collect();
    if !args.partner_certificates.is_empty() {
        let (certificates, new_origins) = into_entries(load_all(&args.partner_certificates)?);
        partnership.partner_certificates = certificates;
        origins = new_origins;
        changed = true;
    }
    for fingerprint in &args.remove_partner_certificates {
        let wanted = normalize_fingerprint(fingerprint);
        let position = partnership
            .partner_certificates
            .iter()
            .position(|certificate| certificate.sha256_fingerprint == wanted)
            .ok_or_else(|| {
                CtlError::Usage(format!(
                    "partnership {:?} has no partner certificate with sha-256 fingerprint {wanted}",
                    partnership.id
                ))
            })?;
        partnership.partner_certificates.remove(position);
        origins.remove(position);
        changed = true;
    }
    if !args.add_partner_certificates.is_empty() {
        let (certificates, new_origins) = into_entries(load_all(&args.add_partner_certificates)?);
        partnership.partner_certificates.extend(certificates);
        origins.extend(new_origins);
        changed = true;
    }
    if !args.add_partner_tls_client_certificates.is_empty() {
        let (certificates, new_origins) = into_entries_for(
            load_all(&args.add_partner_tls_client_certificates)?,
            CertificateUsage::TlsClient,
        );
        partnership.partner_certificates.extend(certificates);
        origins.extend(new_origins);
        changed = true;
    }
    if !changed {
        return Err(CtlError::Usage(
            "nothing to change: give at least one option (see as2ctl partnership update --help)"
                .to_owned(),
        ));
    }

    let expected_revision = partnership.revision;
    let updated = client
        .update_partnership(UpdatePartnershipRequest {
            partnership: Some(partnership),
            expected_revision,
        })
        .await
        .map_err(|status| refused(&status, &origins))?
        .into_inner()
        .partnership
        .unwrap_or_default();
    present_one(
        &updated,
        json,
        Some(format!(
            "updated partnership {} (revision {})",
            updated.id, updated.revision
        )),
    )
}

async fn remove(
    client: &mut RoutingServiceClient<Channel>,
    args: RemoveArgs,
    json: bool,
) -> Result<String, CtlError> {
    let removed = client
        .delete_partnership(DeletePartnershipRequest {
            id: args.id,
            expected_revision: args.expected_revision.unwrap_or(0),
        })
        .await
        .map_err(|status| refused(&status, &[]))?
        .into_inner()
        .partnership
        .unwrap_or_default();
    if json {
        return Ok(serde_json::to_string_pretty(&PartnershipView::from(&removed))? + "\n");
    }
    Ok(format!(
        "removed partnership {} ({} -> {}, revision {})\n",
        removed.id, removed.as2_from, removed.as2_to, removed.revision
    ))
}

async fn list(client: &mut RoutingServiceClient<Channel>, json: bool) -> Result<String, CtlError> {
    let mut partnerships = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_partnerships(ListPartnershipsRequest {
                page_size: LIST_PAGE_SIZE,
                page_token,
            })
            .await
            .map_err(|status| refused(&status, &[]))?
            .into_inner();
        partnerships.extend(page.partnerships);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let views: Vec<PartnershipView> = partnerships.iter().map(PartnershipView::from).collect();
    if json {
        return Ok(serde_json::to_string_pretty(&views)? + "\n");
    }
    Ok(render_table(&views))
}

async fn show(
    client: &mut RoutingServiceClient<Channel>,
    args: ShowArgs,
    json: bool,
) -> Result<String, CtlError> {
    let partnership = match (args.id, args.from, args.to) {
        (Some(id), None, None) => get(client, &id).await?,
        (None, Some(as2_from), Some(as2_to)) => client
            .resolve_partnership(ResolvePartnershipRequest { as2_from, as2_to })
            .await
            .map_err(|status| refused(&status, &[]))?
            .into_inner()
            .partnership
            .unwrap_or_default(),
        _ => {
            return Err(CtlError::Usage(
                "give either a partnership id or --from and --to".to_owned(),
            ));
        }
    };
    present_one(&partnership, json, None)
}

async fn get(
    client: &mut RoutingServiceClient<Channel>,
    id: &str,
) -> Result<Partnership, CtlError> {
    Ok(client
        .get_partnership(GetPartnershipRequest { id: id.to_owned() })
        .await
        .map_err(|status| refused(&status, &[]))?
        .into_inner()
        .partnership
        .unwrap_or_default())
}

/// Copies the options that were given into `partnership`; returns whether
/// any was.
fn apply_settings(partnership: &mut Partnership, settings: &SettingsArgs) -> bool {
    let mut changed = false;
    let mut set = |target: &mut String, value: &Option<String>| {
        if let Some(value) = value {
            target.clone_from(value);
            changed = true;
        }
    };
    set(&mut partnership.display_name, &settings.name);
    set(
        &mut partnership.decryption_key_id,
        &settings.decryption_key_id,
    );
    set(
        &mut partnership.mdn_signing_key_id,
        &settings.mdn_signing_key_id,
    );

    let outbound = partnership
        .outbound
        .get_or_insert_with(OutboundSettings::default);
    set(&mut outbound.url, &settings.outbound_url);
    set(
        &mut outbound.signing_key_id,
        &settings.outbound_signing_key_id,
    );
    set(&mut outbound.async_mdn_url, &settings.async_mdn_url);
    set(&mut outbound.subject, &settings.outbound_subject);

    let mut flag = |target: &mut bool, value: Option<bool>| {
        if let Some(value) = value {
            *target = value;
            changed = true;
        }
    };
    flag(&mut outbound.sign, settings.outbound_sign);
    flag(&mut outbound.encrypt, settings.outbound_encrypt);
    flag(&mut outbound.chunked, settings.outbound_chunked);
    flag(
        &mut outbound.request_signed_mdn,
        settings.outbound_signed_mdn,
    );
    let policy = partnership
        .security_policy
        .get_or_insert_with(SecurityPolicy::default);
    flag(&mut policy.require_signature, settings.require_signature);
    flag(&mut policy.require_encryption, settings.require_encryption);
    flag(
        &mut policy.require_tls_client_certificate,
        settings.require_tls_client_cert,
    );
    flag(&mut policy.allow_md5, settings.allow_md5);
    flag(
        &mut policy.refuse_rsa_pkcs1v15_key_transport,
        settings.refuse_rsa_pkcs1v15_key_transport,
    );
    let mdn = partnership
        .mdn_preferences
        .get_or_insert_with(MdnPreferences::default);
    if let Some(offer) = settings.signed_mdn {
        mdn.offer_signed_mdn = Some(offer);
    }
    let interop = partnership
        .interop
        .get_or_insert_with(InteropSwitches::default);
    flag(
        &mut interop.skip_certificate_validity_check,
        settings.skip_certificate_validity_check,
    );

    let mut number = |target: &mut i32, value: Option<i32>| {
        if let Some(value) = value {
            *target = value;
            changed = true;
        }
    };
    number(
        &mut mdn.default_micalg,
        settings
            .default_micalg
            .map(|digest| SigningDigest::from(digest) as i32),
    );
    number(
        &mut outbound.signing_digest,
        settings
            .outbound_signing_digest
            .map(|digest| SigningDigest::from(digest) as i32),
    );
    number(
        &mut outbound.encryption_cipher,
        settings
            .outbound_cipher
            .map(|cipher| EncryptionCipher::from(cipher) as i32),
    );
    number(
        &mut outbound.compression,
        settings
            .outbound_compression
            .map(|compression| as2_rpc::routing::v1::Compression::from(compression) as i32),
    );
    number(
        &mut outbound.mdn_mode,
        settings
            .outbound_mdn
            .map(|mode| as2_rpc::routing::v1::MdnMode::from(mode) as i32),
    );

    if let Some(limit) = settings.max_message_bytes {
        policy.max_message_bytes = (limit > 0).then_some(limit);
        changed = true;
    }
    if let Some(per_minute) = settings.max_messages_per_minute {
        policy.max_messages_per_minute = (per_minute > 0).then_some(per_minute);
        changed = true;
    }
    if settings.archive.is_some() || settings.archive_retention_days.is_some() {
        let archive = partnership
            .archive
            .get_or_insert_with(as2_rpc::routing::v1::ArchiveSettings::default);
        if let Some(enabled) = settings.archive {
            archive.enabled = Some(enabled);
        }
        if let Some(days) = settings.archive_retention_days {
            archive.retention_days = days;
        }
        changed = true;
    }
    if settings.async_mdn_url_patterns.is_some()
        || settings.async_mdn_allow_private_targets.is_some()
        || settings.async_mdn_max_queued.is_some()
    {
        let async_mdn = partnership
            .async_mdn
            .get_or_insert_with(as2_rpc::routing::v1::AsyncMdnPolicy::default);
        if let Some(patterns) = &settings.async_mdn_url_patterns {
            async_mdn.allowed_url_patterns = patterns
                .iter()
                .map(|pattern| pattern.trim().to_owned())
                .filter(|pattern| !pattern.is_empty())
                .collect();
        }
        if let Some(allow) = settings.async_mdn_allow_private_targets {
            async_mdn.allow_private_targets = allow;
        }
        if let Some(limit) = settings.async_mdn_max_queued {
            async_mdn.max_queued = (limit > 0).then_some(limit);
        }
        changed = true;
    }
    if let Some(digests) = &settings.signing_digests {
        policy.allowed_signing_digests = digests
            .iter()
            .map(|&digest| SigningDigest::from(digest) as i32)
            .collect();
        changed = true;
    }
    if let Some(ciphers) = &settings.encryption_ciphers {
        policy.allowed_encryption_ciphers = ciphers
            .iter()
            .map(|&cipher| EncryptionCipher::from(cipher) as i32)
            .collect();
        changed = true;
    }
    if let Some(seconds) = settings.outbound_timeout_secs {
        outbound.timeout_seconds = seconds;
        changed = true;
    }
    if let Some(retries) = settings.outbound_max_retries {
        outbound.max_retries = retries;
        changed = true;
    }
    changed
}
