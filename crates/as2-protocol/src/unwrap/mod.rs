//! The inbound pipeline: decrypt, decompress, verify, decompress, in whatever layering
//! arrives (RFC 5402: compression inside or outside the signature, each layer once).
//!
//! [`StreamingUnwrap`] takes the body in chunks of any size and hands the document to a
//! [`PayloadSink`] as it comes out of the layers, in memory bounded by the limits below
//! whatever the document's size: MIME boundaries are found across chunk edges, transfer
//! encodings decoded on the way, CMS content decrypted, inflated and digested as it
//! passes, and each digest (signature check and MIC) computed in the same single pass.
//! [`unwrap_message`] is the same pipeline over a whole buffer.
//!
//! A streamed document is only valid once [`StreamingUnwrap::finish`] succeeds: the
//! padding, the GCM tag and the signature come at the end of the message. A sink must
//! hold what it receives as provisional until then.

mod pipeline;

use openssl::x509::X509;

use crate::cms::{self, ContentCipher, Identity, KeyTransport, SignatureScheme, VerifyOptions};
use crate::error::{As2Error, Result};
use crate::headers::{As2RequestHeaders, DispositionNotificationOptions, MicAlgorithm};
use crate::mic::ReceivedContentMic;
use crate::mime::{self, Entity, HeaderField, MimeLimits};

/// The default compression-ratio cap: EDI and XML compress 5 to 50 times; zlib cannot
/// exceed about 1032 to 1, which is what a bomb of zeros reaches.
pub const DEFAULT_MAX_COMPRESSION_RATIO: u64 = 250;

/// Bounds on what one message may make us do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest decompressed content, in bytes (decompression bombs fail beyond it).
    pub max_decompressed_size: usize,
    /// Most decompressed bytes per compressed byte, once past the first MiB (a
    /// decompression bomb fails long before it reaches the size limit).
    pub max_compression_ratio: u64,
    /// Most MIME/CMS layers followed (sign, encrypt and compress take one each).
    pub max_layers: usize,
    /// MIME parser limits.
    pub mime: MimeLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_decompressed_size: 256 * 1024 * 1024,
            max_compression_ratio: DEFAULT_MAX_COMPRESSION_RATIO,
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
    /// Refuse RSA PKCS #1 v1.5 key transport (only RSA-OAEP recipients are opened): a
    /// message with no other recipient fails with insufficient-message-security.
    pub refuse_rsa_pkcs1v15_key_transport: bool,
}

