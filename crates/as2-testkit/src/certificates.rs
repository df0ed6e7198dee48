//! Self-signed certificates and their RSA keys, made on the fly.
//!
//! Every test that needs a key pair (our keys on disk, a partner's certificate in a
//! partnership, an expired certificate the registry must refuse) describes it with a
//! [`TestCertificate`] and calls [`TestCertificate::generate`].

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName, SubjectKeyIdentifier};
use openssl::x509::{X509, X509NameBuilder};

const DAY_SECONDS: i64 = 86_400;

/// The shape of a self-signed test certificate (SHA-256, X.509 v3, a random serial).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCertificate {
    /// Subject (and issuer) common name.
    pub common_name: String,
    /// Subject organisation, if any.
    pub organisation: Option<String>,
    /// Start of validity, in days relative to now (negative: in the past).
    pub not_before_days: i64,
    /// End of validity, in days relative to now.
    pub not_after_days: i64,
    /// Size of the RSA key in bits.
    pub key_bits: u32,
    /// Whether the certificate is marked as a CA (critical basic constraints) with a
    /// subject key identifier, as the OpenSSL command line wants of a trust anchor.
    pub certificate_authority: bool,
    /// DNS names and IP addresses of the subject alternative names (a TLS server's).
    pub hosts: Vec<String>,
}

impl TestCertificate {
    /// RSA 2048, subject `CN=<common_name>`, valid from now for 365 days.
    pub fn new(common_name: &str) -> Self {
        Self {
            common_name: common_name.to_owned(),
            organisation: None,
            not_before_days: 0,
            not_after_days: 365,
            key_bits: 2048,
            certificate_authority: false,
            hosts: Vec::new(),
        }
    }

    /// A partner certificate of the registry tests: `CN=<common_name>, O=Test Partner`,
    /// valid from yesterday for a year.
    pub fn valid(common_name: &str) -> Self {
        Self::new(common_name)
            .organisation("Test Partner")
            .valid_days(-1, 365)
    }

    /// Like [`TestCertificate::valid`], but valid for a while that ended yesterday.
    pub fn expired(common_name: &str) -> Self {
        Self::valid(common_name).valid_days(-60, -1)
    }

    /// The same with subject organisation `organisation`.
    pub fn organisation(mut self, organisation: &str) -> Self {
        self.organisation = Some(organisation.to_owned());
        self
    }

    /// The same, valid from `not_before_days` to `not_after_days` relative to now.
    pub fn valid_days(mut self, not_before_days: i64, not_after_days: i64) -> Self {
        self.not_before_days = not_before_days;
        self.not_after_days = not_after_days;
        self
    }

    /// The same with an RSA key of `key_bits` bits.
    pub fn key_bits(mut self, key_bits: u32) -> Self {
        self.key_bits = key_bits;
        self
    }

    /// The same, marked as a CA.
    pub fn certificate_authority(mut self) -> Self {
        self.certificate_authority = true;
        self
    }

    /// The same, for these DNS names and IP addresses (subject alternative names).
    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|host| (*host).to_owned()).collect();
        self
    }

    /// A fresh key and the certificate.
    ///
    /// # Panics
    ///
    /// When OpenSSL fails, which only a broken installation does.
    pub fn generate(&self) -> KeyMaterial {
        let (key, certificate) = self
            .build(None)
            .expect("openssl builds a self-signed test certificate");
        KeyMaterial::new(key, certificate)
    }

    /// A fresh key and the certificate, issued by `issuer` (a CA made with
    /// [`TestCertificate::certificate_authority`]) instead of self-signed.
    ///
    /// # Panics
    ///
    /// When OpenSSL fails, which only a broken installation does.
    pub fn issued_by(&self, issuer: &KeyMaterial) -> KeyMaterial {
        let (key, certificate) = self
            .build(Some(issuer))
            .expect("openssl builds an issued test certificate");
        KeyMaterial::new(key, certificate)
    }

    fn build(&self, issuer: Option<&KeyMaterial>) -> Result<(PKey<Private>, X509), ErrorStack> {
        let key = PKey::from_rsa(Rsa::generate(self.key_bits)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", &self.common_name)?;
        if let Some(organisation) = &self.organisation {
            name.append_entry_by_text("O", organisation)?;
        }
        let name = name.build();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(0));
        let mut serial = BigNum::new()?;
        serial.rand(63, MsbOption::MAYBE_ZERO, false)?;

        let mut builder = X509::builder()?;
        builder.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        builder.set_serial_number(&serial)?;
        builder.set_subject_name(&name)?;
        builder
            .set_issuer_name(issuer.map_or(&*name, |issuer| issuer.certificate.subject_name()))?;
        builder.set_pubkey(&key)?;
        let not_before = Asn1Time::from_unix(now + self.not_before_days * DAY_SECONDS)?;
        let not_after = Asn1Time::from_unix(now + self.not_after_days * DAY_SECONDS)?;
        builder.set_not_before(&not_before)?;
        builder.set_not_after(&not_after)?;
        if self.certificate_authority {
            builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            let key_identifier =
                SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
            builder.append_extension(key_identifier)?;
        }
        if !self.hosts.is_empty() {
            let mut names = SubjectAlternativeName::new();
            for host in &self.hosts {
                if host.parse::<std::net::IpAddr>().is_ok() {
                    names.ip(host);
                } else {
                    names.dns(host);
                }
            }
            let issuer_certificate = issuer.map(|issuer| &*issuer.certificate);
            let names = names.build(&builder.x509v3_context(issuer_certificate, None))?;
            builder.append_extension(names)?;
        }
        let signer = issuer.map_or(&key, |issuer| &issuer.key);
        builder.sign(signer, MessageDigest::sha256())?;
        Ok((key, builder.build()))
    }
}

