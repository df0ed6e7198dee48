//! CMS (RFC 5652) as AS2 uses it, built on OpenSSL primitives.
//!
//! The ASN.1 is read and written here (with a small DER module) so that every detail AS2
//! needs is under our control: verification over the exact received bytes, several
//! candidate partner certificates, switchable validity checks, RSA-PSS signing, RSA-OAEP
//! key transport, AES-GCM AuthEnvelopedData (RFC 5083/5084), and CompressedData (RFC 3274)
//! decompressed in Rust with a size limit. OpenSSL does the cryptography.

mod compressed;
mod enveloped;
pub(crate) mod oid;
pub(crate) mod signed;
pub(crate) mod stream;

use std::fmt;

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::der::{self, Element, Reader};
use crate::error::{As2Error, Result};
use crate::headers::MicAlgorithm;

pub use compressed::{CompressedDataWriter, decompress};
pub(crate) use enveloped::EnvelopedWriter;
pub use enveloped::{Decrypted, decrypt};
pub use signed::{
    SignOptions, VerifiedSignature, VerifyOptions, sign, verify_detached, verify_opaque,
};

/// A private key with its certificate: ours, for decrypting and signing.
#[derive(Clone)]
pub struct Identity {
    /// The private key.
    pub key: PKey<Private>,
    /// The certificate that goes with the key.
    pub certificate: X509,
}

impl Identity {
    /// Loads a PEM private key (optionally encrypted with `passphrase`) and a PEM certificate.
    pub fn from_pem(
        key_pem: &[u8],
        certificate_pem: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Result<Self> {
        let key = match passphrase {
            Some(passphrase) => PKey::private_key_from_pem_passphrase(key_pem, passphrase)?,
            None => PKey::private_key_from_pem(key_pem)?,
        };
        let certificate = X509::from_pem(certificate_pem)?;
        Ok(Self { key, certificate })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.certificate.subject_name())
            .finish_non_exhaustive()
    }
}

/// The symmetric cipher that protects the content of an (auth)enveloped message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentCipher {
    /// DES-EDE3-CBC (3DES), still common among older partners.
    TripleDesCbc,
    /// AES-128-CBC.
    Aes128Cbc,
    /// AES-192-CBC.
    Aes192Cbc,
    /// AES-256-CBC.
    Aes256Cbc,
    /// AES-128-GCM in AuthEnvelopedData.
    Aes128Gcm,
    /// AES-192-GCM in AuthEnvelopedData.
    Aes192Gcm,
    /// AES-256-GCM in AuthEnvelopedData.
    Aes256Gcm,
}

impl ContentCipher {
    /// Every supported cipher.
    pub const ALL: [Self; 7] = [
        Self::TripleDesCbc,
        Self::Aes128Cbc,
        Self::Aes192Cbc,
        Self::Aes256Cbc,
        Self::Aes128Gcm,
        Self::Aes192Gcm,
        Self::Aes256Gcm,
    ];

    /// Whether this is an authenticated (GCM) cipher, carried in AuthEnvelopedData.
    pub fn is_authenticated(self) -> bool {
        matches!(self, Self::Aes128Gcm | Self::Aes192Gcm | Self::Aes256Gcm)
    }

    /// A stable lowercase name (`aes-256-cbc`, `des-ede3-cbc`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TripleDesCbc => "des-ede3-cbc",
            Self::Aes128Cbc => "aes-128-cbc",
            Self::Aes192Cbc => "aes-192-cbc",
            Self::Aes256Cbc => "aes-256-cbc",
            Self::Aes128Gcm => "aes-128-gcm",
            Self::Aes192Gcm => "aes-192-gcm",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    pub(crate) fn openssl(self) -> openssl::symm::Cipher {
        use openssl::symm::Cipher;
        match self {
            Self::TripleDesCbc => Cipher::des_ede3_cbc(),
            Self::Aes128Cbc => Cipher::aes_128_cbc(),
            Self::Aes192Cbc => Cipher::aes_192_cbc(),
            Self::Aes256Cbc => Cipher::aes_256_cbc(),
            Self::Aes128Gcm => Cipher::aes_128_gcm(),
            Self::Aes192Gcm => Cipher::aes_192_gcm(),
            Self::Aes256Gcm => Cipher::aes_256_gcm(),
        }
    }
}

impl fmt::Display for ContentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the content-encryption key is transported to the recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyTransport {
    /// RSA PKCS #1 v1.5 (rsaEncryption).
    RsaPkcs1v15,
    /// RSA-OAEP (RFC 3560) with the given hash for both OAEP and MGF1.
    RsaOaep(MicAlgorithm),
}

impl fmt::Display for KeyTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RsaPkcs1v15 => f.write_str("rsa-pkcs1v15"),
            Self::RsaOaep(digest) => write!(f, "rsa-oaep-{digest}"),
        }
    }
}

/// The RSA signature scheme of a SignerInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// RSASSA-PKCS1-v1_5.
    RsaPkcs1v15,
    /// RSASSA-PSS (RFC 4056) with MGF1 over the signing digest and a salt of the digest's length.
    RsaPss,
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RsaPkcs1v15 => "rsa-pkcs1v15",
            Self::RsaPss => "rsa-pss",
        })
    }
}

pub(crate) fn content_info(content_type: &[u8], content: &[u8]) -> Vec<u8> {
    der::sequence(&[&der::oid(content_type), &der::context(0, content)])
}

