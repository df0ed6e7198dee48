//! The demo identities and partnership of the quick start.
//!
//! Two RSA key pairs with self-signed certificates are generated on the first start and
//! kept in the data directory, so a partner configured with them (pyas2lib, another AS2
//! product, `as2ctl send`) keeps working across restarts:
//!
//! | path | what |
//! |---|---|
//! | `{data}/keys/gateway/tls.key`, `tls.crt` | the gateway's key (decrypts, signs MDNs), in the edge's key directory layout |
//! | `{data}/partner/tls.key`, `tls.crt` | the demo partner's key (signs what it sends, decrypts nothing here) |
//!
//! The demo partnership says: messages from [`PARTNER_AS2_ID`] to [`GATEWAY_AS2_ID`]
//! go to the quick-start topic; signing and encryption are accepted but not required.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use as2_common::config::GrpcTlsConfig;
use as2_common::grpc::local_ca::{self, LocalCa};
use as2_common::grpc::tls::CredentialFiles;
use as2_rpc::authorization::Role;
use as2_rpc::routing::v1::{
    AsyncMdnPolicy, CertificateUsage, InteropSwitches, MdnPreferences, PartnerCertificate,
    Partnership, SecurityPolicy,
};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509, X509NameBuilder};

/// Our AS2 ID in the quick start.
pub const GATEWAY_AS2_ID: &str = "quickstart-gateway";
/// The demo partner's AS2 ID.
pub const PARTNER_AS2_ID: &str = "quickstart-partner";
/// The demo partnership's id.
pub const PARTNERSHIP_ID: &str = "quickstart-partner";
/// The key id of the gateway's key (its directory under `{data}/keys`).
pub const GATEWAY_KEY_ID: &str = "gateway";
/// How long generated certificates are valid.
const CERTIFICATE_DAYS: u32 = 825;

/// Where one key pair is stored.
#[derive(Clone, Debug)]
pub struct KeyFiles {
    /// The PEM private key (PKCS#8).
    pub key: PathBuf,
    /// The PEM certificate.
    pub certificate: PathBuf,
}

impl KeyFiles {
    fn in_directory(directory: &Path) -> Self {
        Self {
            key: directory.join("tls.key"),
            certificate: directory.join("tls.crt"),
        }
    }

    /// The certificate as PEM text.
    pub fn certificate_pem(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.certificate)
            .with_context(|| format!("cannot read {}", self.certificate.display()))
    }
}

/// The quick start's key material on disk.
#[derive(Clone, Debug)]
pub struct DemoIdentities {
    /// The directory the edge loads keys from (`{data}/keys`).
    pub keys_dir: PathBuf,
    /// The gateway's key pair.
    pub gateway: KeyFiles,
    /// The demo partner's key pair.
    pub partner: KeyFiles,
}

impl DemoIdentities {
    /// Loads the identities from `data_dir`, generating those that are missing.
    pub fn ensure(data_dir: &Path) -> anyhow::Result<Self> {
        let keys_dir = data_dir.join("keys");
        let gateway = KeyFiles::in_directory(&keys_dir.join(GATEWAY_KEY_ID));
        let partner = KeyFiles::in_directory(&data_dir.join("partner"));
        for (files, common_name) in [(&gateway, GATEWAY_AS2_ID), (&partner, PARTNER_AS2_ID)] {
            ensure_key_pair(files, common_name)?;
        }
        Ok(Self {
            keys_dir,
            gateway,
            partner,
        })
    }

    /// The demo partnership: [`PARTNER_AS2_ID`] sends to [`GATEWAY_AS2_ID`], documents
    /// go to `topic`.
    pub fn partnership(&self, topic: &str) -> anyhow::Result<Partnership> {
        Ok(Partnership {
            id: PARTNERSHIP_ID.to_owned(),
            display_name: "Quick-start demo partner".to_owned(),
            as2_from: PARTNER_AS2_ID.to_owned(),
            as2_to: GATEWAY_AS2_ID.to_owned(),
            kafka_topic: topic.to_owned(),
            partner_certificates: vec![PartnerCertificate {
                pem: self.partner.certificate_pem()?,
                usage: CertificateUsage::Signing as i32,
                ..PartnerCertificate::default()
            }],
            decryption_key_id: GATEWAY_KEY_ID.to_owned(),
            mdn_signing_key_id: GATEWAY_KEY_ID.to_owned(),
            security_policy: Some(SecurityPolicy::default()),
            mdn_preferences: Some(MdnPreferences::default()),
            interop: Some(InteropSwitches::default()),
            // The quick start's partner (as2ctl send, pyas2lib) takes its asynchronous
            // MDNs on this machine: the demo partnership opts in to loopback and
            // private targets, which a real partnership should not need.
            async_mdn: Some(AsyncMdnPolicy {
                allow_private_targets: true,
                ..AsyncMdnPolicy::default()
            }),
            ..Partnership::default()
        })
    }
}

