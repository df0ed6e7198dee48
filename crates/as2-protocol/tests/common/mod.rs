//! Test fixtures: RSA keys and self-signed certificates generated at test time.

#![allow(dead_code)]

use as2_protocol::cms::Identity;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectKeyIdentifier};
use openssl::x509::{X509, X509NameBuilder};

/// A fresh RSA-2048 identity whose certificate is valid from `from_days` to `to_days`
/// relative to now.
pub fn identity_valid(common_name: &str, from_days: i64, to_days: i64) -> Identity {
    let rsa = Rsa::generate(2048).unwrap();
    let key = PKey::from_rsa(rsa).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    name.append_entry_by_text("O", "as2-protocol tests")
        .unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial
        .rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    builder
        .set_not_before(&Asn1Time::from_unix(now + from_days * 86_400).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::from_unix(now + to_days * 86_400).unwrap())
        .unwrap();
    builder
        .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    let ski = SubjectKeyIdentifier::new()
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(ski).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    Identity {
        key,
        certificate: builder.build(),
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
