//! A local certificate authority for the gRPC credentials of a single machine: the quick
//! start generates one on its first start, and the tests issue their identities with it.
//! Production deployments use their own CA (cert-manager in the chart).
//!
//! Keys are ECDSA P-256; each leaf certificate is good for server and client
//! authentication and names its role in the subject common name
//! ([`as2_rpc::authorization`]) and its host names or addresses in the subject
//! alternative names.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};

use super::tls::CredentialFiles;

/// How long the CA certificate is valid.
const CA_DAYS: i64 = 3650;
/// How long an issued certificate is valid.
const LEAF_DAYS: i64 = 825;

/// A CA key and certificate.
pub struct LocalCa {
    key: PKey<Private>,
    certificate: X509,
}

/// Validity of an issued certificate, in days relative to now (negative: in the past).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// First day of validity.
    pub not_before_days: i64,
    /// Last day of validity.
    pub not_after_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Self {
            not_before_days: -1,
            not_after_days: LEAF_DAYS,
        }
    }
}

fn p256_key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn days_from_now(days: i64) -> anyhow::Result<Asn1Time> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs() as i64;
    Ok(Asn1Time::from_unix(now + days * 86_400)?)
}

fn serial() -> anyhow::Result<openssl::asn1::Asn1Integer> {
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(serial.to_asn1_integer()?)
}

/// A new P-256 key and a certificate builder for it: version 3, a random serial, the
/// subject `CN=common_name`, issued by `issuer` (itself when `None`), valid as said.
fn certificate_builder(
    common_name: &str,
    issuer: Option<&openssl::x509::X509NameRef>,
    validity: Validity,
) -> anyhow::Result<(PKey<Private>, openssl::x509::X509Builder)> {
    let key = p256_key()?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    let name = name.build();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_serial_number(&*serial()?)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(issuer.unwrap_or(&name))?;
    builder.set_pubkey(&key)?;
    builder.set_not_before(&*days_from_now(validity.not_before_days)?)?;
    builder.set_not_after(&*days_from_now(validity.not_after_days)?)?;
    Ok((key, builder))
}

impl LocalCa {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> anyhow::Result<Self> {
        let ca_validity = Validity {
            not_before_days: -1,
            not_after_days: CA_DAYS,
        };
        let (key, mut builder) = certificate_builder(common_name, None, ca_validity)?;
        builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let key_id = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
        builder.append_extension(key_id)?;
        builder.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            key,
            certificate: builder.build(),
        })
    }

    /// The CA of `directory` (`ca.crt`, `ca.key`), created there if it is missing.
    pub fn load_or_create(directory: &Path, common_name: &str) -> anyhow::Result<Self> {
        let (certificate, key) = (directory.join("ca.crt"), directory.join("ca.key"));
        if certificate.exists() && key.exists() {
            let certificate_pem = std::fs::read(&certificate)
                .with_context(|| format!("cannot read {}", certificate.display()))?;
            let key_pem =
                std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
            return Ok(Self {
                key: PKey::private_key_from_pem(&key_pem)
                    .with_context(|| format!("{} is not a PEM key", key.display()))?,
                certificate: X509::from_pem(&certificate_pem).with_context(|| {
                    format!("{} is not a PEM certificate", certificate.display())
                })?,
            });
        }
        let ca = Self::generate(common_name)?;
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        write_private_key(&key, &ca.key.private_key_to_pem_pkcs8()?)?;
        std::fs::write(&certificate, ca.certificate.to_pem()?)
            .with_context(|| format!("cannot write {}", certificate.display()))?;
        Ok(ca)
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(self.certificate.to_pem()?)
    }

    /// Issues a key and certificate for `common_name`, valid for the `hosts` (DNS names
    /// or IP addresses) as a server and for client authentication.
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> anyhow::Result<(PKey<Private>, X509)> {
        let issuer = Some(self.certificate.subject_name());
        let (key, mut builder) = certificate_builder(common_name, issuer, validity)?;
        builder.append_extension(BasicConstraints::new().critical().build()?)?;
        builder.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_agreement()
                .build()?,
        )?;
        builder.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()?,
        )?;
        if !hosts.is_empty() {
            let mut names = SubjectAlternativeName::new();
            for host in hosts {
                if host.parse::<IpAddr>().is_ok() {
                    names.ip(host);
                } else {
                    names.dns(host);
                }
            }
            let names = names.build(&builder.x509v3_context(Some(&self.certificate), None))?;
            builder.append_extension(names)?;
        }
        let authority = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&builder.x509v3_context(Some(&self.certificate), None))?;
        builder.append_extension(authority)?;
        builder.sign(&self.key, MessageDigest::sha256())?;
        Ok((key, builder.build()))
    }

    /// Writes a credential for `common_name` to `{directory}/{file_name}.crt` and `.key`
    /// (unless both exist), with the CA bundle `{directory}/ca.crt`, and returns the
    /// three paths.
    pub fn ensure_credential(
        &self,
        directory: &Path,
        file_name: &str,
        common_name: &str,
        hosts: &[&str],
    ) -> anyhow::Result<CredentialFiles> {
        let files = CredentialFiles {
            certificate: directory.join(format!("{file_name}.crt")),
            key: directory.join(format!("{file_name}.key")),
            ca: directory.join("ca.crt"),
        };
        std::fs::create_dir_all(directory)
            .with_context(|| format!("cannot create {}", directory.display()))?;
        if !files.ca.exists() {
            std::fs::write(&files.ca, self.certificate_pem()?)
                .with_context(|| format!("cannot write {}", files.ca.display()))?;
        }
        if !(files.certificate.exists() && files.key.exists()) {
            self.write_credential(&files, common_name, hosts, Validity::default())?;
        }
        Ok(files)
    }

    /// Issues a credential and writes its certificate and key to `files` (the CA bundle
    /// is left alone).
    pub fn write_credential(
        &self,
        files: &CredentialFiles,
        common_name: &str,
        hosts: &[&str],
        validity: Validity,
    ) -> anyhow::Result<()> {
        let (key, certificate) = self.issue(common_name, hosts, validity)?;
        write_private_key(&files.key, &key.private_key_to_pem_pkcs8()?)?;
        std::fs::write(&files.certificate, certificate.to_pem()?)
            .with_context(|| format!("cannot write {}", files.certificate.display()))
    }
}

/// Writes a private key (or anything secret) readable by its owner only, replacing the
/// file if it exists.
pub fn write_private_key(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(pem)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The file name (without `.crt` / `.key`) of the operator's credential in the quick
/// start's credentials directory, where as2ctl looks for it.
pub const OPERATOR_CREDENTIAL: &str = "operator";

/// The directory under a quick start's data directory that holds the local CA and the
/// gRPC credentials (`{data}/grpc`).
pub fn quickstart_directory(data_dir: &Path) -> PathBuf {
    data_dir.join("grpc")
}
