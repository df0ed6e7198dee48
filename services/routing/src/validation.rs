//! Validation of partnerships before they are stored.
//!
//! Every error names the field it is about ("as2_from: ...",
//! "partner_certificates[1]: ..."), so that operators see at once what to fix.

use std::collections::HashSet;
use std::fmt;
use std::time::SystemTime;

use as2_partner::https::HttpsSettings;
use as2_rpc::routing::v1::{
    CertificateUsage, Compression, EncryptionCipher, MdnMode, Partnership, SigningDigest,
};

use crate::certificate::inspect_certificate;

/// Longest AS2 ID (RFC 4130 section 6.2).
pub const MAX_AS2_ID_LEN: usize = 128;
/// Longest Kafka topic name.
pub const MAX_KAFKA_TOPIC_LEN: usize = 249;
/// Longest partnership id.
pub const MAX_PARTNERSHIP_ID_LEN: usize = 64;
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 128;
/// Longest display name.
pub const MAX_DISPLAY_NAME_LEN: usize = 256;
/// Longest outbound send timeout, in seconds.
pub const MAX_OUTBOUND_TIMEOUT_SECONDS: u32 = 3_600;
/// Most outbound retries.
pub const MAX_OUTBOUND_RETRIES: u32 = 100;
/// Most certificates one partnership holds.
pub const MAX_PARTNER_CERTIFICATES: usize = 16;

/// A field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Path of the field, e.g. `partner_certificates[0]`.
    pub field: String,
    /// What is wrong, in words an operator understands.
    pub reason: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

/// Checks an AS2 ID: 1 to 128 printable ASCII characters (0x20 to 0x7E).
///
/// Spaces are allowed (the header quotes them); comparison elsewhere is exact
/// and case-sensitive.
pub fn check_as2_id(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("AS2 ID must not be empty".to_owned());
    }
    if let Some((position, character)) = value
        .chars()
        .enumerate()
        .find(|(_, character)| !matches!(character, ' '..='~'))
    {
        return Err(format!(
            "AS2 ID must be printable ASCII (0x20-0x7E); character {} at position {position} is not",
            character.escape_unicode()
        ));
    }
    if value.len() > MAX_AS2_ID_LEN {
        return Err(format!(
            "AS2 ID must be at most {MAX_AS2_ID_LEN} characters, found {}",
            value.len()
        ));
    }
    Ok(())
}

/// Checks a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, and
/// neither "." nor "..".
pub fn check_kafka_topic(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("Kafka topic must not be empty".to_owned());
    }
    if value == "." || value == ".." {
        return Err(format!("Kafka topic cannot be {value:?}"));
    }
    if value.len() > MAX_KAFKA_TOPIC_LEN {
        return Err(format!(
            "Kafka topic must be at most {MAX_KAFKA_TOPIC_LEN} characters, found {}",
            value.len()
        ));
    }
    if let Some(character) = value.chars().find(|character| {
        !(character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-'))
    }) {
        return Err(format!(
            "Kafka topic may only contain ASCII letters, digits, '.', '_' and '-'; found {character:?}"
        ));
    }
    Ok(())
}

/// Checks a partnership id: 1 to 64 characters of `[a-z0-9._-]`, starting with
/// a letter or digit.
pub fn check_partnership_id(value: &str) -> Result<(), String> {
    check_identifier(
        value,
        MAX_PARTNERSHIP_ID_LEN,
        "partnership id",
        |character| character.is_ascii_lowercase() || character.is_ascii_digit(),
    )
}

/// Checks a key id: 1 to 128 characters of `[A-Za-z0-9._-]`, starting with a
/// letter or digit. Key ids name key files, so no path separators and no
/// leading dot are possible.
pub fn check_key_id(value: &str) -> Result<(), String> {
    check_identifier(value, MAX_KEY_ID_LEN, "key id", |character| {
        character.is_ascii_alphanumeric()
    })
}

