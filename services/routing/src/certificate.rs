//! Partner certificates: parsing, normalising and describing them.

use std::time::{SystemTime, UNIX_EPOCH};

use as2_rpc::routing::v1::PartnerCertificate;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::hash::MessageDigest;
use openssl::x509::{X509, X509NameRef};

/// Why a certificate was refused. The messages complete "field: ...".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    /// The text holds no PEM certificate.
    #[error("no PEM certificate found (expected \"-----BEGIN CERTIFICATE-----\")")]
    NotPem,
    /// The PEM block does not decode to an X.509 certificate.
    #[error("certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// More than one certificate in one entry.
    #[error("{0} certificates in one entry; give each certificate as its own entry")]
    SeveralCertificates(usize),
    /// Someone pasted a private key; it must never be stored here.
    #[error("contains a private key; only the partner's public certificate belongs here")]
    ContainsPrivateKey,
    /// The validity period has ended.
    #[error("certificate expired at {not_after} (subject {subject})")]
    Expired {
        /// End of the validity period, RFC 3339.
        not_after: String,
        /// Subject of the certificate, to tell which one it is.
        subject: String,
    },
}

/// Parses one PEM certificate and returns it in normalised form, with its
/// fingerprint, names, serial number and validity period filled in.
///
/// Refuses text that is not exactly one certificate, a private key, and a
/// certificate whose validity period ended before `now`. A certificate that is
/// not valid yet is accepted (it may be added ahead of a rotation).
pub fn inspect_certificate(
    pem: &str,
    now: SystemTime,
) -> Result<PartnerCertificate, CertificateError> {
    if pem.contains("PRIVATE KEY-----") {
        return Err(CertificateError::ContainsPrivateKey);
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CertificateError::NotPem);
    }
    let mut certificates = X509::stack_from_pem(pem.as_bytes())
        .map_err(|error| CertificateError::Unparsable(first_reason(&error)))?;
    let certificate = match certificates.len() {
        0 => return Err(CertificateError::NotPem),
        1 => certificates.remove(0),
        count => return Err(CertificateError::SeveralCertificates(count)),
    };

    let unparsable =
        |error: openssl::error::ErrorStack| CertificateError::Unparsable(first_reason(&error));
    let not_before = unix_seconds(certificate.not_before()).map_err(unparsable)?;
    let not_after = unix_seconds(certificate.not_after()).map_err(unparsable)?;
    let subject = distinguished_name(certificate.subject_name());
    let now_seconds = now.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
    });
    if not_after < now_seconds {
        return Err(CertificateError::Expired {
            not_after: rfc3339(not_after),
            subject,
        });
    }

    let fingerprint = certificate
        .digest(MessageDigest::sha256())
        .map_err(unparsable)?;
    let serial_number = certificate
        .serial_number()
        .to_bn()
        .and_then(|number| number.to_hex_str().map(|hex| hex.to_string()))
        .map_err(unparsable)?;
    let normalised_pem = certificate.to_pem().map_err(unparsable)?;

    Ok(PartnerCertificate {
        pem: String::from_utf8_lossy(&normalised_pem).into_owned(),
        usage: 0,
        sha256_fingerprint: hex(&fingerprint),
        subject,
        issuer: distinguished_name(certificate.issuer_name()),
        serial_number,
        not_before: Some(prost_types::Timestamp {
            seconds: not_before,
            nanos: 0,
        }),
        not_after: Some(prost_types::Timestamp {
            seconds: not_after,
            nanos: 0,
        }),
    })
}

/// Lowercase hex without separators.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}

/// Formats unix seconds as RFC 3339 (UTC), or the raw number when out of range.
pub fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_seconds.to_string())
}

fn unix_seconds(moment: &Asn1TimeRef) -> Result<i64, openssl::error::ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let difference = epoch.diff(moment)?;
    Ok(i64::from(difference.days) * 86_400 + i64::from(difference.secs))
}

fn distinguished_name(name: &X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_reason(error: &openssl::error::ErrorStack) -> String {
    error
        .errors()
        .first()
        .and_then(|first| first.reason().map(str::to_owned))
        .unwrap_or_else(|| "malformed certificate".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use as2_testkit::certificates::{TestCertificate, certificate_pem};

    #[test]
    fn describes_a_valid_certificate() {
        let pem = certificate_pem(&TestCertificate::valid("acme as2"));
        let described = inspect_certificate(&pem, SystemTime::now()).unwrap();
        assert_eq!(described.subject, "CN=acme as2, O=Test Partner");
        assert_eq!(described.sha256_fingerprint.len(), 64);
        assert!(described.pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let not_before = described.not_before.unwrap().seconds;
        let not_after = described.not_after.unwrap().seconds;
        assert!(not_after - not_before > 300 * 86_400);
    }

    #[test]
    fn refuses_an_expired_certificate() {
        let pem = certificate_pem(&TestCertificate::expired("old partner"));
        let error = inspect_certificate(&pem, SystemTime::now()).unwrap_err();
        assert!(matches!(error, CertificateError::Expired { .. }), "{error}");
        assert!(
            error.to_string().starts_with("certificate expired at "),
            "{error}"
        );
    }

    #[test]
    fn accepts_a_certificate_that_is_not_valid_yet() {
        let pem = certificate_pem(&TestCertificate::valid("next"));
        let a_year_ago = SystemTime::now() - Duration::from_secs(365 * 86_400);
        assert!(inspect_certificate(&pem, a_year_ago).is_ok());
    }

    #[test]
    fn refuses_garbage_several_certificates_and_keys() {
        let now = SystemTime::now();
        assert_eq!(
            inspect_certificate("hello", now),
            Err(CertificateError::NotPem)
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            inspect_certificate(broken, now),
            Err(CertificateError::Unparsable(_))
        ));
        let one = certificate_pem(&TestCertificate::valid("one"));
        let two = format!("{one}{}", certificate_pem(&TestCertificate::valid("two")));
        assert_eq!(
            inspect_certificate(&two, now),
            Err(CertificateError::SeveralCertificates(2))
        );
        let with_key =
            format!("{one}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        assert_eq!(
            inspect_certificate(&with_key, now),
            Err(CertificateError::ContainsPrivateKey)
        );
    }
}
