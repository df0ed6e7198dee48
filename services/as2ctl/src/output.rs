//! How partnerships are shown: a JSON view with stable names, a detail view
//! and a table.

use std::fmt::Write as _;

use as2_rpc::prost_types::Timestamp;
use as2_rpc::routing::v1::{
    CertificateUsage, Compression, EncryptionCipher, MdnMode, PartnerCertificate, PartnerHttps,
    Partnership, SigningDigest,
};
use serde::Serialize;

/// A partnership as as2ctl prints it in JSON. Enum values are the same
/// lowercase names the command-line options take; times are RFC 3339.
#[derive(Debug, Serialize)]
pub struct PartnershipView {
    id: String,
    revision: u64,
    display_name: String,
    as2_from: String,
    as2_to: String,
    kafka_topic: String,
    partner_certificates: Vec<CertificateView>,
    decryption_key_id: String,
    mdn_signing_key_id: String,
    security_policy: SecurityPolicyView,
    mdn_preferences: MdnPreferencesView,
    interop: InteropView,
    async_mdn: AsyncMdnView,
    outbound: OutboundView,
    created_at: Option<String>,
    updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct CertificateView {
    sha256_fingerprint: String,
    subject: String,
    issuer: String,
    serial_number: String,
    usage: &'static str,
    not_before: Option<String>,
    not_after: Option<String>,
    pem: String,
}

#[derive(Debug, Serialize)]
struct SecurityPolicyView {
    require_signature: bool,
    require_encryption: bool,
    max_message_bytes: Option<u64>,
    archive: bool,
    archive_retention_days: u32,
    allowed_signing_digests: Vec<&'static str>,
    allowed_encryption_ciphers: Vec<&'static str>,
    allow_md5: bool,
    refuse_rsa_pkcs1v15_key_transport: bool,
}

#[derive(Debug, Serialize)]
struct MdnPreferencesView {
    offer_signed_mdn: bool,
    default_micalg: &'static str,
}

#[derive(Debug, Serialize)]
struct AsyncMdnView {
    allowed_url_patterns: Vec<String>,
    allow_private_targets: bool,
    max_queued: u32,
    https: HttpsView,
}

/// A `PartnerHttps`: `egress_proxy` is `default` (the service's), `direct` or the URL.
#[derive(Debug, Serialize)]
struct HttpsView {
    client_certificate_key_id: String,
    trusted_ca_pem: String,
    pinned_server_certificate_sha256: Vec<String>,
    egress_proxy: String,
}

impl From<Option<PartnerHttps>> for HttpsView {
    fn from(https: Option<PartnerHttps>) -> Self {
        let https = https.unwrap_or_default();
        Self {
            client_certificate_key_id: https.client_certificate_key_id,
            trusted_ca_pem: https.trusted_ca_pem,
            pinned_server_certificate_sha256: https.pinned_server_certificate_sha256,
            egress_proxy: match (https.egress_proxy_url.is_empty(), https.bypass_egress_proxy) {
                (true, false) => "default".to_owned(),
                (true, true) => "direct".to_owned(),
                (false, _) => https.egress_proxy_url,
            },
        }
    }
}

impl HttpsView {
    /// One line: client certificate, trust, proxy.
    fn summary(&self) -> String {
        let client = if self.client_certificate_key_id.is_empty() {
            "no client certificate".to_owned()
        } else {
            format!("client certificate {}", self.client_certificate_key_id)
        };
        let trust = if !self.pinned_server_certificate_sha256.is_empty() {
            format!(
                "pinned {}",
                self.pinned_server_certificate_sha256.join(", ")
            )
        } else if !self.trusted_ca_pem.is_empty() {
            let count = self.trusted_ca_pem.matches("BEGIN CERTIFICATE").count();
            format!("the partnership's {count} CA certificate(s)")
        } else {
            "the system's CA certificates".to_owned()
        };
        format!(
            "{client}; trusts {trust}; egress proxy {}",
            self.egress_proxy
        )
    }
}

#[derive(Debug, Serialize)]
struct InteropView {
    skip_certificate_validity_check: bool,
}

#[derive(Debug, Serialize)]
struct OutboundView {
    url: String,
    sign: bool,
    signing_digest: &'static str,
    signing_key_id: String,
    encrypt: bool,
    encryption_cipher: &'static str,
    compression: &'static str,
    mdn_mode: &'static str,
    request_signed_mdn: bool,
    async_mdn_url: String,
    timeout_seconds: u32,
    max_retries: u32,
    subject: String,
    chunked: bool,
    https: HttpsView,
}

impl From<&Partnership> for PartnershipView {
    fn from(partnership: &Partnership) -> Self {
        let policy = partnership.security_policy.clone().unwrap_or_default();
        let mdn = partnership.mdn_preferences.unwrap_or_default();
        let interop = partnership.interop.unwrap_or_default();
        let outbound = partnership.outbound.clone().unwrap_or_default();
        let async_mdn = partnership.async_mdn.clone().unwrap_or_default();
        Self {
            id: partnership.id.clone(),
            revision: partnership.revision,
            display_name: partnership.display_name.clone(),
            as2_from: partnership.as2_from.clone(),
            as2_to: partnership.as2_to.clone(),
            kafka_topic: partnership.kafka_topic.clone(),
            partner_certificates: partnership
                .partner_certificates
                .iter()
                .map(CertificateView::from)
                .collect(),
            decryption_key_id: partnership.decryption_key_id.clone(),
            mdn_signing_key_id: partnership.mdn_signing_key_id.clone(),
            security_policy: SecurityPolicyView {
                require_signature: policy.require_signature,
                require_encryption: policy.require_encryption,
                max_message_bytes: policy.max_message_bytes,
                archive: partnership
                    .archive
                    .as_ref()
                    .and_then(|archive| archive.enabled)
                    .unwrap_or(true),
                archive_retention_days: partnership
                    .archive
                    .as_ref()
                    .map_or(0, |archive| archive.retention_days),
                allowed_signing_digests: policy
                    .allowed_signing_digests
                    .iter()
                    .map(|&digest| digest_name(digest))
                    .collect(),
                allowed_encryption_ciphers: policy
                    .allowed_encryption_ciphers
                    .iter()
                    .map(|&cipher| cipher_name(cipher))
                    .collect(),
                allow_md5: policy.allow_md5,
                refuse_rsa_pkcs1v15_key_transport: policy.refuse_rsa_pkcs1v15_key_transport,
            },
            mdn_preferences: MdnPreferencesView {
                offer_signed_mdn: mdn.offer_signed_mdn.unwrap_or(true),
                default_micalg: digest_name(mdn.default_micalg),
            },
            interop: InteropView {
                skip_certificate_validity_check: interop.skip_certificate_validity_check,
            },
            async_mdn: AsyncMdnView {
                allowed_url_patterns: async_mdn.allowed_url_patterns,
                allow_private_targets: async_mdn.allow_private_targets,
                max_queued: async_mdn
                    .max_queued
                    .unwrap_or(as2_partner::target::DEFAULT_MAX_QUEUED),
                https: HttpsView::from(async_mdn.https),
            },
            outbound: OutboundView {
                url: outbound.url,
                sign: outbound.sign,
                signing_digest: digest_name(outbound.signing_digest),
                signing_key_id: outbound.signing_key_id,
                encrypt: outbound.encrypt,
                encryption_cipher: cipher_name(outbound.encryption_cipher),
                compression: match Compression::try_from(outbound.compression) {
                    Ok(Compression::Unspecified) => "none",
                    Ok(Compression::BeforeSigning) => "before-signing",
                    Ok(Compression::AfterSigning) => "after-signing",
                    Err(_) => "unknown",
                },
                mdn_mode: match MdnMode::try_from(outbound.mdn_mode) {
                    Ok(MdnMode::Unspecified) => "none",
                    Ok(MdnMode::Sync) => "sync",
                    Ok(MdnMode::Async) => "async",
                    Err(_) => "unknown",
                },
                request_signed_mdn: outbound.request_signed_mdn,
                async_mdn_url: outbound.async_mdn_url,
                timeout_seconds: outbound.timeout_seconds,
                max_retries: outbound.max_retries,
                subject: outbound.subject,
                chunked: outbound.chunked,
                https: HttpsView::from(outbound.https),
            },
            created_at: partnership.created_at.as_ref().map(rfc3339),
            updated_at: partnership.updated_at.as_ref().map(rfc3339),
        }
    }
}

impl From<&PartnerCertificate> for CertificateView {
    fn from(certificate: &PartnerCertificate) -> Self {
        Self {
            sha256_fingerprint: certificate.sha256_fingerprint.clone(),
            subject: certificate.subject.clone(),
            issuer: certificate.issuer.clone(),
            serial_number: certificate.serial_number.clone(),
            usage: match CertificateUsage::try_from(certificate.usage) {
                Ok(CertificateUsage::Unspecified) => "signing+encryption",
                Ok(CertificateUsage::Signing) => "signing",
                Ok(CertificateUsage::Encryption) => "encryption",
                Ok(CertificateUsage::TlsClient) => "tls-client",
                Err(_) => "unknown",
            },
            not_before: certificate.not_before.as_ref().map(rfc3339),
            not_after: certificate.not_after.as_ref().map(rfc3339),
            pem: certificate.pem.clone(),
        }
    }
}

/// The option name of a digest ("default" when unset).
fn digest_name(digest: i32) -> &'static str {
    match SigningDigest::try_from(digest) {
        Ok(SigningDigest::Unspecified) => "default",
        Ok(SigningDigest::Md5) => "md5",
        Ok(SigningDigest::Sha1) => "sha1",
        Ok(SigningDigest::Sha224) => "sha224",
        Ok(SigningDigest::Sha256) => "sha256",
        Ok(SigningDigest::Sha384) => "sha384",
        Ok(SigningDigest::Sha512) => "sha512",
        Err(_) => "unknown",
    }
}

