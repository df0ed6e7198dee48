//! CMS content types read as a stream: the content octets are decrypted, inflated or
//! digested as they pass, and only the small elements around them are held.
//!
//! EnvelopedData and AuthEnvelopedData put the recipients (and so the key) before the
//! content, so the content is decrypted once, as it arrives; the GCM tag comes after it
//! and is checked at the end. SignedData puts its digest algorithms before the content
//! and its signer information after it: the content is digested on the way, and the
//! signature checked at the end. AuthEnvelopedData with authenticated attributes cannot
//! be read this way (the attributes, which GCM must see first, come last) and is refused.

use super::compressed::Inflater;
use super::enveloped::{self, ContentDecryptor, ContentEncryption};
use super::{ContentCipher, Identity, KeyTransport, oid};
use crate::der;
use crate::error::{As2Error, Result};
use crate::headers::MicAlgorithm;
use crate::stream::ber::{Action, BerStream, Driver};
use crate::stream::digests::{ContentDigests, Digests};

/// Largest element held whole (recipient and signer information, algorithm identifiers).
pub(crate) const MAX_CAPTURE: usize = 1024 * 1024;

/// The CMS content types AS2 uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmsKind {
    Enveloped,
    AuthEnveloped,
    Signed,
    Compressed,
}

impl CmsKind {
    fn from_oid(oid_content: &[u8]) -> Option<Self> {
        match oid_content {
            o if o == oid::ENVELOPED_DATA => Some(Self::Enveloped),
            o if o == oid::AUTH_ENVELOPED_DATA => Some(Self::AuthEnveloped),
            o if o == oid::SIGNED_DATA => Some(Self::Signed),
            o if o == oid::COMPRESSED_DATA => Some(Self::Compressed),
            _ => None,
        }
    }

    /// Whether `other` is acceptable where `self` was expected.
    fn admits(self, other: Self) -> bool {
        self == other
            || matches!(
                (self, other),
                (Self::Enveloped, Self::AuthEnveloped) | (Self::AuthEnveloped, Self::Enveloped)
            )
    }

    fn mismatch(self) -> As2Error {
        As2Error::UnsupportedFormat(
            match self {
                Self::Enveloped | Self::AuthEnveloped => "CMS content is not (Auth)EnvelopedData",
                Self::Signed => "CMS content is not SignedData",
                Self::Compressed => "CMS content is not CompressedData",
            }
            .into(),
        )
    }
}

/// What a CMS layer needs besides its input.
#[derive(Clone, Copy)]
pub(crate) struct CmsParams<'a> {
    /// The kind the caller expects (`None`: any of the four).
    pub expected: Option<CmsKind>,
    /// Our keys, for enveloped content.
    pub identities: &'a [Identity],
    /// Refuse RSA PKCS #1 v1.5 key transport.
    pub refuse_pkcs1v15: bool,
    /// A digest of signed content to compute besides those the SignedData announces
    /// (the MIC algorithm).
    pub extra_digest: Option<MicAlgorithm>,
    /// Whether SignedData must carry its content (opaque) or may leave it out.
    pub content_required: bool,
    /// Most bytes CompressedData may inflate to.
    pub max_decompressed: u64,
    /// Most decompressed bytes per compressed byte.
    pub max_compression_ratio: u64,
}

/// How the layer ended.
pub(crate) enum CmsOutcome {
    /// Enveloped or AuthEnveloped content, decrypted.
    Enveloped {
        cipher: ContentCipher,
        key_transport: KeyTransport,
        identity_index: usize,
    },
    /// SignedData: the signerInfos SET (raw) and the digests of the content, when it was
    /// there.
    Signed {
        signer_set: Vec<u8>,
        content: Option<ContentDigests>,
    },
    /// CompressedData, inflated.
    Compressed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    ContentInfo,
    Explicit,
    Body,
    EncryptedContentInfo,
    Encapsulated,
    EContent,
}

