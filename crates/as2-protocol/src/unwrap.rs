//! The inbound pipeline: decrypt, decompress, verify, decompress, in whatever layering
//! arrives (RFC 5402: compression inside or outside the signature, each layer once).

use openssl::x509::X509;

use crate::cms::{self, ContentCipher, Identity, KeyTransport, SignatureScheme, VerifyOptions};
use crate::error::{As2Error, Result};
use crate::headers::{As2RequestHeaders, DispositionNotificationOptions, MicAlgorithm};
use crate::mic::{self, ReceivedContentMic};
use crate::mime::{self, Entity, HeaderField, MimeLimits};

/// Bounds on what one message may make us do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest decompressed content, in bytes (decompression bombs fail beyond it).
    pub max_decompressed_size: usize,
    /// Most MIME/CMS layers followed (sign, encrypt and compress take one each).
    pub max_layers: usize,
    /// MIME parser limits.
    pub mime: MimeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_decompressed_size: 256 * 1024 * 1024,
            max_layers: 8,
            mime: MimeLimits::default(),
        }
    }
}

/// Keys, certificates and policy for unwrapping the messages of one partnership.
#[derive(Clone, Copy, Debug)]
pub struct UnwrapContext<'a> {
    /// Our private keys with their certificates (several during a key rotation).
    pub decryption_identities: &'a [Identity],
    /// The partner's signing certificates (several during a certificate rotation).
    pub partner_certificates: &'a [X509],
    /// Resource limits.
    pub limits: Limits,
    /// Accept MD5 signatures and MICs.
    pub allow_md5: bool,
    /// Reject partner certificates outside their validity period (some partners keep
    /// using expired certificates; the partnership decides).
    pub check_certificate_validity: bool,
    /// Fail with insufficient-message-security when the message is not signed.
    pub require_signature: bool,
    /// Fail with insufficient-message-security when the message is not encrypted.
    pub require_encryption: bool,
}

impl<'a> UnwrapContext<'a> {
    /// A context with default limits, validity checks on, MD5 off and no requirements.
    pub fn new(decryption_identities: &'a [Identity], partner_certificates: &'a [X509]) -> Self {
        Self {
            decryption_identities,
            partner_certificates,
            limits: Limits::default(),
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: false,
            require_encryption: false,
        }
    }

    pub(crate) fn verify_options(&self) -> VerifyOptions<'a> {
        VerifyOptions {
            certificates: self.partner_certificates,
            allow_md5: self.allow_md5,
            check_validity: self.check_certificate_validity,
        }
    }
}

/// The business document carried by a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Its Content-Type header value.
    pub content_type: String,
    /// The filename from Content-Disposition, when given.
    pub filename: Option<String>,
    /// The document after transfer decoding.
    pub data: Vec<u8>,
}

/// Which bytes a verified signature covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedContentForm {
    /// The exact bytes received (the normal case).
    Exact,
    /// The received bytes with bare-LF header lines turned into CRLF (a transport or
    /// capture altered the line ends of the headers).
    CrlfHeaders,
    /// The received bytes with every bare LF turned into CRLF.
    CrlfEverywhere,
}

/// Facts about a verified signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureFacts {
    /// The signer's digest algorithm.
    pub digest: MicAlgorithm,
    /// PKCS #1 v1.5 or PSS.
    pub scheme: SignatureScheme,
    /// Index into [`UnwrapContext::partner_certificates`] of the certificate that verified.
    pub certificate_index: usize,
    /// Whether it was an opaque SignedData rather than multipart/signed.
    pub opaque: bool,
    /// Which form of the signed bytes verified.
    pub form: SignedContentForm,
}

/// Facts about the encryption layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncryptionFacts {
    /// The content cipher.
    pub cipher: ContentCipher,
    /// The key transport.
    pub key_transport: KeyTransport,
    /// Index into [`UnwrapContext::decryption_identities`] of the key that decrypted.
    pub identity_index: usize,
}

/// Where compression sat relative to the signature (RFC 5402).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionPlacement {
    /// Compressed, then signed: the signature covers the compressed entity.
    BeforeSigning,
    /// Signed, then compressed: the compressed entity holds the signed message.
    AfterSigning,
    /// Compressed, no signature.
    Unsigned,
}

/// How the message was protected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityFacts {
    /// The signature, when signed.
    pub signature: Option<SignatureFacts>,
    /// The encryption, when encrypted.
    pub encryption: Option<EncryptionFacts>,
    /// The compression, when compressed.
    pub compression: Option<CompressionPlacement>,
}

