//! SignedData: detached and opaque, RSA PKCS #1 v1.5 and RSA-PSS.

use openssl::md::{Md, MdRef};
use openssl::pkey::{PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer};
use openssl::x509::X509;

use super::{Identity, SignatureScheme, oid};
use crate::der::{self, Element};
use crate::error::{As2Error, Result};
use crate::headers::MicAlgorithm;
use crate::stream::digests::ContentDigests;

/// Which partner certificates to try and how strictly.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions<'a> {
    /// Candidate signer certificates (several during a certificate rotation).
    pub certificates: &'a [X509],
    /// Accept MD5 digests.
    pub allow_md5: bool,
    /// Reject certificates outside their validity period.
    pub check_validity: bool,
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The signer's digest algorithm.
    pub digest: MicAlgorithm,
    /// The signature scheme.
    pub scheme: SignatureScheme,
    /// Index into [`VerifyOptions::certificates`] of the certificate that verified.
    pub certificate_index: usize,
}

/// How to sign.
#[derive(Clone, Copy, Debug)]
pub struct SignOptions<'a> {
    /// Our key and certificate.
    pub signer: &'a Identity,
    /// The digest algorithm.
    pub digest: MicAlgorithm,
    /// PKCS #1 v1.5 or PSS.
    pub scheme: SignatureScheme,
    /// Leave the content out of the SignedData (for multipart/signed).
    pub detached: bool,
}

pub(crate) struct SignerInfo<'a> {
    identifier: Element<'a>,
    digest: Option<MicAlgorithm>,
    signed_attributes: Option<Element<'a>>,
    signature_algorithm: &'a [u8],
    signature_parameters: Option<Element<'a>>,
    signature: std::borrow::Cow<'a, [u8]>,
}

/// Most SignerInfos read from one SignedData.
const MAX_SIGNERS: usize = 16;

/// Reads the signerInfos SET (its raw bytes, as the streaming reader captured them).
pub(crate) fn parse_signer_set(raw: &[u8]) -> Result<Vec<SignerInfo<'_>>> {
    let set = der::parse_single(raw)?;
    let mut signer_infos = Vec::new();
    let mut signers = set.children();
    while let Some(signer) = signers.next()? {
        if signer_infos.len() >= MAX_SIGNERS {
            return Err(As2Error::LimitExceeded("too many SignerInfos".into()));
        }
        signer_infos.push(parse_signer_info(&signer)?);
    }
    Ok(signer_infos)
}

/// The digest algorithms the signers used (those we know).
pub(crate) fn signer_digests(signer_infos: &[SignerInfo<'_>]) -> Vec<MicAlgorithm> {
    signer_infos.iter().filter_map(|s| s.digest).collect()
}

fn parse_signer_info<'a>(element: &Element<'a>) -> Result<SignerInfo<'a>> {
    let mut fields = element.children();
    fields.expect(der::TAG_INTEGER, "SignerInfo version")?;
    let identifier = fields
        .next()?
        .ok_or_else(|| As2Error::cms("missing signer identifier"))?;
    let (digest_oid, _) = super::read_algorithm(&mut fields, "digestAlgorithm")?;
    let signed_attributes = fields.optional(0xa0)?;
    let (signature_algorithm, signature_parameters) =
        super::read_algorithm(&mut fields, "signatureAlgorithm")?;
    let signature = fields
        .next()?
        .ok_or_else(|| As2Error::cms("missing signature"))?;
    if signature.tag & !0x20 != der::TAG_OCTET_STRING {
        return Err(As2Error::cms("signature is not an OCTET STRING"));
    }
    Ok(SignerInfo {
        identifier,
        digest: super::digest_from_oid(digest_oid),
        signed_attributes,
        signature_algorithm,
        signature_parameters,
        signature: signature.octets()?,
    })
}

