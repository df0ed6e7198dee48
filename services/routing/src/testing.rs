//! Helpers for tests of the routing service and its clients: self-signed
//! partner certificates made on the fly, valid or expired.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509Name};

const DAY_SECONDS: i64 = 86_400;

/// The shape of a self-signed test certificate.
#[derive(Clone, Debug)]
pub struct TestCertificate {
    /// Subject common name; the organisation is always "Test Partner".
    pub common_name: String,
    /// Start of validity, in days relative to now (negative: in the past).
    pub not_before_days: i64,
    /// End of validity, in days relative to now.
    pub not_after_days: i64,
}

impl TestCertificate {
    /// Valid from yesterday for a year.
    pub fn valid(common_name: &str) -> Self {
        Self {
            common_name: common_name.to_owned(),
            not_before_days: -1,
            not_after_days: 365,
        }
    }

    /// Valid for a while, ended yesterday.
    pub fn expired(common_name: &str) -> Self {
        Self {
            common_name: common_name.to_owned(),
            not_before_days: -60,
            not_after_days: -1,
        }
    }
}

/// Builds the certificate (RSA 2048, SHA-256, self-signed).
///
/// # Panics
///
/// When OpenSSL fails, which only a broken installation does.
pub fn build_certificate(shape: &TestCertificate) -> X509 {
    build(shape).expect("openssl builds a self-signed test certificate")
}

/// The certificate, PEM encoded.
pub fn certificate_pem(shape: &TestCertificate) -> String {
    let pem = build_certificate(shape)
        .to_pem()
        .expect("openssl encodes a certificate as pem");
    String::from_utf8(pem).expect("pem is ascii")
}

/// The certificate, DER encoded.
pub fn certificate_der(shape: &TestCertificate) -> Vec<u8> {
    build_certificate(shape)
        .to_der()
        .expect("openssl encodes a certificate as der")
}

fn build(shape: &TestCertificate) -> Result<X509, openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509Name::builder()?;
    name.append_entry_by_text("CN", &shape.common_name)?;
    name.append_entry_by_text("O", "Test Partner")?;
    let name = name.build();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(0));
    let mut serial = [0_u8; 8];
    openssl::rand::rand_bytes(&mut serial)?;
    serial[0] &= 0x7f;

    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial: BigNum = BigNum::from_slice(&serial)?;
    let serial: Asn1Integer = Asn1Integer::from_bn(&serial)?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let not_before = Asn1Time::from_unix(now + shape.not_before_days * DAY_SECONDS)?;
    let not_after = Asn1Time::from_unix(now + shape.not_after_days * DAY_SECONDS)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok(builder.build())
}