/// The result of unwrapping a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwrappedMessage {
    /// The business document.
    pub payload: Payload,
    /// How it was protected.
    pub facts: SecurityFacts,
    /// The MIC to return in the MDN.
    pub mic: ReceivedContentMic,
}

/// Unwraps an AS2 message: `headers` are the request's headers (Content-Type and
/// Disposition-Notification-Options matter here) and `body` the exact request body.
///
/// The MIC uses the first MIC algorithm the partner requested that we support, else the
/// signature's digest, else SHA-1; a `required` request we cannot honour fails with
/// [`As2Error::UnsupportedMicAlgorithms`] before any cryptography is done.
pub fn unwrap_message(
    headers: &As2RequestHeaders,
    body: &[u8],
    context: &UnwrapContext<'_>,
) -> Result<UnwrappedMessage> {
    let content_type = headers
        .content_type
        .as_deref()
        .ok_or(As2Error::MissingHeader("Content-Type"))?;
    let mut fields = vec![HeaderField {
        name: "Content-Type".into(),
        value: content_type.to_owned(),
    }];
    let optional = [
        (
            "Content-Transfer-Encoding",
            &headers.content_transfer_encoding,
        ),
        ("Content-Disposition", &headers.content_disposition),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            fields.push(HeaderField {
                name: name.to_owned(),
                value: value.clone(),
            });
        }
    }
    let entity = Entity::from_parts(fields, body);
    unwrap_entity(
        &entity,
        headers.disposition_notification_options.as_ref(),
        context,
    )
}

/// Unwraps a message given as a MIME entity (for callers that already hold one).
pub fn unwrap_entity(
    entity: &Entity<'_>,
    requested: Option<&DispositionNotificationOptions>,
    context: &UnwrapContext<'_>,
) -> Result<UnwrappedMessage> {
    let requested_algorithm = match requested {
        Some(options) => options.choose_mic_algorithm(context.allow_md5)?,
        None => None,
    };
    let mut walk = Walk {
        context,
        facts: SecurityFacts::default(),
        mic_content: MicContent::default(),
        layers: 0,
    };
    let mut payload = walk.entity(entity)?;
    if payload.filename.is_none() {
        payload.filename = entity.filename().filter(|name| !is_smime_filename(name));
    }
    if context.require_encryption && walk.facts.encryption.is_none() {
        return Err(As2Error::InsufficientMessageSecurity(
            "the partnership requires encryption".into(),
        ));
    }
    if context.require_signature && walk.facts.signature.is_none() {
        return Err(As2Error::InsufficientMessageSecurity(
            "the partnership requires a signature".into(),
        ));
    }
    let signature_digest = walk.facts.signature.as_ref().map(|s| s.digest);
    let algorithm = requested_algorithm.map_or_else(
        || mic::choose_mic_algorithm(None, signature_digest, context.allow_md5),
        Ok,
    )?;
    let mic_bytes = walk.mic_content.select(entity.body());
    let mic = ReceivedContentMic::compute(algorithm, mic_bytes)?;
    Ok(UnwrappedMessage {
        payload,
        facts: walk.facts,
        mic,
    })
}

fn is_smime_filename(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".p7m", ".p7s", ".p7z", ".p7c"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// The candidate contents for the MIC, kept as the walk passes each layer.
#[derive(Default)]
struct MicContent {
    signed: Option<Vec<u8>>,
    decompressed: Option<Vec<u8>>,
    decrypted: Option<Vec<u8>>,
}

impl MicContent {
    fn select<'s>(&'s self, body: &'s [u8]) -> &'s [u8] {
        self.signed
            .as_deref()
            .or(self.decompressed.as_deref())
            .or(self.decrypted.as_deref())
            .unwrap_or(body)
    }
}

struct Walk<'c> {
    context: &'c UnwrapContext<'c>,
    facts: SecurityFacts,
    mic_content: MicContent,
    layers: usize,
}

/// The kind of an application/pkcs7-mime body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SmimeKind {
    Enveloped,
    Signed,
    Compressed,
}