/// The option name of a cipher ("default" when unset).
fn cipher_name(cipher: i32) -> &'static str {
    match EncryptionCipher::try_from(cipher) {
        Ok(EncryptionCipher::Unspecified) => "default",
        Ok(EncryptionCipher::DesEde3Cbc) => "3des",
        Ok(EncryptionCipher::Aes128Cbc) => "aes128-cbc",
        Ok(EncryptionCipher::Aes192Cbc) => "aes192-cbc",
        Ok(EncryptionCipher::Aes256Cbc) => "aes256-cbc",
        Ok(EncryptionCipher::Aes128Gcm) => "aes128-gcm",
        Ok(EncryptionCipher::Aes256Gcm) => "aes256-gcm",
        Err(_) => "unknown",
    }
}

pub(crate) fn rfc3339(timestamp: &Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(timestamp.seconds)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| timestamp.seconds.to_string())
}

fn list_or_default(names: &[&str]) -> String {
    if names.is_empty() {
        "all supported".to_owned()
    } else {
        names.join(", ")
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

/// The detail view of one partnership, for people.
pub fn render_detail(view: &PartnershipView) -> String {
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "{label:<34}{value}");
    };
    line("id:", &view.id);
    line("revision:", &view.revision.to_string());
    if !view.display_name.is_empty() {
        line("name:", &view.display_name);
    }
    line("as2-from (partner):", &view.as2_from);
    line("as2-to (us):", &view.as2_to);
    line("kafka topic:", &view.kafka_topic);
    line("decryption key id:", or_default(&view.decryption_key_id));
    line("mdn signing key id:", or_default(&view.mdn_signing_key_id));
    let policy = &view.security_policy;
    line("require signature:", yes_no(policy.require_signature));
    line("require encryption:", yes_no(policy.require_encryption));
    line(
        "archive:",
        &match (policy.archive, policy.archive_retention_days) {
            (false, _) => "off".to_owned(),
            (true, 0) => "on (edge default retention)".to_owned(),
            (true, days) => format!("on, {days} days"),
        },
    );
    line(
        "max message bytes:",
        &policy
            .max_message_bytes
            .map_or_else(|| "(edge default)".to_owned(), |limit| limit.to_string()),
    );
    line(
        "signing digests:",
        &list_or_default(&policy.allowed_signing_digests),
    );
    line(
        "encryption ciphers:",
        &list_or_default(&policy.allowed_encryption_ciphers),
    );
    line("allow md5:", yes_no(policy.allow_md5));
    line(
        "refuse pkcs1v15 key transport:",
        yes_no(policy.refuse_rsa_pkcs1v15_key_transport),
    );
    line(
        "signed mdn offered:",
        yes_no(view.mdn_preferences.offer_signed_mdn),
    );
    let default_micalg = match view.mdn_preferences.default_micalg {
        "default" => "sha256 (default)",
        name => name,
    };
    line("default micalg:", default_micalg);
    let interop = &view.interop;
    line(
        "skip certificate validity check:",
        yes_no(interop.skip_certificate_validity_check),
    );
    let async_mdn = &view.async_mdn;
    line(
        "async mdn url patterns:",
        &if async_mdn.allowed_url_patterns.is_empty() {
            "any url".to_owned()
        } else {
            async_mdn.allowed_url_patterns.join(", ")
        },
    );
    line(
        "async mdn targets:",
        if async_mdn.allow_private_targets {
            "any address (private targets allowed)"
        } else {
            "public addresses only"
        },
    );
    line("async mdn max queued:", &async_mdn.max_queued.to_string());
    line("async mdn https:", &async_mdn.https.summary());
    let outbound = &view.outbound;
    if outbound.url.is_empty() {
        line("outbound:", "none");
    } else {
        line("outbound url:", &outbound.url);
        line(
            "outbound sign:",
            &format!("{} ({})", yes_no(outbound.sign), outbound.signing_digest),
        );
        line(
            "outbound encrypt:",
            &format!(
                "{} ({})",
                yes_no(outbound.encrypt),
                outbound.encryption_cipher
            ),
        );
        line("outbound compression:", outbound.compression);
        line(
            "outbound mdn:",
            &format!(
                "{} (signed: {})",
                outbound.mdn_mode,
                yes_no(outbound.request_signed_mdn)
            ),
        );
        if !outbound.async_mdn_url.is_empty() {
            line("async mdn url:", &outbound.async_mdn_url);
        }
        line("outbound https:", &outbound.https.summary());
    }
    if let Some(created_at) = &view.created_at {
        line("created:", created_at);
    }
    if let Some(updated_at) = &view.updated_at {
        line("updated:", updated_at);
    }
    line(
        "partner certificates:",
        &view.partner_certificates.len().to_string(),
    );
    for certificate in &view.partner_certificates {
        let _ = writeln!(text, "  - sha256:    {}", certificate.sha256_fingerprint);
        let _ = writeln!(text, "    subject:   {}", certificate.subject);
        let _ = writeln!(text, "    issuer:    {}", certificate.issuer);
        let _ = writeln!(text, "    serial:    {}", certificate.serial_number);
        let _ = writeln!(text, "    usage:     {}", certificate.usage);
        let _ = writeln!(
            text,
            "    valid:     {} .. {}",
            certificate.not_before.as_deref().unwrap_or("?"),
            certificate.not_after.as_deref().unwrap_or("?")
        );
    }
    text
}

