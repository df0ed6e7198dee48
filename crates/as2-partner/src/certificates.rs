//! Which of a partnership's certificates are used for what.
//!
//! A partner certificate is for signing, for encryption, or (usage unspecified) for
//! both. The partner's signatures (on messages the edge receives, on MDNs the sender
//! receives) are verified with every signing certificate, so a partner can roll its key
//! over; we encrypt for the one encryption certificate that is valid now and expires
//! last.

use as2_rpc::routing::v1::{CertificateUsage, PartnerCertificate, Partnership};
use openssl::asn1::Asn1Time;
use openssl::x509::X509;

/// Whether `certificate` may be used for `usage` (one without a usage serves both).
pub fn usable_for(certificate: &PartnerCertificate, usage: CertificateUsage) -> bool {
    // An unspecified usage means signing and encryption, never a TLS client identity.
    (matches!(certificate.usage(), CertificateUsage::Unspecified)
        && usage != CertificateUsage::TlsClient)
        || certificate.usage() == usage
}

/// The partner's certificates that verify its signatures (messages and MDNs). The
/// routing service validated them when they were stored, so one that does not parse is
/// skipped with a warning rather than failing every message of the partnership.
pub fn signing_certificates(partnership: &Partnership) -> Vec<X509> {
    partnership
        .partner_certificates
        .iter()
        .filter(|certificate| usable_for(certificate, CertificateUsage::Signing))
        .filter_map(|certificate| match X509::from_pem(certificate.pem.as_bytes()) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                tracing::warn!(partnership = %partnership.id, fingerprint = %certificate.sha256_fingerprint, %error, "skipping unparsable partner certificate");
                None
            }
        })
        .collect()
}

/// The partner's certificate to encrypt for: valid now, for encryption, expiring last.
pub fn encryption_certificate(certificates: &[PartnerCertificate]) -> Option<X509> {
    let now = Asn1Time::days_from_now(0).ok()?;
    certificates
        .iter()
        .filter(|certificate| usable_for(certificate, CertificateUsage::Encryption))
        .filter_map(|certificate| X509::from_pem(certificate.pem.as_bytes()).ok())
        .filter(|certificate| certificate.not_before() <= now && certificate.not_after() >= now)
        .max_by(|a, b| {
            a.not_after()
                .compare(b.not_after())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_usage(usage: CertificateUsage) -> PartnerCertificate {
        PartnerCertificate {
            usage: usage as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_certificate_without_usage_serves_both() {
        let both = with_usage(CertificateUsage::Unspecified);
        assert!(usable_for(&both, CertificateUsage::Signing));
        assert!(usable_for(&both, CertificateUsage::Encryption));
        let signing = with_usage(CertificateUsage::Signing);
        assert!(usable_for(&signing, CertificateUsage::Signing));
        assert!(!usable_for(&signing, CertificateUsage::Encryption));
        let encryption = with_usage(CertificateUsage::Encryption);
        assert!(!usable_for(&encryption, CertificateUsage::Signing));
        assert!(usable_for(&encryption, CertificateUsage::Encryption));
    }

    #[test]
    fn unparsable_certificates_are_skipped() {
        let partnership = Partnership {
            partner_certificates: vec![PartnerCertificate {
                pem: "not a certificate".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(signing_certificates(&partnership).is_empty());
        assert!(encryption_certificate(&partnership.partner_certificates).is_none());
    }
}