fn check_identifier(
    value: &str,
    max_len: usize,
    what: &str,
    is_alphanumeric: impl Fn(char) -> bool,
) -> Result<(), String> {
    let Some(first) = value.chars().next() else {
        return Err(format!("{what} must not be empty"));
    };
    if value.len() > max_len {
        return Err(format!(
            "{what} must be at most {max_len} characters, found {}",
            value.len()
        ));
    }
    if !is_alphanumeric(first) {
        return Err(format!("{what} must start with a letter or digit"));
    }
    if let Some(character) = value
        .chars()
        .find(|&character| !(is_alphanumeric(character) || matches!(character, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} contains {character:?}, which is not allowed"
        ));
    }
    Ok(())
}

/// Checks an outbound URL: absolute http:// or https:// with a host.
pub fn check_http_url(value: &str) -> Result<(), String> {
    let uri: http::Uri = value
        .parse()
        .map_err(|error| format!("not a valid URL: {error}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("URL must start with http:// or https://".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("URL must name a host".to_owned());
    }
    Ok(())
}

/// Validates a partnership received from a client and returns it normalised:
/// certificates re-encoded with their details filled in, output-only fields
/// cleared. `now` decides which certificates have expired.
pub fn prepare_partnership(
    mut partnership: Partnership,
    now: SystemTime,
) -> Result<Partnership, FieldError> {
    partnership.revision = 0;
    partnership.created_at = None;
    partnership.updated_at = None;

    if !partnership.id.is_empty() {
        check_partnership_id(&partnership.id).map_err(|reason| FieldError::new("id", reason))?;
    }
    if partnership.display_name.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(FieldError::new(
            "display_name",
            format!("must be at most {MAX_DISPLAY_NAME_LEN} characters"),
        ));
    }
    if partnership.display_name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "display_name",
            "must not contain control characters",
        ));
    }
    check_as2_id(&partnership.as2_from).map_err(|reason| FieldError::new("as2_from", reason))?;
    check_as2_id(&partnership.as2_to).map_err(|reason| FieldError::new("as2_to", reason))?;
    check_kafka_topic(&partnership.kafka_topic)
        .map_err(|reason| FieldError::new("kafka_topic", reason))?;
    for (field, key_id) in [
        ("decryption_key_id", &partnership.decryption_key_id),
        ("mdn_signing_key_id", &partnership.mdn_signing_key_id),
    ] {
        if !key_id.is_empty() {
            check_key_id(key_id).map_err(|reason| FieldError::new(field, reason))?;
        }
    }

    prepare_certificates(&mut partnership, now)?;
    check_algorithms(&partnership)?;
    check_outbound(&partnership)?;
    check_outbound_https(&mut partnership)?;
    check_async_mdn(&mut partnership)?;
    check_certificate_coverage(&partnership)?;
    Ok(partnership)
}

/// Checks the asynchronous MDN policy ([`as2_partner::target::AsyncMdnTargets`] has
/// the pattern syntax) and stores the patterns trimmed.
fn check_async_mdn(partnership: &mut Partnership) -> Result<(), FieldError> {
    let Some(policy) = partnership.async_mdn.as_mut() else {
        return Ok(());
    };
    for pattern in &mut policy.allowed_url_patterns {
        *pattern = pattern.trim().to_owned();
    }
    let targets = as2_partner::target::AsyncMdnTargets::from_proto(Some(policy))
        .map_err(|error| FieldError::new(format!("async_mdn.{}", error.field), error.reason))?;
    policy.https = targets.https.to_proto();
    Ok(())
}

/// Checks the HTTPS settings of outbound connections ([`HttpsSettings`] has the rules)
/// and stores them normalised.
fn check_outbound_https(partnership: &mut Partnership) -> Result<(), FieldError> {
    let Some(outbound) = partnership.outbound.as_mut() else {
        return Ok(());
    };
    let https = HttpsSettings::from_proto(outbound.https.as_ref()).map_err(|error| {
        FieldError::new(format!("outbound.https.{}", error.field), error.reason)
    })?;
    outbound.https = https.to_proto();
    Ok(())
}