impl Walk<'_> {
    fn entity(&mut self, entity: &Entity<'_>) -> Result<Payload> {
        self.layers += 1;
        if self.layers > self.context.limits.max_layers {
            return Err(As2Error::LimitExceeded("too many nested layers".into()));
        }
        let content_type = entity.content_type();
        if content_type.is("application/pkcs7-mime") || content_type.is("application/x-pkcs7-mime")
        {
            let der = entity.decoded_body()?;
            return match smime_kind(content_type.param("smime-type"), &der)? {
                SmimeKind::Enveloped => self.decrypt(&der),
                SmimeKind::Compressed => self.decompress(&der),
                SmimeKind::Signed => self.verify_opaque(&der),
            };
        }
        if content_type.is("multipart/signed") {
            return self.verify_multipart(entity);
        }
        if content_type.is("application/pkcs7-signature")
            || content_type.is("application/x-pkcs7-signature")
        {
            return Err(As2Error::UnsupportedFormat(
                "a detached signature without its content".into(),
            ));
        }
        Ok(Payload {
            content_type: entity
                .header("Content-Type")
                .unwrap_or("text/plain")
                .to_owned(),
            filename: entity.filename(),
            data: entity.decoded_body()?.into_owned(),
        })
    }

    fn decrypt(&mut self, der: &[u8]) -> Result<Payload> {
        if self.facts.encryption.is_some() {
            return Err(As2Error::UnsupportedFormat(
                "encrypted more than once".into(),
            ));
        }
        if self.facts.signature.is_some() {
            // Encryption inside a signature is legal S/MIME but not an AS2 layering.
            return Err(As2Error::UnsupportedFormat(
                "encryption inside the signature".into(),
            ));
        }
        let decrypted = cms::decrypt(der, self.context.decryption_identities)?;
        self.facts.encryption = Some(EncryptionFacts {
            cipher: decrypted.cipher,
            key_transport: decrypted.key_transport,
            identity_index: decrypted.identity_index,
        });
        let content = decrypted.content;
        let inner = parse_inner(&content, &self.context.limits.mime)?;
        let payload = self.entity(&inner)?;
        self.mic_content.decrypted = Some(content);
        Ok(payload)
    }

    fn decompress(&mut self, der: &[u8]) -> Result<Payload> {
        if self.facts.compression.is_some() {
            return Err(As2Error::UnsupportedFormat(
                "compressed more than once".into(),
            ));
        }
        let placement = match self.facts.signature {
            Some(_) => CompressionPlacement::BeforeSigning,
            None => CompressionPlacement::Unsigned,
        };
        self.facts.compression = Some(placement);
        let content = cms::decompress(der, self.context.limits.max_decompressed_size)?;
        let inner = parse_inner(&content, &self.context.limits.mime)?;
        let payload = self.entity(&inner)?;
        self.mic_content.decompressed = Some(content);
        Ok(payload)
    }

    fn record_signature(&mut self, facts: SignatureFacts, signed_content: Vec<u8>) -> Result<()> {
        if self.facts.signature.is_some() {
            return Err(As2Error::UnsupportedFormat("signed more than once".into()));
        }
        if self.facts.compression == Some(CompressionPlacement::Unsigned) {
            self.facts.compression = Some(CompressionPlacement::AfterSigning);
        }
        self.facts.signature = Some(facts);
        self.mic_content.signed = Some(signed_content);
        Ok(())
    }

    fn verify_opaque(&mut self, der: &[u8]) -> Result<Payload> {
        if self.facts.signature.is_some() {
            return Err(As2Error::UnsupportedFormat("signed more than once".into()));
        }
        let (verified, content) = cms::verify_opaque(der, &self.context.verify_options())?;
        let facts = SignatureFacts {
            digest: verified.digest,
            scheme: verified.scheme,
            certificate_index: verified.certificate_index,
            opaque: true,
            form: SignedContentForm::Exact,
        };
        self.record_signature(facts, content.clone())?;
        let inner = parse_inner(&content, &self.context.limits.mime)?;
        self.entity(&inner)
    }

    fn verify_multipart(&mut self, entity: &Entity<'_>) -> Result<Payload> {
        if self.facts.signature.is_some() {
            return Err(As2Error::UnsupportedFormat("signed more than once".into()));
        }
        let verified = verify_multipart_signed(
            entity,
            &self.context.verify_options(),
            &self.context.limits.mime,
        )?;
        let inner = parse_inner(&verified.signed_bytes, &self.context.limits.mime)?;
        let signed_bytes = verified.signed_bytes.clone();
        self.record_signature(verified.facts, signed_bytes)?;
        self.entity(&inner)
    }
}

/// Parses content found inside a CMS layer. It should be a MIME entity; content without
/// a Content-Type header (some products encrypt the bare document) is taken whole as
/// the body, so that no document line is mistaken for a header field.
fn parse_inner<'a>(content: &'a [u8], limits: &MimeLimits) -> Result<Entity<'a>> {
    let entity = Entity::parse(content, limits)?;
    if entity.header("Content-Type").is_some() {
        return Ok(entity);
    }
    Ok(Entity::from_parts(Vec::new(), content))
}