/// Verifies a detached signature over the first of `candidates` whose digest matches.
///
/// `candidates` are forms of the signed content, in order of preference: the exact
/// received bytes first, then canonicalized fallbacks. Returns the verification facts and
/// the index of the candidate that verified.
pub fn verify_detached(
    signature: &[u8],
    candidates: &[&[u8]],
    options: &VerifyOptions<'_>,
) -> Result<(VerifiedSignature, usize)> {
    let (signer_set, _) = super::stream::read_signed_data(signature, None, false)?;
    let signer_infos = parse_signer_set(&signer_set)?;
    let algorithms = signer_digests(&signer_infos);
    let digests = candidates
        .iter()
        .map(|candidate| ContentDigests::of(candidate, algorithms.iter().copied()))
        .collect::<Result<Vec<_>>>()?;
    verify_signers(&signer_infos, &digests, options)
}

/// Verifies an opaque (enveloping) SignedData and returns the facts and the content.
pub fn verify_opaque(
    data: &[u8],
    options: &VerifyOptions<'_>,
) -> Result<(VerifiedSignature, Vec<u8>)> {
    let (signer_set, content) = super::stream::read_signed_data(data, None, true)?;
    let (content, digests) = content
        .ok_or_else(|| As2Error::UnsupportedFormat("opaque SignedData without content".into()))?;
    let signer_infos = parse_signer_set(&signer_set)?;
    let (verified, _) = verify_signers(&signer_infos, &[digests], options)?;
    Ok((verified, content))
}