/// Where a layer's content goes, with the layer's kind (known before any content).
pub(crate) type LayerOutput<'o> = dyn FnMut(CmsKind, &[u8]) -> Result<()> + 'o;

/// One CMS layer read as a stream; its content goes to the `out` of each call.
pub(crate) struct CmsLayer<'a> {
    ber: BerStream<Role>,
    state: State<'a>,
}

struct State<'a> {
    params: CmsParams<'a>,
    kind: Option<CmsKind>,
    /// Fields of the body seen so far, by tag, in order.
    body_fields: Vec<u8>,
    recipient_set: Option<Vec<u8>>,
    encryption: Option<(ContentEncryption, KeyTransport, usize)>,
    decryptor: Option<ContentDecryptor>,
    mac: Option<Vec<u8>>,
    /// Why the content-encryption key is a substitute (for the detail of the failure).
    key_substituted: Option<&'static str>,
    digest_algorithms: Vec<MicAlgorithm>,
    digests: Option<Digests>,
    signer_set: Option<Vec<u8>>,
    inflater: Option<Inflater>,
    content_seen: bool,
}

impl<'a> CmsLayer<'a> {
    pub(crate) fn new(params: CmsParams<'a>) -> Self {
        Self {
            ber: BerStream::new(MAX_CAPTURE),
            state: State {
                params,
                kind: None,
                body_fields: Vec::new(),
                recipient_set: None,
                encryption: None,
                decryptor: None,
                mac: None,
                key_substituted: None,
                digest_algorithms: Vec::new(),
                digests: None,
                signer_set: None,
                inflater: None,
                content_seen: false,
            },
        }
    }

    /// The content type, once its OID has been read.
    pub(crate) fn kind(&self) -> Option<CmsKind> {
        self.state.kind
    }

    pub(crate) fn push(&mut self, data: &[u8], out: &mut LayerOutput<'_>) -> Result<()> {
        let mut drive = Drive {
            state: &mut self.state,
            out,
        };
        let pushed = self.ber.push(data, &mut drive);
        self.state.uniform(pushed)
    }

    /// The end of the input: checks the structure ended, the padding or tag, the
    /// compressed stream's end.
    pub(crate) fn finish(mut self, out: &mut LayerOutput<'_>) -> Result<CmsOutcome> {
        let finished = self.finish_inner(out);
        self.state.uniform(finished)
    }

    fn finish_inner(&mut self, out: &mut LayerOutput<'_>) -> Result<CmsOutcome> {
        self.ber.finish()?;
        let state = &mut self.state;
        let kind = state.kind;
        let mut out = |data: &[u8]| match kind {
            Some(kind) => out(kind, data),
            None => Ok(()),
        };
        let out = &mut out;
        match state.kind {
            Some(CmsKind::Enveloped | CmsKind::AuthEnveloped) => {
                let mut decryptor = state
                    .decryptor
                    .take()
                    .ok_or_else(|| As2Error::cms("missing encryptedContentInfo"))?;
                decryptor.finish(state.mac.as_deref(), out)?;
                let (encryption, key_transport, identity_index) = state
                    .encryption
                    .take()
                    .ok_or_else(|| As2Error::cms("missing encryptedContentInfo"))?;
                Ok(CmsOutcome::Enveloped {
                    cipher: encryption.cipher,
                    key_transport,
                    identity_index,
                })
            }
            Some(CmsKind::Signed) => {
                let signer_set = state
                    .signer_set
                    .take()
                    .ok_or_else(|| As2Error::cms("missing signerInfos"))?;
                let content = match state.digests.take() {
                    Some(digests) if state.content_seen => Some(digests.finish()?),
                    _ => None,
                };
                if content.is_none() && state.params.content_required {
                    return Err(As2Error::UnsupportedFormat(
                        "opaque SignedData without content".into(),
                    ));
                }
                Ok(CmsOutcome::Signed {
                    signer_set,
                    content,
                })
            }
            Some(CmsKind::Compressed) => {
                let mut inflater = state.inflater.take().ok_or_else(|| {
                    As2Error::DecompressionFailed("CompressedData without content".into())
                })?;
                inflater.finish(out)?;
                Ok(CmsOutcome::Compressed)
            }
            None => Err(As2Error::cms("missing contentType")),
        }
    }
}