impl<'a> UnwrapContext<'a> {
    /// A context with default limits, validity checks on, MD5 off, no requirements and
    /// every key transport accepted.
    pub fn new(decryption_identities: &'a [Identity], partner_certificates: &'a [X509]) -> Self {
        Self {
            decryption_identities,
            partner_certificates,
            limits: Limits::default(),
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: false,
            require_encryption: false,
            refuse_rsa_pkcs1v15_key_transport: false,
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

impl SignatureFacts {
    pub(crate) fn new(
        verified: &cms::VerifiedSignature,
        opaque: bool,
        form: SignedContentForm,
    ) -> Self {
        Self {
            digest: verified.digest,
            scheme: verified.scheme,
            certificate_index: verified.certificate_index,
            opaque,
            form,
        }
    }
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

/// Where and how the document of a message is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    /// Its Content-Type header value.
    pub content_type: String,
    /// The filename from Content-Disposition, when given.
    pub filename: Option<String>,
}

/// Receives the document while a [`StreamingUnwrap`] finds it.
///
/// What it receives is provisional until [`StreamingUnwrap::finish`] succeeds (a bad
/// signature or padding is found at the end of the message).
pub trait PayloadSink {
    /// The document starts.
    fn start(&mut self, info: &PayloadInfo) -> Result<()>;
    /// The next bytes of the document, transfer decoding removed.
    fn write(&mut self, data: &[u8]) -> Result<()>;
}

impl<T: PayloadSink + ?Sized> PayloadSink for &mut T {
    fn start(&mut self, info: &PayloadInfo) -> Result<()> {
        (**self).start(info)
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        (**self).write(data)
    }
}

impl PayloadSink for Vec<u8> {
    fn start(&mut self, _: &PayloadInfo) -> Result<()> {
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// A message unwrapped by [`StreamingUnwrap`]: everything but the document, which went
/// to the sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamedMessage {
    /// The document's Content-Type and filename.
    pub payload: PayloadInfo,
    /// Bytes of document handed to the sink.
    pub payload_size: u64,
    /// How the message was protected.
    pub facts: SecurityFacts,
    /// The MIC to return in the MDN.
    pub mic: ReceivedContentMic,
}

/// Unwraps a message whose body arrives in chunks.
///
/// Memory stays bounded whatever the body's size: each layer keeps a small carry between
/// chunks, header blocks are held up to [`MimeLimits::max_header_bytes`], small CMS
/// elements (recipients, signer information) up to 1 MiB, and the signature part of a
/// multipart/signed body up to 1 MiB.
///
/// ```no_run
/// # fn example(headers: &as2_protocol::As2RequestHeaders,
/// #            context: &as2_protocol::UnwrapContext<'_>,
/// #            chunks: Vec<Vec<u8>>) -> as2_protocol::Result<()> {
/// use as2_protocol::unwrap::StreamingUnwrap;
/// let mut unwrap = StreamingUnwrap::new(headers, context, Vec::new())?;
/// for chunk in &chunks {
///     unwrap.push(chunk)?;
/// }
/// let (message, document) = unwrap.finish()?;
/// println!("{} bytes, MIC {}", document.len(), message.mic);
/// # Ok(()) }
/// ```
pub struct StreamingUnwrap<'c, S> {
    shared: pipeline::Shared<'c, S>,
    root: pipeline::EntityNode<'c>,
    /// The MIC candidate over the body as received, while no layer gives a better one.
    body_mic: Option<openssl::hash::Hasher>,
    failed: bool,
}

impl<'c, S: PayloadSink> StreamingUnwrap<'c, S> {
    /// Starts unwrapping a message with these request headers (Content-Type and
    /// Disposition-Notification-Options matter here).
    ///
    /// The MIC uses the first MIC algorithm the partner requested that we support, else
    /// the signature's digest, else SHA-1; a `required` request we cannot honour fails
    /// here with [`As2Error::UnsupportedMicAlgorithms`], before any cryptography is done.
    pub fn new(
        headers: &As2RequestHeaders,
        context: &'c UnwrapContext<'c>,
        sink: S,
    ) -> Result<Self> {
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
        Self::with_fields(
            fields,
            headers.disposition_notification_options.as_ref(),
            context,
            sink,
        )
    }

    /// Starts unwrapping an entity whose header fields are given.
    pub fn with_fields(
        fields: Vec<HeaderField>,
        requested: Option<&DispositionNotificationOptions>,
        context: &'c UnwrapContext<'c>,
        sink: S,
    ) -> Result<Self> {
        let requested = match requested {
            Some(options) => options.choose_mic_algorithm(context.allow_md5)?,
            None => None,
        };
        let outer_filename = Entity::from_parts(fields.clone(), &[])
            .filename()
            .filter(|name| !is_smime_filename(name));
        let mut shared = pipeline::Shared::new(context, requested, outer_filename, sink);
        let body_mic = Some(openssl::hash::Hasher::new(
            shared.unsigned_mic_algorithm().message_digest(),
        )?);
        let root = pipeline::EntityNode::with_headers(fields, &mut shared)?;
        Ok(Self {
            shared,
            root,
            body_mic,
            failed: false,
        })
    }

    /// Takes the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) -> Result<()> {
        if self.failed {
            return Err(As2Error::InvalidArgument(
                "the unwrap already failed".into(),
            ));
        }
        let result = self.push_inner(chunk);
        if result.is_err() {
            self.failed = true;
        }
        result.map_err(|error| self.shared.sink_error.take().unwrap_or(error))
    }

    fn push_inner(&mut self, chunk: &[u8]) -> Result<()> {
        if self.shared.best_rank > pipeline::MicRank::Body {
            self.body_mic = None;
        }
        if let Some(hasher) = &mut self.body_mic {
            hasher.update(chunk)?;
        }
        self.root.push(chunk, &mut self.shared)
    }

    /// The end of the body: checks what can only be checked at the end (padding, tag,
    /// signature, the policy's requirements) and returns the message's facts and MIC with
    /// the sink.
    pub fn finish(mut self) -> Result<(StreamedMessage, S)> {
        if self.failed {
            return Err(As2Error::InvalidArgument(
                "the unwrap already failed".into(),
            ));
        }
        let finished = self.root.finish(&mut self.shared);
        if let Err(error) = finished {
            return Err(self.shared.sink_error.take().unwrap_or(error));
        }
        let shared = self.shared;
        let unauthenticated = shared.unauthenticated_plaintext();
        conclude(shared, self.body_mic).map_err(|error| {
            if unauthenticated {
                error.into_decryption_failure()
            } else {
                error
            }
        })
    }
}

/// The checks at the end of a message whose layers all finished: the policy's
/// requirements, the MIC, the document.
///
/// Content decrypted with a CBC cipher and not signed has no authenticated byte: what
/// these checks find about it (it is not signed, it holds no document) may depend on
/// whether a tampered last block happened to end in a valid padding, so their failures
/// are answered as decryption failures too (the caller maps them).
fn conclude<S: PayloadSink>(
    shared: pipeline::Shared<'_, S>,
    body_mic: Option<openssl::hash::Hasher>,
) -> Result<(StreamedMessage, S)> {
    let context = shared.context;
    if context.require_encryption && shared.facts.encryption.is_none() {
        return Err(As2Error::InsufficientMessageSecurity(
            "the partnership requires encryption".into(),
        ));
    }
    if context.require_signature && shared.facts.signature.is_none() {
        return Err(As2Error::InsufficientMessageSecurity(
            "the partnership requires a signature".into(),
        ));
    }
    let best = shared
        .mics
        .iter()
        .max_by_key(|(rank, ..)| *rank)
        .map(|(_, digest, algorithm)| (digest.clone(), *algorithm));
    let (digest, algorithm) = match (best, body_mic) {
        (Some(best), _) => best,
        (None, Some(mut hasher)) => (hasher.finish()?.to_vec(), shared.unsigned_mic_algorithm()),
        (None, None) => return Err(As2Error::cms("no MIC candidate")),
    };
    let payload = shared
        .payload
        .ok_or_else(|| As2Error::UnsupportedFormat("a message without a document".into()))?;
    Ok((
        StreamedMessage {
            payload,
            payload_size: shared.payload_size,
            facts: shared.facts,
            mic: ReceivedContentMic { digest, algorithm },
        },
        shared.sink,
    ))
}

/// Unwraps an AS2 message: `headers` are the request's headers (Content-Type and
/// Disposition-Notification-Options matter here) and `body` the exact request body.
///
/// The same pipeline as [`StreamingUnwrap`], with the whole body as one chunk.
pub fn unwrap_message(
    headers: &As2RequestHeaders,
    body: &[u8],
    context: &UnwrapContext<'_>,
) -> Result<UnwrappedMessage> {
    let mut unwrap = StreamingUnwrap::new(headers, context, Vec::new())?;
    unwrap.push(body)?;
    into_unwrapped(unwrap.finish()?)
}

/// Unwraps a message given as a MIME entity (for callers that already hold one).
pub fn unwrap_entity(
    entity: &Entity<'_>,
    requested: Option<&DispositionNotificationOptions>,
    context: &UnwrapContext<'_>,
) -> Result<UnwrappedMessage> {
    let mut unwrap =
        StreamingUnwrap::with_fields(entity.headers().to_vec(), requested, context, Vec::new())?;
    unwrap.push(entity.body())?;
    into_unwrapped(unwrap.finish()?)
}

fn into_unwrapped((message, data): (StreamedMessage, Vec<u8>)) -> Result<UnwrappedMessage> {
    Ok(UnwrappedMessage {
        payload: Payload {
            content_type: message.payload.content_type,
            filename: message.payload.filename,
            data,
        },
        facts: message.facts,
        mic: message.mic,
    })
}

fn is_smime_filename(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".p7m", ".p7s", ".p7z", ".p7c"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// A verified multipart/signed entity (MDNs, which are small, are read whole).
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
    Ok(VerifiedMultipart {
        facts: SignatureFacts::new(&verified, false, form),
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
