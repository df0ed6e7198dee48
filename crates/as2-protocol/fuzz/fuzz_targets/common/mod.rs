//! What the fuzz targets share: one key pair, made once per process.

use std::sync::OnceLock;

use as2_protocol::cms::Identity;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};

/// A 2048-bit RSA key with a self-signed certificate valid for 30 days.
pub fn identity() -> &'static Identity {
    static IDENTITY: OnceLock<Identity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
        let mut name = X509NameBuilder::new().expect("name");
        name.append_entry_by_text("CN", "fuzz").expect("cn");
        let name = name.build();
        let mut builder = X509::builder().expect("builder");
        builder.set_subject_name(&name).expect("subject");
        builder.set_issuer_name(&name).expect("issuer");
        builder.set_pubkey(&key).expect("pubkey");
        builder
            .set_not_before(&Asn1Time::days_from_now(0).expect("time"))
            .expect("not before");
        builder
            .set_not_after(&Asn1Time::days_from_now(30).expect("time"))
            .expect("not after");
        builder.sign(&key, MessageDigest::sha256()).expect("sign");
        Identity {
            key,
            certificate: builder.build(),
        }
    })
}