fn or_default(value: &str) -> &str {
    if value.is_empty() {
        "(gateway default)"
    } else {
        value
    }
}

/// A table of partnerships, one per line, for people.
pub fn render_table(views: &[PartnershipView]) -> String {
    let header = ["ID", "AS2-FROM", "AS2-TO", "TOPIC", "CERTS", "REVISION"];
    let rows: Vec<[String; 6]> = views
        .iter()
        .map(|view| {
            [
                view.id.clone(),
                view.as2_from.clone(),
                view.as2_to.clone(),
                view.kafka_topic.clone(),
                view.partner_certificates.len().to_string(),
                view.revision.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    let mut push_row = |cells: &[&str]| {
        let line: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(text, "{}", line.join("  ").trim_end());
    };
    push_row(&header);
    for row in &rows {
        push_row(&row.each_ref().map(String::as_str));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_line_up() {
        let partnerships = [
            Partnership {
                id: "a".to_owned(),
                as2_from: "Partner With Spaces".to_owned(),
                as2_to: "us".to_owned(),
                kafka_topic: "t".to_owned(),
                revision: 3,
                ..Partnership::default()
            },
            Partnership {
                id: "longer-id".to_owned(),
                as2_from: "b".to_owned(),
                as2_to: "us".to_owned(),
                kafka_topic: "topic".to_owned(),
                revision: 1,
                ..Partnership::default()
            },
        ];
        let views: Vec<PartnershipView> = partnerships.iter().map(PartnershipView::from).collect();
        let table = render_table(&views);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID         AS2-FROM"), "{table}");
        assert!(
            lines[1].starts_with("a          Partner With Spaces  us"),
            "{table}"
        );
    }

    #[test]
    fn json_uses_option_names() {
        let partnership = Partnership {
            mdn_preferences: Some(as2_rpc::routing::v1::MdnPreferences {
                offer_signed_mdn: Some(true),
                default_micalg: SigningDigest::Sha384 as i32,
            }),
            ..Partnership::default()
        };
        let json = serde_json::to_value(PartnershipView::from(&partnership)).unwrap();
        assert_eq!(json["mdn_preferences"]["default_micalg"], "sha384");
        assert_eq!(json["outbound"]["mdn_mode"], "none");
    }
}