fn prepare_certificates(partnership: &mut Partnership, now: SystemTime) -> Result<(), FieldError> {
    if partnership.partner_certificates.len() > MAX_PARTNER_CERTIFICATES {
        return Err(FieldError::new(
            "partner_certificates",
            format!("at most {MAX_PARTNER_CERTIFICATES} certificates are allowed"),
        ));
    }
    let mut fingerprints = HashSet::new();
    for (index, certificate) in partnership.partner_certificates.iter_mut().enumerate() {
        let field = format!("partner_certificates[{index}]");
        let usage = CertificateUsage::try_from(certificate.usage)
            .map_err(|_| FieldError::new(&field, format!("unknown usage {}", certificate.usage)))?;
        let mut described = inspect_certificate(&certificate.pem, now)
            .map_err(|error| FieldError::new(&field, error))?;
        if !fingerprints.insert(described.sha256_fingerprint.clone()) {
            return Err(FieldError::new(
                &field,
                format!(
                    "duplicate certificate (sha-256 {})",
                    described.sha256_fingerprint
                ),
            ));
        }
        described.usage = usage as i32;
        *certificate = described;
    }
    Ok(())
}

fn check_algorithms(partnership: &Partnership) -> Result<(), FieldError> {
    let policy = partnership.security_policy.clone().unwrap_or_default();
    let md5_refused = |field: &str| {
        FieldError::new(
            field,
            "MD5 is only allowed when security_policy.allow_md5 is set",
        )
    };
    for (index, &digest) in policy.allowed_signing_digests.iter().enumerate() {
        let field = format!("security_policy.allowed_signing_digests[{index}]");
        match SigningDigest::try_from(digest) {
            Ok(SigningDigest::Unspecified) | Err(_) => {
                return Err(FieldError::new(
                    field,
                    format!("unknown signing digest {digest}"),
                ));
            }
            Ok(SigningDigest::Md5) if !policy.allow_md5 => return Err(md5_refused(&field)),
            Ok(_) => {}
        }
    }
    for (index, &cipher) in policy.allowed_encryption_ciphers.iter().enumerate() {
        if matches!(
            EncryptionCipher::try_from(cipher),
            Ok(EncryptionCipher::Unspecified) | Err(_)
        ) {
            return Err(FieldError::new(
                format!("security_policy.allowed_encryption_ciphers[{index}]"),
                format!("unknown encryption cipher {cipher}"),
            ));
        }
    }

    let mdn = partnership.mdn_preferences.unwrap_or_default();
    let outbound = partnership.outbound.clone().unwrap_or_default();
    for (field, digest) in [
        ("mdn_preferences.default_micalg", mdn.default_micalg),
        ("outbound.signing_digest", outbound.signing_digest),
    ] {
        match SigningDigest::try_from(digest) {
            Err(_) => {
                return Err(FieldError::new(
                    field,
                    format!("unknown signing digest {digest}"),
                ));
            }
            Ok(SigningDigest::Md5) if !policy.allow_md5 => return Err(md5_refused(field)),
            Ok(_) => {}
        }
    }
    if EncryptionCipher::try_from(outbound.encryption_cipher).is_err() {
        return Err(FieldError::new(
            "outbound.encryption_cipher",
            format!("unknown encryption cipher {}", outbound.encryption_cipher),
        ));
    }
    if Compression::try_from(outbound.compression).is_err() {
        return Err(FieldError::new(
            "outbound.compression",
            format!("unknown compression {}", outbound.compression),
        ));
    }
    Ok(())
}