/// A private key and its self-signed certificate, parsed and PEM encoded.
#[derive(Clone)]
pub struct KeyMaterial {
    /// The private key.
    pub key: PKey<Private>,
    /// The certificate.
    pub certificate: X509,
    /// The private key, PEM (PKCS #8, unencrypted).
    pub key_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyMaterial")
            .field("subject", &self.certificate.subject_name())
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// A key and certificate of the default shape ([`TestCertificate::new`]).
    pub fn generate(common_name: &str) -> Self {
        TestCertificate::new(common_name).generate()
    }

    fn new(key: PKey<Private>, certificate: X509) -> Self {
        let key_pem = key
            .private_key_to_pem_pkcs8()
            .expect("openssl encodes a private key as pem");
        let cert_pem = certificate
            .to_pem()
            .expect("openssl encodes a certificate as pem");
        Self {
            key,
            certificate,
            key_pem: String::from_utf8(key_pem).expect("pem is ascii"),
            cert_pem: String::from_utf8(cert_pem).expect("pem is ascii"),
        }
    }

    /// The certificate, DER encoded.
    pub fn cert_der(&self) -> Vec<u8> {
        self.certificate
            .to_der()
            .expect("openssl encodes a certificate as der")
    }

    /// Writes the pair as the gateway's key `key_id` under `keys_dir`
    /// (`<keys_dir>/<key_id>/tls.key` and `tls.crt`, the layout of a
    /// `kubernetes.io/tls` Secret).
    pub fn write_key_dir(&self, keys_dir: &Path, key_id: &str) {
        let directory = keys_dir.join(key_id);
        std::fs::create_dir_all(&directory).expect("create the key directory");
        std::fs::write(directory.join("tls.key"), &self.key_pem).expect("write tls.key");
        std::fs::write(directory.join("tls.crt"), &self.cert_pem).expect("write tls.crt");
    }
}

/// A certificate of `shape`, PEM encoded (its key is dropped).
pub fn certificate_pem(shape: &TestCertificate) -> String {
    shape.generate().cert_pem
}

/// A certificate of `shape`, DER encoded (its key is dropped).
pub fn certificate_der(shape: &TestCertificate) -> Vec<u8> {
    shape.generate().cert_der()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_has_the_shape_asked_for() {
        let material = TestCertificate::expired("old partner")
            .key_bits(1024)
            .generate();
        let subject: Vec<String> = material
            .certificate
            .subject_name()
            .entries()
            .map(|entry| String::from_utf8_lossy(entry.data().as_slice()).into_owned())
            .collect();
        assert_eq!(subject, ["old partner", "Test Partner"]);
        let now = Asn1Time::days_from_now(0).unwrap();
        assert!(material.certificate.not_after() < now);
        assert_eq!(material.key.bits(), 1024);
        assert!(
            material
                .key
                .public_eq(&material.certificate.public_key().unwrap())
        );
        let parsed = X509::from_der(&material.cert_der()).unwrap();
        assert_eq!(parsed.to_pem().unwrap(), material.cert_pem.as_bytes());
    }

    #[test]
    fn key_directories_have_the_secret_layout() {
        let directory =
            std::env::temp_dir().join(format!("as2-testkit-keys-{}", std::process::id()));
        let material = KeyMaterial::generate("gateway");
        material.write_key_dir(&directory, "our-key");
        let key = std::fs::read_to_string(directory.join("our-key/tls.key")).unwrap();
        assert_eq!(key, material.key_pem);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