fn ensure_key_pair(files: &KeyFiles, common_name: &str) -> anyhow::Result<()> {
    match (files.key.exists(), files.certificate.exists()) {
        (true, true) => return Ok(()),
        (false, false) => {}
        _ => anyhow::bail!(
            "{} and {} must both exist or both be missing; delete the one that is left to \
             generate a new pair",
            files.key.display(),
            files.certificate.display()
        ),
    }
    let (key, certificate) = self_signed(common_name)
        .with_context(|| format!("cannot generate a key pair for {common_name}"))?;
    let directory = files.key.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    as2_common::grpc::local_ca::write_private_key(&files.key, &key.private_key_to_pem_pkcs8()?)?;
    std::fs::write(&files.certificate, certificate.to_pem()?)
        .with_context(|| format!("cannot write {}", files.certificate.display()))?;
    tracing::info!(key = %files.key.display(), certificate = %files.certificate.display(), "generated a demo key pair");
    Ok(())
}

/// An RSA-2048 key and a self-signed certificate for signing and key encipherment.
fn self_signed(common_name: &str) -> Result<(PKey<Private>, X509), openssl::error::ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", common_name)?;
    name.append_entry_by_text("O", "AS2 gateway quick start")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(CERTIFICATE_DAYS)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()?,
    )?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((key, builder.build()))
}

/// Writes a private key readable by its owner only.
/// The quick start's gRPC credentials: a local CA and one certificate per service and
/// for the operator, in `{data}/grpc` (generated on the first start, kept afterwards).
///
/// | file | common name | used by |
/// |---|---|---|
/// | `ca.crt`, `ca.key` | `as2-gateway quick-start CA` | signs the others; `ca.crt` is every peer's trust anchor |
/// | `routing.crt`, `.key` | `routing` | the routing service's gRPC server |
/// | `mdn.crt`, `.key` | `mdn` | the MDN service's gRPC server |
/// | `edge.crt`, `.key` | `edge` | the edge calling routing and MDN service |
/// | `operator.crt`, `.key` | `operator:quickstart` | as2ctl, and the demo set-up itself |
#[derive(Clone, Debug)]
pub struct GrpcCredentials {
    /// Where the files are.
    pub directory: PathBuf,
    /// The routing service's.
    pub routing: CredentialFiles,
    /// The MDN service's.
    pub mdn: CredentialFiles,
    /// The edge's.
    pub edge: CredentialFiles,
    /// The operator's (as2ctl finds it here by itself).
    pub operator: CredentialFiles,
}

/// The host names and addresses the quick start's server certificates are valid for.
const LOCAL_HOSTS: &[&str] = &["127.0.0.1", "::1", "localhost"];

impl GrpcCredentials {
    /// Loads the credentials from `{data_dir}/grpc`, generating what is missing.
    pub fn ensure(data_dir: &Path) -> anyhow::Result<Self> {
        let directory = local_ca::quickstart_directory(data_dir);
        let ca = LocalCa::load_or_create(&directory, "as2-gateway quick-start CA")
            .context("cannot set up the quick start's local CA")?;
        let issue = |file_name: &str, common_name: &str| {
            ca.ensure_credential(&directory, file_name, common_name, LOCAL_HOSTS)
                .with_context(|| format!("cannot issue the {file_name} gRPC credential"))
        };
        Ok(Self {
            routing: issue("routing", Role::Routing.name())?,
            mdn: issue("mdn", Role::Mdn.name())?,
            edge: issue("edge", Role::Edge.name())?,
            operator: issue(local_ca::OPERATOR_CREDENTIAL, "operator:quickstart")?,
            directory,
        })
    }
}

/// The TLS configuration block for one credential.
pub fn tls_config(files: &CredentialFiles) -> GrpcTlsConfig {
    GrpcTlsConfig::mutual_tls(&files.certificate, &files.key, &files.ca)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn identities_are_generated_once_and_then_reused() {
        let data = tempfile::tempdir().unwrap();
        let first = DemoIdentities::ensure(data.path()).unwrap();
        let certificate = first.gateway.certificate_pem().unwrap();
        let parsed = X509::from_pem(certificate.as_bytes()).unwrap();
        let key = PKey::private_key_from_pem(&std::fs::read(&first.gateway.key).unwrap()).unwrap();
        assert!(parsed.public_key().unwrap().public_eq(&key));
        let mode = std::fs::metadata(&first.partner.key).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );

        let second = DemoIdentities::ensure(data.path()).unwrap();
        assert_eq!(second.gateway.certificate_pem().unwrap(), certificate);
        assert_ne!(
            second.partner.certificate_pem().unwrap(),
            certificate,
            "the partner has a key of its own"
        );
    }

    #[test]
    fn half_a_key_pair_is_an_error_not_a_silent_replacement() {
        let data = tempfile::tempdir().unwrap();
        let identities = DemoIdentities::ensure(data.path()).unwrap();
        std::fs::remove_file(&identities.partner.certificate).unwrap();
        let error = DemoIdentities::ensure(data.path()).unwrap_err();
        assert!(error.to_string().contains("both exist"), "{error}");
    }

    #[test]
    fn the_partnership_carries_the_partner_certificate() {
        let data = tempfile::tempdir().unwrap();
        let identities = DemoIdentities::ensure(data.path()).unwrap();
        let partnership = identities.partnership("topic-a").unwrap();
        assert_eq!(partnership.kafka_topic, "topic-a");
        assert_eq!(
            partnership.partner_certificates[0].pem,
            identities.partner.certificate_pem().unwrap()
        );
    }
}