fn check_outbound(partnership: &Partnership) -> Result<(), FieldError> {
    let Some(outbound) = &partnership.outbound else {
        return Ok(());
    };
    if !outbound.url.is_empty() {
        check_http_url(&outbound.url).map_err(|reason| FieldError::new("outbound.url", reason))?;
    }
    if !outbound.signing_key_id.is_empty() {
        check_key_id(&outbound.signing_key_id)
            .map_err(|reason| FieldError::new("outbound.signing_key_id", reason))?;
    }
    let mdn_mode = MdnMode::try_from(outbound.mdn_mode).map_err(|_| {
        FieldError::new(
            "outbound.mdn_mode",
            format!("unknown MDN mode {}", outbound.mdn_mode),
        )
    })?;
    if !outbound.async_mdn_url.is_empty() {
        check_http_url(&outbound.async_mdn_url)
            .map_err(|reason| FieldError::new("outbound.async_mdn_url", reason))?;
    } else if mdn_mode == MdnMode::Async {
        return Err(FieldError::new(
            "outbound.async_mdn_url",
            "required when outbound.mdn_mode is ASYNC",
        ));
    }
    if outbound.request_signed_mdn && mdn_mode == MdnMode::Unspecified {
        return Err(FieldError::new(
            "outbound.request_signed_mdn",
            "needs outbound.mdn_mode SYNC or ASYNC",
        ));
    }
    if outbound.timeout_seconds > MAX_OUTBOUND_TIMEOUT_SECONDS {
        return Err(FieldError::new(
            "outbound.timeout_seconds",
            format!("must be at most {MAX_OUTBOUND_TIMEOUT_SECONDS}"),
        ));
    }
    if outbound.max_retries > MAX_OUTBOUND_RETRIES {
        return Err(FieldError::new(
            "outbound.max_retries",
            format!("must be at most {MAX_OUTBOUND_RETRIES}"),
        ));
    }
    if outbound.subject.chars().any(char::is_control) {
        return Err(FieldError::new(
            "outbound.subject",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Settings that need a partner certificate of some usage must have one.
fn check_certificate_coverage(partnership: &Partnership) -> Result<(), FieldError> {
    let serves = |wanted: CertificateUsage| {
        partnership.partner_certificates.iter().any(|certificate| {
            (certificate.usage == CertificateUsage::Unspecified as i32
                && wanted != CertificateUsage::TlsClient)
                || certificate.usage == wanted as i32
        })
    };
    let require_tls_client = partnership
        .security_policy
        .as_ref()
        .is_some_and(|policy| policy.require_tls_client_certificate);
    if require_tls_client && !serves(CertificateUsage::TlsClient) {
        return Err(FieldError::new(
            "security_policy.require_tls_client_certificate",
            "needs a partner certificate with usage TLS client to match the client's against",
        ));
    }
    let require_signature = partnership
        .security_policy
        .as_ref()
        .is_some_and(|policy| policy.require_signature);
    if require_signature && !serves(CertificateUsage::Signing) {
        return Err(FieldError::new(
            "security_policy.require_signature",
            "needs a partner certificate usable for signing to verify against",
        ));
    }
    let encrypt_outbound = partnership
        .outbound
        .as_ref()
        .is_some_and(|outbound| outbound.encrypt);
    if encrypt_outbound && !serves(CertificateUsage::Encryption) {
        return Err(FieldError::new(
            "outbound.encrypt",
            "needs a partner certificate usable for encryption",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use as2_rpc::routing::v1::{OutboundSettings, PartnerCertificate, SecurityPolicy};

    use super::*;
    use as2_testkit::certificates::{TestCertificate, certificate_pem};

    fn minimal() -> Partnership {
        Partnership {
            as2_from: "PARTNER A".to_owned(),
            as2_to: "us".to_owned(),
            kafka_topic: "inbound.partner-a".to_owned(),
            ..Partnership::default()
        }
    }

    fn field_of(result: Result<Partnership, FieldError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn as2_ids() {
        assert!(check_as2_id("a").is_ok());
        assert!(check_as2_id("with space and \"quote\"").is_ok());
        assert!(check_as2_id(&"x".repeat(128)).is_ok());
        assert!(check_as2_id("").is_err());
        assert!(check_as2_id(&"x".repeat(129)).is_err());
        assert!(
            check_as2_id("tab\there")
                .unwrap_err()
                .contains("position 3")
        );
        assert!(check_as2_id("caf\u{e9}").is_err());
        assert!(check_as2_id("del\u{7f}").is_err());
    }

    #[test]
    fn kafka_topics() {
        assert!(check_kafka_topic("orders.in_v1-x").is_ok());
        assert!(check_kafka_topic(&"t".repeat(249)).is_ok());
        assert!(check_kafka_topic(&"t".repeat(250)).is_err());
        assert!(check_kafka_topic("").is_err());
        assert!(check_kafka_topic(".").is_err());
        assert!(check_kafka_topic("..").is_err());
        assert!(check_kafka_topic("...").is_ok());
        assert!(check_kafka_topic("has space").is_err());
        assert!(check_kafka_topic("slash/no").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(check_partnership_id("acme-inbound.1").is_ok());
        assert!(check_partnership_id("Acme").is_err());
        assert!(check_partnership_id("-acme").is_err());
        assert!(check_key_id("Signing-2025.pem").is_ok());
        assert!(check_key_id("../etc/passwd").is_err());
        assert!(check_key_id(".hidden").is_err());
        assert!(check_key_id("a/b").is_err());
    }

    #[test]
    fn urls() {
        assert!(check_http_url("https://partner.example:4080/as2").is_ok());
        assert!(check_http_url("ftp://partner.example/").is_err());
        assert!(check_http_url("partner.example/as2").is_err());
    }

    #[test]
    fn a_minimal_partnership_is_valid() {
        let prepared = prepare_partnership(minimal(), SystemTime::now()).unwrap();
        assert_eq!(prepared.as2_from, "PARTNER A");
    }

    #[test]
    fn https_settings_are_checked_and_stored_normalised() {
        use as2_rpc::routing::v1::{AsyncMdnPolicy, PartnerHttps};
        let now = SystemTime::now();
        let pin = "AB:".repeat(31) + "AB";
        let https = PartnerHttps {
            client_certificate_key_id: "our-tls".to_owned(),
            pinned_server_certificate_sha256: vec![pin],
            egress_proxy_url: "HTTP://Proxy.Internal:3128/".to_owned(),
            ..PartnerHttps::default()
        };
        let partnership = Partnership {
            outbound: Some(OutboundSettings {
                url: "https://partner.example/as2".to_owned(),
                https: Some(https.clone()),
                ..OutboundSettings::default()
            }),
            async_mdn: Some(AsyncMdnPolicy {
                https: Some(https),
                ..AsyncMdnPolicy::default()
            }),
            ..minimal()
        };
        let prepared = prepare_partnership(partnership, now).unwrap();
        for stored in [
            prepared.outbound.unwrap().https.unwrap(),
            prepared.async_mdn.unwrap().https.unwrap(),
        ] {
            assert_eq!(stored.pinned_server_certificate_sha256, ["ab".repeat(32)]);
            assert_eq!(stored.egress_proxy_url, "http://proxy.internal:3128");
        }

        let with_outbound = |https: PartnerHttps| Partnership {
            outbound: Some(OutboundSettings {
                https: Some(https),
                ..OutboundSettings::default()
            }),
            ..minimal()
        };
        let error = prepare_partnership(
            with_outbound(PartnerHttps {
                egress_proxy_url: "http://user:secret@proxy:3128".to_owned(),
                ..PartnerHttps::default()
            }),
            now,
        )
        .unwrap_err();
        assert_eq!(error.field, "outbound.https.egress_proxy_url");
        assert!(error.reason.contains("user info"), "{error}");
        let error = prepare_partnership(
            with_outbound(PartnerHttps {
                trusted_ca_pem: "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"
                    .to_owned(),
                ..PartnerHttps::default()
            }),
            now,
        )
        .unwrap_err();
        assert_eq!(error.field, "outbound.https.trusted_ca_pem");
        let mdn_error = prepare_partnership(
            Partnership {
                async_mdn: Some(AsyncMdnPolicy {
                    https: Some(PartnerHttps {
                        client_certificate_key_id: "../key".to_owned(),
                        ..PartnerHttps::default()
                    }),
                    ..AsyncMdnPolicy::default()
                }),
                ..minimal()
            },
            now,
        )
        .unwrap_err();
        assert_eq!(mdn_error.field, "async_mdn.https.client_certificate_key_id");
        // Empty settings are not stored.
        let empty = prepare_partnership(with_outbound(PartnerHttps::default()), now).unwrap();
        assert_eq!(empty.outbound.unwrap().https, None);
    }

    #[test]
    fn async_mdn_policies_are_checked() {
        use as2_rpc::routing::v1::AsyncMdnPolicy;
        let now = SystemTime::now();
        let with = |policy: AsyncMdnPolicy| Partnership {
            async_mdn: Some(policy),
            ..minimal()
        };
        let prepared = prepare_partnership(
            with(AsyncMdnPolicy {
                allowed_url_patterns: vec![" https://*.partner.example/mdn ".to_owned()],
                allow_private_targets: false,
                max_queued: Some(50),
                https: None,
            }),
            now,
        )
        .unwrap();
        assert_eq!(
            prepared.async_mdn.unwrap().allowed_url_patterns,
            ["https://*.partner.example/mdn"]
        );
        let bad_pattern = with(AsyncMdnPolicy {
            allowed_url_patterns: vec!["https://ok.example/".to_owned(), "ftp://x/".to_owned()],
            ..AsyncMdnPolicy::default()
        });
        assert_eq!(
            field_of(prepare_partnership(bad_pattern, now)),
            "async_mdn.allowed_url_patterns[1]"
        );
        let bad_quota = with(AsyncMdnPolicy {
            max_queued: Some(0),
            ..AsyncMdnPolicy::default()
        });
        assert_eq!(
            field_of(prepare_partnership(bad_quota, now)),
            "async_mdn.max_queued"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let now = SystemTime::now();
        let bad_from = Partnership {
            as2_from: String::new(),
            ..minimal()
        };
        assert_eq!(field_of(prepare_partnership(bad_from, now)), "as2_from");
        let bad_topic = Partnership {
            kafka_topic: "a b".to_owned(),
            ..minimal()
        };
        assert_eq!(field_of(prepare_partnership(bad_topic, now)), "kafka_topic");
        let bad_key = Partnership {
            mdn_signing_key_id: "../key".to_owned(),
            ..minimal()
        };
        assert_eq!(
            field_of(prepare_partnership(bad_key, now)),
            "mdn_signing_key_id"
        );
    }

    #[test]
    fn certificates_are_normalised_and_checked() {
        let now = SystemTime::now();
        let valid = certificate_pem(&TestCertificate::valid("partner"));
        let expired = certificate_pem(&TestCertificate::expired("partner old"));
        let with_certificates = |pems: &[&str]| Partnership {
            partner_certificates: pems
                .iter()
                .map(|pem| PartnerCertificate {
                    pem: (*pem).to_owned(),
                    ..PartnerCertificate::default()
                })
                .collect(),
            ..minimal()
        };
        let prepared = prepare_partnership(with_certificates(&[&valid]), now).unwrap();
        assert_eq!(
            prepared.partner_certificates[0].subject,
            "CN=partner, O=Test Partner"
        );

        let error = prepare_partnership(with_certificates(&[&valid, &expired]), now).unwrap_err();
        assert_eq!(error.field, "partner_certificates[1]");
        assert!(error.reason.contains("expired"), "{error}");

        let error = prepare_partnership(with_certificates(&[&valid, &valid]), now).unwrap_err();
        assert!(error.reason.contains("duplicate"), "{error}");
    }

    #[test]
    fn md5_needs_the_allow_flag() {
        let now = SystemTime::now();
        let mut policy = SecurityPolicy {
            allowed_signing_digests: vec![SigningDigest::Md5 as i32],
            ..SecurityPolicy::default()
        };
        let partnership = Partnership {
            security_policy: Some(policy.clone()),
            ..minimal()
        };
        let error = prepare_partnership(partnership, now).unwrap_err();
        assert_eq!(error.field, "security_policy.allowed_signing_digests[0]");
        policy.allow_md5 = true;
        let partnership = Partnership {
            security_policy: Some(policy),
            ..minimal()
        };
        assert!(prepare_partnership(partnership, now).is_ok());
    }

    #[test]
    fn outbound_rules() {
        let now = SystemTime::now();
        let with_outbound = |outbound: OutboundSettings| Partnership {
            outbound: Some(outbound),
            ..minimal()
        };
        let async_without_url = OutboundSettings {
            url: "https://partner.example/as2".to_owned(),
            mdn_mode: MdnMode::Async as i32,
            ..OutboundSettings::default()
        };
        assert_eq!(
            field_of(prepare_partnership(with_outbound(async_without_url), now)),
            "outbound.async_mdn_url"
        );
        let encrypt_without_certificate = OutboundSettings {
            encrypt: true,
            ..OutboundSettings::default()
        };
        assert_eq!(
            field_of(prepare_partnership(
                with_outbound(encrypt_without_certificate),
                now
            )),
            "outbound.encrypt"
        );
        let unknown_enum = OutboundSettings {
            compression: 42,
            ..OutboundSettings::default()
        };
        assert_eq!(
            field_of(prepare_partnership(with_outbound(unknown_enum), now)),
            "outbound.compression"
        );
    }
}