fn smime_kind(smime_type: Option<&str>, der: &[u8]) -> Result<SmimeKind> {
    let declared = smime_type.map(str::to_ascii_lowercase);
    match declared.as_deref() {
        Some("enveloped-data" | "authenveloped-data") => return Ok(SmimeKind::Enveloped),
        Some("compressed-data") => return Ok(SmimeKind::Compressed),
        Some("signed-data") => return Ok(SmimeKind::Signed),
        _ => {}
    }
    // No (or an unknown) smime-type: look at the CMS content type itself.
    let info = cms::parse_content_info(der)?;
    match info.content_type {
        t if t == cms::oid::ENVELOPED_DATA || t == cms::oid::AUTH_ENVELOPED_DATA => {
            Ok(SmimeKind::Enveloped)
        }
        t if t == cms::oid::COMPRESSED_DATA => Ok(SmimeKind::Compressed),
        t if t == cms::oid::SIGNED_DATA => Ok(SmimeKind::Signed),
        _ => Err(As2Error::UnsupportedFormat(
            "unknown application/pkcs7-mime content".into(),
        )),
    }
}

/// A verified multipart/signed entity.
pub(crate) struct VerifiedMultipart {
    pub facts: SignatureFacts,
    /// The signed entity in the form the signature covers.
    pub signed_bytes: Vec<u8>,
}

/// Verifies a multipart/signed entity over the exact received bytes of its first part,
/// falling back to CRLF-canonical forms only when the exact bytes do not match the
/// signed digest (a capture or proxy rewrote line ends).
pub(crate) fn verify_multipart_signed(
    entity: &Entity<'_>,
    options: &VerifyOptions<'_>,
    limits: &MimeLimits,
) -> Result<VerifiedMultipart> {
    let multipart = entity.multipart(limits)?;
    let mut parts = multipart.parts.iter();
    let signed = parts
        .next()
        .ok_or_else(|| As2Error::mime("multipart/signed without parts"))?;
    let signature_part = parts
        .find(|part| {
            let content_type = part.content_type();
            content_type.is("application/pkcs7-signature")
                || content_type.is("application/x-pkcs7-signature")
        })
        .ok_or_else(|| {
            As2Error::UnsupportedFormat("multipart/signed without a PKCS #7 signature part".into())
        })?;
    let signature = signature_part.decoded_body()?;
    let (form, signed_bytes, verified) =
        match cms::verify_detached(&signature, &[signed.raw()], options) {
            Ok((verified, _)) => (SignedContentForm::Exact, signed.raw().to_vec(), verified),
            // Only when the exact bytes fail (their digest does not match the signed one,
            // or, without signed attributes, the signature does not verify over them) are
            // other forms tried.
            Err(
                exact_error @ (As2Error::IntegrityCheckFailed(_)
                | As2Error::AuthenticationFailed(_)),
            ) => {
                let candidates = canonical_candidates(signed);
                let candidate_refs: Vec<&[u8]> = candidates
                    .iter()
                    .map(|(_, bytes)| bytes.as_slice())
                    .collect();
                // When no other form verifies either, the exact bytes' failure is the one
                // to report.
                let Ok((verified, index)) =
                    cms::verify_detached(&signature, &candidate_refs, options)
                else {
                    return Err(exact_error);
                };
                let (form, bytes) = candidates.into_iter().nth(index).ok_or(exact_error)?;
                (form, bytes, verified)
            }
            Err(error) => return Err(error),
        };
    let facts = SignatureFacts {
        digest: verified.digest,
        scheme: verified.scheme,
        certificate_index: verified.certificate_index,
        opaque: false,
        form,
    };
    Ok(VerifiedMultipart {
        facts,
        signed_bytes,
    })
}

/// CRLF-canonical forms of the signed entity that differ from the received bytes.
fn canonical_candidates(signed: &Entity<'_>) -> Vec<(SignedContentForm, Vec<u8>)> {
    let raw = signed.raw();
    let header_length = raw.len().saturating_sub(signed.body().len());
    let (header_block, body) = raw.split_at(header_length.min(raw.len()));
    let mut candidates = Vec::new();
    let crlf_headers = [mime::to_crlf(header_block).as_ref(), body].concat();
    if crlf_headers != raw {
        candidates.push((SignedContentForm::CrlfHeaders, crlf_headers));
    }
    let crlf_everywhere = mime::to_crlf(raw);
    if crlf_everywhere.as_ref() != raw
        && candidates
            .iter()
            .all(|(_, c)| c.as_slice() != crlf_everywhere.as_ref())
    {
        candidates.push((
            SignedContentForm::CrlfEverywhere,
            crlf_everywhere.into_owned(),
        ));
    }
    candidates
}