struct Drive<'s, 'a, 'o> {
    state: &'s mut State<'a>,
    out: &'s mut LayerOutput<'o>,
}

impl Driver for Drive<'_, '_, '_> {
    type Role = Role;

    fn element(
        &mut self,
        parent: Option<Role>,
        index: usize,
        tag: u8,
        _length: Option<u64>,
    ) -> Result<Action<Role>> {
        let state = &mut *self.state;
        match parent {
            None if tag == der::TAG_SEQUENCE => Ok(Action::Descend(Role::ContentInfo)),
            None => Err(As2Error::cms("ContentInfo is not a SEQUENCE")),
            Some(Role::ContentInfo) => match (index, tag) {
                (0, der::TAG_OID) => Ok(Action::Capture),
                (0, _) => Err(As2Error::cms(
                    "unexpected element where contentType belongs",
                )),
                (1, 0xa0) => Ok(Action::Descend(Role::Explicit)),
                (1, _) => Err(As2Error::cms("unexpected element where content belongs")),
                _ => Ok(Action::Skip),
            },
            Some(Role::Explicit) => match (index, tag) {
                (0, der::TAG_SEQUENCE) => Ok(Action::Descend(Role::Body)),
                (0, _) => Err(As2Error::cms("CMS content is not a SEQUENCE")),
                _ => Ok(Action::Skip),
            },
            Some(Role::Body) => state.body_element(tag),
            Some(Role::EncryptedContentInfo) => match (index, tag) {
                (0, der::TAG_OID) => Ok(Action::Skip),
                (1, der::TAG_SEQUENCE) => Ok(Action::Capture),
                (2, 0x80 | 0xa0) if state.decryptor.is_some() => {
                    state.content_seen = true;
                    Ok(Action::Stream)
                }
                _ => Err(As2Error::cms("unexpected element in encryptedContentInfo")),
            },
            Some(Role::Encapsulated) => match (index, tag) {
                (0, der::TAG_OID) => Ok(Action::Skip),
                (1, 0xa0) => Ok(Action::Descend(Role::EContent)),
                _ => Err(As2Error::cms("unexpected element in encapContentInfo")),
            },
            Some(Role::EContent) => match (index, tag) {
                (0, 0x04 | 0x24) => {
                    state.content_seen = true;
                    if state.kind == Some(CmsKind::Compressed) {
                        state.inflater = Some(Inflater::new(
                            state.params.max_decompressed,
                            state.params.max_compression_ratio,
                        ));
                    }
                    Ok(Action::Stream)
                }
                (0, _) => Err(As2Error::cms("eContent is not an OCTET STRING")),
                _ => Err(As2Error::cms("unexpected element after eContent")),
            },
        }
    }

    fn captured(&mut self, parent: Option<Role>, _index: usize, raw: &[u8]) -> Result<()> {
        let state = &mut *self.state;
        match parent {
            Some(Role::ContentInfo) => {
                let element = der::parse_single(raw)?;
                let kind = CmsKind::from_oid(element.content);
                state.kind = match (state.params.expected, kind) {
                    (Some(expected), Some(kind)) if expected.admits(kind) => Some(kind),
                    (Some(expected), _) => return Err(expected.mismatch()),
                    (None, Some(kind)) => Some(kind),
                    (None, None) => {
                        return Err(As2Error::UnsupportedFormat(
                            "unknown application/pkcs7-mime content".into(),
                        ));
                    }
                };
                Ok(())
            }
            Some(Role::Body) => state.body_captured(raw),
            Some(Role::EncryptedContentInfo) => state.open_encryption(raw),
            _ => Ok(()),
        }
    }

    fn content(&mut self, data: &[u8]) -> Result<()> {
        let state = &mut *self.state;
        let kind = state.kind()?;
        let out = &mut *self.out;
        let mut out = |piece: &[u8]| out(kind, piece);
        if let Some(decryptor) = &mut state.decryptor {
            return decryptor.update(data, &mut out);
        }
        if let Some(inflater) = &mut state.inflater {
            return inflater.push(data, &mut out);
        }
        if let Some(digests) = &mut state.digests {
            digests.update(data)?;
        }
        out(data)
    }

    fn end(&mut self, role: Role, children: usize) -> Result<()> {
        let state = &mut *self.state;
        match role {
            Role::EncryptedContentInfo if !state.content_seen => Err(As2Error::UnsupportedFormat(
                "detached encrypted content".into(),
            )),
            Role::Encapsulated if children < 2 && state.kind == Some(CmsKind::Compressed) => Err(
                As2Error::DecompressionFailed("CompressedData without content".into()),
            ),
            Role::Body => state.body_ended(),
            Role::ContentInfo if state.kind.is_none() || children < 2 => {
                Err(As2Error::cms("missing content"))
            }
            _ => Ok(()),
        }
    }
}