/// Verifies the signers against the digests of the candidate contents (computed as the
/// content streamed past); returns the facts and the index of the candidate that
/// verified.
pub(crate) fn verify_signers(
    signer_infos: &[SignerInfo<'_>],
    candidates: &[ContentDigests],
    options: &VerifyOptions<'_>,
) -> Result<(VerifiedSignature, usize)> {
    let mut last_error = As2Error::AuthenticationFailed("no SignerInfo".into());
    for signer in signer_infos {
        match verify_signer(signer, candidates, options) {
            Ok(result) => return Ok(result),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

fn verify_signer(
    signer: &SignerInfo<'_>,
    candidates: &[ContentDigests],
    options: &VerifyOptions<'_>,
) -> Result<(VerifiedSignature, usize)> {
    let digest = signer.digest.ok_or_else(|| {
        As2Error::UnsupportedAlgorithm("unknown signature digest algorithm".into())
    })?;
    if digest == MicAlgorithm::Md5 && !options.allow_md5 {
        return Err(As2Error::UnsupportedAlgorithm(
            "MD5 signatures are not allowed for this partner".into(),
        ));
    }
    let scheme = signature_scheme(signer)?;
    // With signed attributes the signature covers them (and they carry the content's
    // digest); without, it covers the content itself.
    let covered = match &signer.signed_attributes {
        Some(attributes) => Some((
            set_tagged(attributes),
            matching_candidate(attributes, digest, candidates)?,
        )),
        None => None,
    };
    let certificate_order = certificate_order(&signer.identifier, options.certificates);
    let mut last_error = As2Error::AuthenticationFailed("no partner certificate configured".into());
    for index in certificate_order {
        let Some(certificate) = options.certificates.get(index) else {
            continue;
        };
        if options.check_validity
            && let Err(error) = super::check_validity(certificate)
        {
            last_error = error;
            continue;
        }
        let public_key = certificate.public_key()?;
        let facts = VerifiedSignature {
            digest,
            scheme,
            certificate_index: index,
        };
        let found = match &covered {
            Some((attributes, index)) => {
                verify_with_key(&public_key, scheme, digest, signer, attributes)?.then_some(*index)
            }
            None => candidates.iter().position(|candidate| {
                candidate.get(digest).is_some_and(|value| {
                    verify_digest_with_key(&public_key, scheme, digest, signer, value)
                        .unwrap_or(false)
                })
            }),
        };
        if let Some(index) = found {
            return Ok((facts, index));
        }
        last_error = As2Error::AuthenticationFailed(
            "signature does not verify with the partner certificate".into(),
        );
    }
    Err(last_error)
}

/// Tries the certificates the SignerIdentifier names first, then the others (a partner
/// may re-issue a certificate for the same key).
fn certificate_order(identifier: &Element<'_>, certificates: &[X509]) -> Vec<usize> {
    let (mut named, others): (Vec<usize>, Vec<usize>) = (0..certificates.len()).partition(|i| {
        certificates
            .get(*i)
            .is_some_and(|c| super::identifies(identifier, c))
    });
    named.extend(others);
    named
}

fn signature_scheme(signer: &SignerInfo<'_>) -> Result<SignatureScheme> {
    if signer.signature_algorithm == oid::RSASSA_PSS {
        return Ok(SignatureScheme::RsaPss);
    }
    if signer.signature_algorithm == oid::RSA_ENCRYPTION
        || oid::RSA_WITH_DIGEST.contains(&signer.signature_algorithm)
    {
        return Ok(SignatureScheme::RsaPkcs1v15);
    }
    Err(As2Error::UnsupportedAlgorithm(
        "signature algorithm other than RSA".into(),
    ))
}

/// Verifies a signature over `data` (the DER signed attributes).
fn verify_with_key(
    key: &PKey<Public>,
    scheme: SignatureScheme,
    digest: MicAlgorithm,
    signer: &SignerInfo<'_>,
    data: &[u8],
) -> Result<bool> {
    verify_digest_with_key(key, scheme, digest, signer, &digest.digest(data)?)
}

/// Verifies a signature over a digest: the content's, when the signer used no signed
/// attributes.
fn verify_digest_with_key(
    key: &PKey<Public>,
    scheme: SignatureScheme,
    digest: MicAlgorithm,
    signer: &SignerInfo<'_>,
    value: &[u8],
) -> Result<bool> {
    let mut context = PkeyCtx::new(key)?;
    context.verify_init()?;
    context.set_signature_md(md(digest))?;
    if scheme == SignatureScheme::RsaPss {
        let (mgf1_hash, salt_length) = pss_parameters(signer, digest)?;
        context.set_rsa_padding(Padding::PKCS1_PSS)?;
        context.set_rsa_pss_saltlen(RsaPssSaltlen::custom(salt_length))?;
        context.set_rsa_mgf1_md(md(mgf1_hash))?;
    } else {
        context.set_rsa_padding(Padding::PKCS1)?;
    }
    // A malformed signature is a failed verification, not an internal error.
    Ok(context.verify(value, &signer.signature).unwrap_or(false))
}

fn md(algorithm: MicAlgorithm) -> &'static MdRef {
    match algorithm {
        MicAlgorithm::Md5 => Md::md5(),
        MicAlgorithm::Sha1 => Md::sha1(),
        MicAlgorithm::Sha224 => Md::sha224(),
        MicAlgorithm::Sha256 => Md::sha256(),
        MicAlgorithm::Sha384 => Md::sha384(),
        MicAlgorithm::Sha512 => Md::sha512(),
    }
}

/// The MGF1 hash and salt length of a PSS signature. Absent parameters would mean the
/// SHA-1 defaults, but some writers (asn1crypto/oscrypto, hence pyas2lib) leave them out
/// while signing with the digest algorithm, MGF1 over it and a salt of its length; that
/// reading is the one that can verify, so it is used.
fn pss_parameters(signer: &SignerInfo<'_>, digest: MicAlgorithm) -> Result<(MicAlgorithm, i32)> {
    let Some(parameters) = signer.signature_parameters.as_ref() else {
        let salt_length = i32::try_from(digest.message_digest().size()).unwrap_or(20);
        return Ok((digest, salt_length));
    };
    let parameters = super::read_rsa_parameters(Some(parameters))?;
    if parameters.hash != digest {
        return Err(As2Error::AuthenticationFailed(
            "PSS hash differs from the digest algorithm".into(),
        ));
    }
    Ok((parameters.mgf1_hash, pss_salt_length(&parameters.rest)?))
}

fn pss_salt_length(rest: &[Element<'_>]) -> Result<i32> {
    let Some(field) = rest.iter().find(|f| f.tag == 0xa2) else {
        return Ok(20);
    };
    let value = field
        .children()
        .next()?
        .ok_or_else(|| As2Error::cms("empty PSS salt length"))?
        .small_uint()?;
    i32::try_from(value).map_err(|_| As2Error::cms("PSS salt length out of range"))
}

/// Signed attributes are covered by the signature with a SET OF tag instead of `[0]`.
fn set_tagged(attributes: &Element<'_>) -> Vec<u8> {
    let mut bytes = attributes.raw.to_vec();
    if let Some(tag) = bytes.first_mut() {
        *tag = der::TAG_SET;
    }
    bytes
}

/// Finds the candidate content whose digest equals the messageDigest attribute.
fn matching_candidate(
    attributes: &Element<'_>,
    digest: MicAlgorithm,
    candidates: &[ContentDigests],
) -> Result<usize> {
    let expected = attribute_value(attributes, oid::ATTR_MESSAGE_DIGEST)?.ok_or_else(|| {
        As2Error::AuthenticationFailed("signed attributes lack messageDigest".into())
    })?;
    let expected = expected.octets()?;
    if candidates.iter().all(|c| c.get(digest).is_none()) {
        return Err(As2Error::IntegrityCheckFailed(format!(
            "the content was not digested with the signer's algorithm {digest} (the micalg \
             parameter names others)"
        )));
    }
    for (index, candidate) in candidates.iter().enumerate() {
        if candidate.get(digest) == Some(&*expected) {
            return Ok(index);
        }
    }
    Err(As2Error::IntegrityCheckFailed(
        "content digest does not match the signed messageDigest".into(),
    ))
}

fn attribute_value<'a>(attributes: &Element<'a>, wanted: &[u8]) -> Result<Option<Element<'a>>> {
    let mut reader = attributes.children();
    while let Some(attribute) = reader.next()? {
        let mut fields = attribute.children();
        let attribute_type = fields.expect(der::TAG_OID, "attribute type")?;
        if attribute_type.content != wanted {
            continue;
        }
        let values = fields.expect(der::TAG_SET, "attribute values")?;
        return values.children().next();
    }
    Ok(None)
}

/// Signs `content` and returns the DER ContentInfo(SignedData).
pub fn sign(content: &[u8], options: &SignOptions<'_>) -> Result<Vec<u8>> {
    let message_digest = options.digest.digest(content)?;
    let encapsulated = (!options.detached).then_some(content);
    signed_data(&message_digest, options, encapsulated)
}

/// A detached SignedData (DER ContentInfo) over content whose digest with
/// `options.digest` was computed elsewhere (as the content streamed past);
/// `options.detached` is not consulted.
pub(crate) fn sign_digest(message_digest: &[u8], options: &SignOptions<'_>) -> Result<Vec<u8>> {
    signed_data(message_digest, options, None)
}

/// The SignedData with signed attributes carrying `message_digest`, and the content
/// encapsulated when given.
fn signed_data(
    message_digest: &[u8],
    options: &SignOptions<'_>,
    content: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let digest = options.digest;
    if message_digest.len() != digest.message_digest().size() {
        return Err(As2Error::InvalidArgument(format!(
            "a {digest} digest is {} bytes, not {}",
            digest.message_digest().size(),
            message_digest.len()
        )));
    }
    let digest_algorithm = der::algorithm(super::digest_oid(digest), None);
    let attributes = [
        attribute(oid::ATTR_CONTENT_TYPE, &der::oid(oid::DATA)),
        attribute(oid::ATTR_SIGNING_TIME, &signing_time()?),
        attribute(oid::ATTR_MESSAGE_DIGEST, &der::octet_string(message_digest)),
    ];
    let attribute_refs: Vec<&[u8]> = attributes.iter().map(Vec::as_slice).collect();
    let signed_attributes = der::set_of(&attribute_refs);
    let signature = compute_signature(options, &signed_attributes)?;
    let mut implicit_attributes = signed_attributes;
    if let Some(tag) = implicit_attributes.first_mut() {
        *tag = 0xa0;
    }
    let signer_info = der::sequence(&[
        &der::small_integer(1),
        &super::issuer_and_serial(&options.signer.certificate)?,
        &digest_algorithm,
        &implicit_attributes,
        &signature_algorithm(options.scheme, digest),
        &der::octet_string(&signature),
    ]);
    let encapsulated = match content {
        None => der::sequence(&[&der::oid(oid::DATA)]),
        Some(content) => der::sequence(&[
            &der::oid(oid::DATA),
            &der::context(0, &der::octet_string(content)),
        ]),
    };
    let signed_data = der::sequence(&[
        &der::small_integer(1),
        &der::set_of(&[&digest_algorithm]),
        &encapsulated,
        &der::context(0, &options.signer.certificate.to_der()?),
        &der::set_of(&[&signer_info]),
    ]);
    Ok(super::content_info(oid::SIGNED_DATA, &signed_data))
}

fn compute_signature(options: &SignOptions<'_>, data: &[u8]) -> Result<Vec<u8>> {
    let mut signer = Signer::new(options.digest.message_digest(), &options.signer.key)?;
    if options.scheme == SignatureScheme::RsaPss {
        signer.set_rsa_padding(Padding::PKCS1_PSS)?;
        signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
        signer.set_rsa_mgf1_md(options.digest.message_digest())?;
    }
    Ok(signer.sign_oneshot_to_vec(data)?)
}

fn signature_algorithm(scheme: SignatureScheme, digest: MicAlgorithm) -> Vec<u8> {
    match scheme {
        SignatureScheme::RsaPkcs1v15 => der::algorithm(oid::RSA_ENCRYPTION, Some(&der::null())),
        SignatureScheme::RsaPss => {
            let salt_length = digest.message_digest().size() as u64;
            let salt =
                (salt_length != 20).then(|| der::context(2, &der::small_integer(salt_length)));
            let extra: Vec<&[u8]> = salt.iter().map(Vec::as_slice).collect();
            der::algorithm(
                oid::RSASSA_PSS,
                Some(&super::write_rsa_parameters(digest, &extra)),
            )
        }
    }
}

fn attribute(attribute_type: &[u8], value: &[u8]) -> Vec<u8> {
    der::sequence(&[&der::oid(attribute_type), &der::set_of(&[value])])
}

/// The current time as a UTCTime (`YYMMDDHHMMSSZ`).
fn signing_time() -> Result<Vec<u8>> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = seconds / 86_400;
    let time_of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let text = format!(
        "{:02}{:02}{:02}{:02}{:02}{:02}Z",
        year % 100,
        month,
        day,
        time_of_day / 3600,
        time_of_day % 3600 / 60,
        time_of_day % 60
    );
    Ok(der::encode(der::TAG_UTC_TIME, text.as_bytes()))
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        let material = as2_testkit::certificates::TestCertificate::valid("signer").generate();
        Identity {
            key: material.key,
            certificate: material.certificate,
        }
    }

    #[test]
    fn a_signature_over_a_digest_computed_elsewhere_verifies_over_the_content() {
        let identity = identity();
        let content = b"Content-Type: text/plain\r\n\r\nsigned elsewhere\r\n";
        let options = VerifyOptions {
            certificates: std::slice::from_ref(&identity.certificate),
            allow_md5: false,
            check_validity: true,
        };
        for scheme in [SignatureScheme::RsaPkcs1v15, SignatureScheme::RsaPss] {
            let sign_options = SignOptions {
                signer: &identity,
                digest: MicAlgorithm::Sha384,
                scheme,
                detached: true,
            };
            let digest = MicAlgorithm::Sha384.digest(content).unwrap();
            let detached = sign_digest(&digest, &sign_options).unwrap();
            let (verified, _) = verify_detached(&detached, &[content], &options).unwrap();
            assert_eq!(verified.scheme, scheme);
            assert!(verify_detached(&detached, &[b"other".as_slice()], &options).is_err());
            // The whole-buffer form, detached and opaque, is the same code path.
            let whole = sign(content, &sign_options).unwrap();
            verify_detached(&whole, &[content], &options).unwrap();
            let opaque = SignOptions {
                detached: false,
                ..sign_options
            };
            let (_, inner) = verify_opaque(&sign(content, &opaque).unwrap(), &options).unwrap();
            assert_eq!(inner, content);
        }
        let wrong_length = SignOptions {
            signer: &identity,
            digest: MicAlgorithm::Sha256,
            scheme: SignatureScheme::RsaPkcs1v15,
            detached: true,
        };
        assert!(matches!(
            sign_digest(&[0; 20], &wrong_length),
            Err(As2Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }
}
