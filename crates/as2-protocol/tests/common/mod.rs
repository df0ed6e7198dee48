//! Test fixtures: RSA keys and self-signed certificates generated at test time.

#![allow(dead_code)]

use as2_protocol::cms::Identity;
use as2_testkit::certificates::TestCertificate;

/// A fresh RSA-2048 identity whose certificate (a CA, as `openssl smime -verify` wants of
/// a trust anchor) is valid from `from_days` to `to_days` relative to now.
pub fn identity_valid(common_name: &str, from_days: i64, to_days: i64) -> Identity {
    let material = TestCertificate::new(common_name)
        .organisation("as2-protocol tests")
        .valid_days(from_days, to_days)
        .certificate_authority()
        .generate();
    Identity {
        key: material.key,
        certificate: material.certificate,
    }
}

/// A fresh identity valid from yesterday for a year.
pub fn identity(common_name: &str) -> Identity {
    identity_valid(common_name, -1, 365)
}

pub fn key_pem(identity: &Identity) -> String {
    String::from_utf8(identity.key.private_key_to_pem_pkcs8().unwrap()).unwrap()
}

pub fn cert_pem(identity: &Identity) -> String {
    String::from_utf8(identity.certificate.to_pem().unwrap()).unwrap()
}

/// An EDI-looking payload of about `size` bytes with CRLF and bare LF lines.
pub fn payload(size: usize) -> Vec<u8> {
    let line = b"UNH+1+ORDERS:D:96A:UN:EAN008'\r\nBGM+220+1AA1TEST+9'\nDTM+137:20140407:102'\r\n";
    line.iter().copied().cycle().take(size).collect()
}