impl State<'_> {
    /// Once the content is known to be (Auth)EnvelopedData, every failure of the layer
    /// is the same [`As2Error::DecryptionFailed`] (see [`enveloped::open_content_key`]
    /// for why): the parse of the recipients and algorithms, the key transport, the
    /// content cipher, the structure around the ciphertext, the CBC padding, the GCM tag,
    /// and whatever the content's reader (the output) reported on the way. Before that
    /// nothing secret has been touched. The reasons stay in the detail. The one exception
    /// is the refusal of a key transport the partnership does not allow
    /// ([`As2Error::InsufficientMessageSecurity`]), decided on the algorithm identifiers,
    /// which are in the clear, before any RSA work.
    fn uniform<T>(&self, result: Result<T>) -> Result<T> {
        if !matches!(self.kind, Some(CmsKind::Enveloped | CmsKind::AuthEnveloped)) {
            return result;
        }
        result.map_err(|error| match error {
            As2Error::InsufficientMessageSecurity(_) => error,
            error => match (error.into_decryption_failure(), self.key_substituted) {
                (As2Error::DecryptionFailed(reason), Some(substituted)) => {
                    As2Error::DecryptionFailed(format!("{reason} ({substituted})"))
                }
                (error, _) => error,
            },
        })
    }

    fn kind(&self) -> Result<CmsKind> {
        self.kind
            .ok_or_else(|| As2Error::cms("missing contentType"))
    }

    fn body_element(&mut self, tag: u8) -> Result<Action<Role>> {
        let kind = self.kind()?;
        let first = self.body_fields.is_empty();
        let seen = |tag: u8| self.body_fields.contains(&tag);
        let action = match (kind, tag) {
            (_, der::TAG_INTEGER) if first => Action::Skip,
            (_, _) if first => {
                return Err(As2Error::cms("unexpected element where version belongs"));
            }
            (CmsKind::Enveloped | CmsKind::AuthEnveloped, 0xa0) if !seen(der::TAG_SET) => {
                Action::Skip
            }
            (CmsKind::Enveloped | CmsKind::AuthEnveloped, der::TAG_SET) if !seen(der::TAG_SET) => {
                Action::Capture
            }
            (CmsKind::Enveloped | CmsKind::AuthEnveloped, der::TAG_SEQUENCE)
                if !seen(der::TAG_SEQUENCE) =>
            {
                if self.recipient_set.is_none() {
                    return Err(As2Error::cms("missing recipientInfos"));
                }
                Action::Descend(Role::EncryptedContentInfo)
            }
            (CmsKind::Enveloped, 0xa1) if seen(der::TAG_SEQUENCE) => Action::Skip,
            (CmsKind::AuthEnveloped, 0xa1) if seen(der::TAG_SEQUENCE) => {
                return Err(As2Error::UnsupportedFormat(
                    "AuthEnvelopedData with authenticated attributes".into(),
                ));
            }
            (CmsKind::AuthEnveloped, der::TAG_OCTET_STRING)
                if seen(der::TAG_SEQUENCE) && self.mac.is_none() =>
            {
                Action::Capture
            }
            (CmsKind::AuthEnveloped, 0xa2) if self.mac.is_some() => Action::Skip,
            (CmsKind::Signed, der::TAG_SET) if !seen(der::TAG_SET) => Action::Capture,
            (CmsKind::Signed, der::TAG_SEQUENCE)
                if seen(der::TAG_SET) && !seen(der::TAG_SEQUENCE) =>
            {
                let algorithms = self
                    .digest_algorithms
                    .iter()
                    .copied()
                    .chain(self.params.extra_digest);
                self.digests = Some(Digests::new(algorithms)?);
                Action::Descend(Role::Encapsulated)
            }
            (CmsKind::Signed, 0xa0 | 0xa1) if seen(der::TAG_SEQUENCE) => Action::Skip,
            (CmsKind::Signed, der::TAG_SET)
                if seen(der::TAG_SEQUENCE) && self.signer_set.is_none() =>
            {
                Action::Capture
            }
            (CmsKind::Compressed, der::TAG_SEQUENCE) if self.body_fields.len() == 1 => {
                Action::Capture
            }
            (CmsKind::Compressed, der::TAG_SEQUENCE) if self.body_fields.len() == 2 => {
                Action::Descend(Role::Encapsulated)
            }
            _ => return Err(As2Error::cms("unexpected element in the CMS content")),
        };
        self.body_fields.push(tag);
        Ok(action)
    }

    fn body_captured(&mut self, raw: &[u8]) -> Result<()> {
        let Some(&tag) = raw.first() else {
            return Ok(());
        };
        match (self.kind()?, tag) {
            (CmsKind::Enveloped | CmsKind::AuthEnveloped, der::TAG_SET) => {
                self.recipient_set = Some(raw.to_vec());
            }
            (CmsKind::AuthEnveloped, der::TAG_OCTET_STRING) => {
                let mac = der::parse_single(raw)?.octets()?.into_owned();
                let expected = self.encryption.as_ref().and_then(|(e, ..)| e.tag_length);
                if expected.is_some_and(|length| length != mac.len()) {
                    return Err(As2Error::cms("GCM tag length differs from its parameters"));
                }
                self.mac = Some(mac);
            }
            (CmsKind::Signed, der::TAG_SET)
                if self.signer_set.is_none() && self.digests.is_some() =>
            {
                self.signer_set = Some(raw.to_vec());
            }
            (CmsKind::Signed, der::TAG_SET) => {
                let set = der::parse_single(raw)?;
                let mut algorithms = set.children();
                while algorithms.peek_tag().is_some() {
                    let (algorithm, _) = super::read_algorithm(&mut algorithms, "digestAlgorithm")?;
                    if let Some(digest) = super::digest_from_oid(algorithm) {
                        self.digest_algorithms.push(digest);
                    }
                }
            }
            (CmsKind::Compressed, der::TAG_SEQUENCE) => {
                let mut reader = der::Reader::new(raw);
                let (algorithm, _) = super::read_algorithm(&mut reader, "compressionAlgorithm")?;
                if algorithm != oid::ZLIB {
                    return Err(As2Error::DecompressionFailed(
                        "compression algorithm other than zlib".into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn open_encryption(&mut self, raw: &[u8]) -> Result<()> {
        let encryption = enveloped::parse_content_encryption(raw)?;
        let authenticated = self.kind == Some(CmsKind::AuthEnveloped);
        if encryption.cipher.is_authenticated() != authenticated {
            return Err(As2Error::UnsupportedAlgorithm(
                "cipher does not fit the content type".into(),
            ));
        }
        let recipient_set = self
            .recipient_set
            .as_deref()
            .ok_or_else(|| As2Error::cms("missing recipientInfos"))?;
        let opened = enveloped::open_content_key(
            recipient_set,
            self.params.identities,
            encryption.cipher,
            self.params.refuse_pkcs1v15,
        )?;
        self.key_substituted = opened.substituted;
        self.decryptor = Some(ContentDecryptor::new(&encryption, &opened.key)?);
        self.encryption = Some((encryption, opened.key_transport, opened.identity_index));
        Ok(())
    }

    fn body_ended(&self) -> Result<()> {
        let missing = match self.kind()? {
            CmsKind::Enveloped if self.decryptor.is_none() => Some("encryptedContentInfo"),
            CmsKind::AuthEnveloped if self.decryptor.is_none() => Some("encryptedContentInfo"),
            CmsKind::AuthEnveloped if self.mac.is_none() => Some("mac"),
            CmsKind::Signed if self.digests.is_none() => Some("encapContentInfo"),
            CmsKind::Signed if self.signer_set.is_none() => Some("signerInfos"),
            _ => None,
        };
        match missing {
            Some(what) => Err(As2Error::cms(format!("missing {what}"))),
            None => Ok(()),
        }
    }
}

/// Reads a whole ContentInfo through a layer, collecting its content.
fn read_whole(data: &[u8], params: CmsParams<'_>) -> Result<(CmsOutcome, Vec<u8>)> {
    let mut content = Vec::new();
    let mut collect = |_: CmsKind, piece: &[u8]| {
        content.extend_from_slice(piece);
        Ok(())
    };
    let mut layer = CmsLayer::new(params);
    layer.push(data, &mut collect)?;
    let outcome = layer.finish(&mut collect)?;
    Ok((outcome, content))
}

fn whole_buffer_params(expected: CmsKind) -> CmsParams<'static> {
    CmsParams {
        expected: Some(expected),
        identities: &[],
        refuse_pkcs1v15: false,
        extra_digest: None,
        content_required: false,
        max_decompressed: u64::MAX,
        max_compression_ratio: u64::MAX,
    }
}

/// [`super::decrypt`] over a whole buffer.
pub(crate) fn read_enveloped(data: &[u8], identities: &[Identity]) -> Result<super::Decrypted> {
    let params = CmsParams {
        identities,
        ..whole_buffer_params(CmsKind::Enveloped)
    };
    match read_whole(data, params)? {
        (
            CmsOutcome::Enveloped {
                cipher,
                key_transport,
                identity_index,
            },
            content,
        ) => Ok(super::Decrypted {
            content,
            cipher,
            key_transport,
            identity_index,
        }),
        _ => Err(CmsKind::Enveloped.mismatch()),
    }
}

/// [`super::decompress`] over a whole buffer (no ratio cap: the caller gave a size).
pub(crate) fn read_compressed(data: &[u8], max_size: u64) -> Result<Vec<u8>> {
    let params = CmsParams {
        max_decompressed: max_size,
        ..whole_buffer_params(CmsKind::Compressed)
    };
    Ok(read_whole(data, params)?.1)
}

/// The content of an opaque SignedData with its digests.
pub(crate) type SignedContent = (Vec<u8>, ContentDigests);

/// Reads a whole SignedData: its signerInfos SET and, when present, the content with
/// its digests (by the algorithms the SignedData names plus `extra_digest`).
pub(crate) fn read_signed_data(
    data: &[u8],
    extra_digest: Option<MicAlgorithm>,
    content_required: bool,
) -> Result<(Vec<u8>, Option<SignedContent>)> {
    let params = CmsParams {
        extra_digest,
        content_required,
        ..whole_buffer_params(CmsKind::Signed)
    };
    match read_whole(data, params)? {
        (
            CmsOutcome::Signed {
                signer_set,
                content,
            },
            bytes,
        ) => Ok((signer_set, content.map(|digests| (bytes, digests)))),
        _ => Err(CmsKind::Signed.mismatch()),
    }
}