/// Reads an AlgorithmIdentifier: its OID content and its parameters, if any.
pub(crate) fn read_algorithm<'a>(
    reader: &mut Reader<'a>,
    what: &str,
) -> Result<(&'a [u8], Option<Element<'a>>)> {
    let algorithm = reader.expect(der::TAG_SEQUENCE, what)?;
    let mut fields = algorithm.children();
    let oid = fields.expect(der::TAG_OID, what)?.content;
    let parameters = fields.next()?.filter(|p| p.tag != der::TAG_NULL);
    Ok((oid, parameters))
}

/// The issuerAndSerialNumber of a certificate, DER encoded, to match SignerIdentifier /
/// RecipientIdentifier values.
pub(crate) fn issuer_and_serial(certificate: &X509) -> Result<Vec<u8>> {
    let issuer = certificate.issuer_name().to_der()?;
    let serial = certificate.serial_number().to_bn()?.to_vec();
    Ok(der::sequence(&[&issuer, &der::unsigned_integer(&serial)]))
}

/// Whether a SignerIdentifier / RecipientIdentifier element names `certificate`.
pub(crate) fn identifies(identifier: &Element<'_>, certificate: &X509) -> bool {
    match identifier.tag {
        der::TAG_SEQUENCE => issuer_and_serial(certificate).is_ok_and(|ias| ias == identifier.raw),
        0x80 => certificate
            .subject_key_id()
            .is_some_and(|ski| ski.as_slice() == identifier.content),
        _ => false,
    }
}

pub(crate) fn digest_from_oid(oid_content: &[u8]) -> Option<MicAlgorithm> {
    oid::DIGESTS
        .iter()
        .find(|(_, o)| *o == oid_content)
        .map(|(alg, _)| *alg)
}

pub(crate) fn digest_oid(algorithm: MicAlgorithm) -> &'static [u8] {
    oid::DIGESTS
        .iter()
        .find(|(alg, _)| *alg == algorithm)
        .map(|(_, o)| *o)
        .unwrap_or(oid::SHA256)
}

/// Reads the parameters of an algorithm whose parameters are a hash AlgorithmIdentifier
/// (MGF1), defaulting to SHA-1.
pub(crate) fn hash_in_parameters(parameters: Option<&Element<'_>>) -> Result<MicAlgorithm> {
    let Some(parameters) = parameters else {
        return Ok(MicAlgorithm::Sha1);
    };
    let mut reader = Reader::new(parameters.raw);
    let (oid, _) = read_algorithm(&mut reader, "hash algorithm")?;
    digest_from_oid(oid)
        .ok_or_else(|| As2Error::UnsupportedAlgorithm("unknown hash in parameters".into()))
}

/// The (hash, mgf1-hash) parameters shared by RSASSA-PSS and RSAES-OAEP, plus the raw
/// remaining fields for the caller.
pub(crate) struct RsaParameters<'a> {
    pub hash: MicAlgorithm,
    pub mgf1_hash: MicAlgorithm,
    pub rest: Vec<Element<'a>>,
}

pub(crate) fn read_rsa_parameters<'a>(
    parameters: Option<&Element<'a>>,
) -> Result<RsaParameters<'a>> {
    let mut result = RsaParameters {
        hash: MicAlgorithm::Sha1,
        mgf1_hash: MicAlgorithm::Sha1,
        rest: Vec::new(),
    };
    let Some(parameters) = parameters else {
        return Ok(result);
    };
    let mut fields = parameters.children();
    while let Some(field) = fields.next()? {
        let inner = field.children().next()?;
        match (field.tag, inner) {
            (0xa0, Some(inner)) => result.hash = hash_in_parameters(Some(&inner))?,
            (0xa1, Some(inner)) => {
                let mut reader = Reader::new(inner.raw);
                let (mgf, mgf_parameters) = read_algorithm(&mut reader, "mask generation")?;
                if mgf != oid::MGF1 {
                    return Err(As2Error::UnsupportedAlgorithm(
                        "mask generation other than MGF1".into(),
                    ));
                }
                result.mgf1_hash = hash_in_parameters(mgf_parameters.as_ref())?;
            }
            _ => result.rest.push(field),
        }
    }
    Ok(result)
}

/// Encodes (hash, MGF1(hash)) RSA parameters, leaving out SHA-1 defaults, followed by
/// `extra` fields.
pub(crate) fn write_rsa_parameters(hash: MicAlgorithm, extra: &[&[u8]]) -> Vec<u8> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    if hash != MicAlgorithm::Sha1 {
        let hash_algorithm = der::algorithm(digest_oid(hash), None);
        fields.push(der::context(0, &hash_algorithm));
        let mgf1 = der::algorithm(oid::MGF1, Some(&hash_algorithm));
        fields.push(der::context(1, &mgf1));
    }
    fields.extend(extra.iter().map(|e| e.to_vec()));
    der::encode(der::TAG_SEQUENCE, &fields.concat())
}

/// Checks that `certificate` is within its validity period now.
pub(crate) fn check_validity(certificate: &X509) -> Result<()> {
    let now = openssl::asn1::Asn1Time::days_from_now(0)?;
    if certificate.not_before() > now {
        return Err(As2Error::AuthenticationFailed(
            "certificate is not yet valid".into(),
        ));
    }
    if certificate.not_after() < now {
        return Err(As2Error::AuthenticationFailed(
            "certificate has expired".into(),
        ));
    }
    Ok(())
}
