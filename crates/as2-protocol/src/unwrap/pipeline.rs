//! The streaming unwrap: one node per MIME entity, each layer feeding the next as the
//! body arrives.
//!
//! A node first finds its entity's header block (an inner entity's headers are the first
//! bytes of its parent's content; the outermost entity's came with the HTTP request), then
//! becomes one of: the document (transfer decoding removed, handed to the
//! [`PayloadSink`]), a CMS layer (decrypt, inflate or digest its content, which feeds a
//! child node) or a multipart/signed body (the first part is digested as received and
//! feeds a child node; the signature part is held, a few KiB, and checked at the end).
//!
//! A layer that can fail at its end (padding, tag, signature) keeps reading after its
//! child failed and reports its own failure first, so a tampered message reports the
//! broken signature rather than whatever the tampering did to the content inside.

use openssl::hash::Hasher;

use super::{
    CompressionPlacement, EncryptionFacts, PayloadInfo, PayloadSink, SignatureFacts,
    SignedContentForm, UnwrapContext,
};
use crate::cms::stream::{CmsKind, CmsLayer, CmsOutcome, CmsParams};
use crate::cms::{self, signed};
use crate::error::{As2Error, Result};
use crate::headers::MicAlgorithm;
use crate::mime::{Entity, HeaderField};
use crate::stream::digests::{ContentDigests, Digests};
use crate::stream::headers::HeaderScan;
use crate::stream::multipart::{PartEvent, PartSplitter};
use crate::stream::transfer::TransferDecoder;

/// Largest signature part of a multipart/signed body (a SignedData with its certificates).
const MAX_SIGNATURE_PART: usize = 1024 * 1024;

/// The signed part of a multipart/signed body is also digested in CRLF-repaired forms (in
/// case a transport rewrote line ends) up to this many bytes; larger content is only
/// checked as received.
const MAX_REPAIRED_FORM: u64 = 64 * 1024 * 1024;

/// Candidates for the MIC, from least to most preferred (RFC 4130 7.3.1, RFC 5402 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum MicRank {
    Body = 0,
    Decrypted = 1,
    Decompressed = 2,
    Signed = 3,
}

/// What every node shares: policy, the facts found so far, the sink.
pub(super) struct Shared<'c, S> {
    pub context: &'c UnwrapContext<'c>,
    /// The MIC algorithm the partner asked for.
    pub requested: Option<MicAlgorithm>,
    pub facts: super::SecurityFacts,
    pub sink: S,
    /// Set when the sink failed: that failure ends the unwrap at once.
    pub sink_error: Option<As2Error>,
    pub payload: Option<PayloadInfo>,
    pub payload_size: u64,
    /// The filename of the outermost entity (used when the document has none).
    pub outer_filename: Option<String>,
    layers: usize,
    encrypted: bool,
    signed: bool,
    /// The most preferred MIC candidate whose layer has started.
    pub best_rank: MicRank,
    /// MICs found by layers (rank, digest).
    pub mics: Vec<(MicRank, Vec<u8>, MicAlgorithm)>,
}

impl<'c, S: PayloadSink> Shared<'c, S> {
    pub(super) fn new(
        context: &'c UnwrapContext<'c>,
        requested: Option<MicAlgorithm>,
        outer_filename: Option<String>,
        sink: S,
    ) -> Self {
        Self {
            context,
            requested,
            facts: super::SecurityFacts::default(),
            sink,
            sink_error: None,
            payload: None,
            payload_size: 0,
            outer_filename,
            layers: 0,
            encrypted: false,
            signed: false,
            best_rank: MicRank::Body,
            mics: Vec::new(),
        }
    }

    /// The MIC algorithm for unsigned candidates.
    pub(super) fn unsigned_mic_algorithm(&self) -> MicAlgorithm {
        self.requested.unwrap_or(MicAlgorithm::Sha1)
    }

    /// Whether the content was decrypted with an unauthenticated (CBC) cipher and no
    /// signature has verified yet: no byte of it is authenticated, so what its readers
    /// find wrong is answered as a decryption failure (see [`CmsBody::finish`]).
    pub(super) fn unauthenticated_plaintext(&self) -> bool {
        self.facts
            .encryption
            .is_some_and(|encryption| !encryption.cipher.is_authenticated())
            && self.facts.signature.is_none()
    }

    fn start_rank(&mut self, rank: MicRank) {
        self.best_rank = self.best_rank.max(rank);
    }

    fn write_payload(&mut self, data: &[u8]) -> Result<()> {
        self.payload_size += data.len() as u64;
        self.sink.write(data).map_err(|error| {
            self.sink_error = Some(error);
            As2Error::InvalidArgument("the document could not be stored".into())
        })
    }

    fn start_payload(&mut self, info: PayloadInfo) -> Result<()> {
        if self.payload.is_some() {
            return Err(As2Error::UnsupportedFormat(
                "more than one document in the message".into(),
            ));
        }
        let started = self.sink.start(&info);
        self.payload = Some(info);
        started.map_err(|error| {
            self.sink_error = Some(error);
            As2Error::InvalidArgument("the document could not be stored".into())
        })
    }

    /// Counts a layer and checks the AS2 layering rules for it.
    fn enter_layer(&mut self) -> Result<()> {
        self.layers += 1;
        if self.layers > self.context.limits.max_layers {
            return Err(As2Error::LimitExceeded("too many nested layers".into()));
        }
        Ok(())
    }

    fn enter_cms(&mut self, kind: CmsKind) -> Result<()> {
        match kind {
            CmsKind::Enveloped | CmsKind::AuthEnveloped => {
                if self.encrypted {
                    return Err(As2Error::UnsupportedFormat(
                        "encrypted more than once".into(),
                    ));
                }
                if self.signed {
                    // Encryption inside a signature is legal S/MIME but not an AS2 layering.
                    return Err(As2Error::UnsupportedFormat(
                        "encryption inside the signature".into(),
                    ));
                }
                self.encrypted = true;
                self.start_rank(MicRank::Decrypted);
            }
            CmsKind::Compressed => {
                if self.facts.compression.is_some() {
                    return Err(As2Error::UnsupportedFormat(
                        "compressed more than once".into(),
                    ));
                }
                self.facts.compression = Some(if self.signed {
                    CompressionPlacement::BeforeSigning
                } else {
                    CompressionPlacement::Unsigned
                });
                self.start_rank(MicRank::Decompressed);
            }
            CmsKind::Signed => self.enter_signature()?,
        }
        Ok(())
    }

    fn enter_signature(&mut self) -> Result<()> {
        if self.signed {
            return Err(As2Error::UnsupportedFormat("signed more than once".into()));
        }
        self.signed = true;
        if self.facts.compression == Some(CompressionPlacement::Unsigned) {
            self.facts.compression = Some(CompressionPlacement::AfterSigning);
        }
        self.start_rank(MicRank::Signed);
        Ok(())
    }

    /// Records a verified signature and its MIC.
    fn record_signature(&mut self, facts: SignatureFacts, digests: &ContentDigests) -> Result<()> {
        let algorithm = self.requested.unwrap_or(facts.digest);
        let mic = digests.get(algorithm).ok_or_else(|| {
            As2Error::UnsupportedAlgorithm(format!("no {algorithm} digest of the signed content"))
        })?;
        self.mics.push((MicRank::Signed, mic.to_vec(), algorithm));
        self.facts.signature = Some(facts);
        Ok(())
    }
}

/// One MIME entity.
pub(super) struct EntityNode<'c> {
    state: EntityState<'c>,
}

enum EntityState<'c> {
    /// An inner entity whose header block has not ended yet.
    Headers(HeaderScan),
    Body(Box<Body<'c>>),
    Done,
}

impl<'c> EntityNode<'c> {
    /// The outermost entity, whose header fields are known.
    pub(super) fn with_headers<S: PayloadSink>(
        fields: Vec<HeaderField>,
        shared: &mut Shared<'c, S>,
    ) -> Result<Self> {
        Ok(Self {
            state: EntityState::Body(Box::new(Body::open(fields, shared)?)),
        })
    }

    /// An entity found inside a layer: its header block comes first.
    fn inner(context: &UnwrapContext<'_>) -> Self {
        Self {
            state: EntityState::Headers(HeaderScan::new(&context.limits.mime)),
        }
    }

    pub(super) fn push<S: PayloadSink>(
        &mut self,
        data: &[u8],
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        match &mut self.state {
            EntityState::Headers(scan) => {
                if let Some(body_start) = scan.push(data)? {
                    self.begin(body_start, shared)?;
                }
                Ok(())
            }
            EntityState::Body(body) => body.push(data, shared),
            EntityState::Done => Ok(()),
        }
    }

    /// Content found inside a layer should be a MIME entity; content without a
    /// Content-Type header (some products encrypt the bare document) is taken whole as
    /// the body, so that no document line is mistaken for a header field.
    fn begin<S: PayloadSink>(
        &mut self,
        body_start: usize,
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        let EntityState::Headers(scan) = &mut self.state else {
            return Ok(());
        };
        let scanned = scan.take(body_start, &shared.context.limits.mime)?;
        let has_type = scanned
            .fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case("Content-Type"));
        let (fields, start) = if has_type {
            (scanned.fields, scanned.body_start)
        } else {
            (Vec::new(), 0)
        };
        self.state = EntityState::Done;
        let mut body = Box::new(Body::open(fields, shared)?);
        body.push(scanned.bytes.get(start..).unwrap_or_default(), shared)?;
        self.state = EntityState::Body(body);
        Ok(())
    }

    pub(super) fn finish<S: PayloadSink>(&mut self, shared: &mut Shared<'c, S>) -> Result<()> {
        if let EntityState::Headers(scan) = &mut self.state {
            let body_start = scan.finish()?;
            self.begin(body_start, shared)?;
        }
        match std::mem::replace(&mut self.state, EntityState::Done) {
            EntityState::Body(body) => body.finish(shared),
            _ => Ok(()),
        }
    }
}

/// A child entity whose failure waits until its parent layer has checked itself.
struct Child<'c> {
    node: Option<EntityNode<'c>>,
    deferred: Option<As2Error>,
}

impl<'c> Child<'c> {
    fn new(node: EntityNode<'c>) -> Self {
        Self {
            node: Some(node),
            deferred: None,
        }
    }

    fn push<S: PayloadSink>(&mut self, data: &[u8], shared: &mut Shared<'c, S>) -> Result<()> {
        let Some(node) = &mut self.node else {
            return Ok(());
        };
        if let Err(error) = node.push(data, shared) {
            self.fail(error, shared)?;
        }
        Ok(())
    }

    /// The child's input has ended.
    fn close<S: PayloadSink>(&mut self, shared: &mut Shared<'c, S>) -> Result<()> {
        if let Some(mut node) = self.node.take()
            && let Err(error) = node.finish(shared)
        {
            self.fail(error, shared)?;
        }
        Ok(())
    }

    fn fail<S: PayloadSink>(&mut self, error: As2Error, shared: &Shared<'c, S>) -> Result<()> {
        self.node = None;
        if shared.sink_error.is_some() {
            return Err(error);
        }
        self.deferred.get_or_insert(error);
        Ok(())
    }

    /// The child's outcome, once the parent has checked itself.
    fn outcome(&mut self) -> Result<()> {
        match self.deferred.take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

enum Body<'c> {
    Document(TransferDecoder),
    Cms(CmsBody<'c>),
    Signed(SignedBody<'c>),
}

impl<'c> Body<'c> {
    fn open<S: PayloadSink>(fields: Vec<HeaderField>, shared: &mut Shared<'c, S>) -> Result<Self> {
        shared.enter_layer()?;
        let entity = Entity::from_parts(fields, &[]);
        let content_type = entity.content_type();
        let decoder = || TransferDecoder::new(entity.header("Content-Transfer-Encoding"));
        if content_type.is("application/pkcs7-mime") || content_type.is("application/x-pkcs7-mime")
        {
            let expected = match content_type
                .param("smime-type")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("enveloped-data" | "authenveloped-data") => Some(CmsKind::Enveloped),
                Some("compressed-data") => Some(CmsKind::Compressed),
                Some("signed-data") => Some(CmsKind::Signed),
                _ => None,
            };
            return Ok(Self::Cms(CmsBody::new(decoder()?, expected, shared)));
        }
        if content_type.is("multipart/signed") {
            let boundary = content_type
                .param("boundary")
                .ok_or_else(|| As2Error::mime("multipart without a boundary parameter"))?;
            let micalg = content_type.param("micalg");
            return Ok(Self::Signed(SignedBody::new(boundary, micalg, shared)?));
        }
        if content_type.is("application/pkcs7-signature")
            || content_type.is("application/x-pkcs7-signature")
        {
            return Err(As2Error::UnsupportedFormat(
                "a detached signature without its content".into(),
            ));
        }
        let decoder = decoder()?;
        let filename = entity.filename().or_else(|| shared.outer_filename.clone());
        shared.start_payload(PayloadInfo {
            content_type: entity
                .header("Content-Type")
                .unwrap_or("text/plain")
                .to_owned(),
            filename,
        })?;
        Ok(Self::Document(decoder))
    }

    fn push<S: PayloadSink>(&mut self, data: &[u8], shared: &mut Shared<'c, S>) -> Result<()> {
        match self {
            Self::Document(decoder) => decoder.push(data, &mut |d| shared.write_payload(d)),
            Self::Cms(body) => body.push(data, shared),
            Self::Signed(body) => body.push(data, shared),
        }
    }

    fn finish<S: PayloadSink>(self, shared: &mut Shared<'c, S>) -> Result<()> {
        match self {
            Self::Document(mut decoder) => decoder.finish(&mut |d| shared.write_payload(d)),
            Self::Cms(body) => body.finish(shared),
            Self::Signed(body) => body.finish(shared),
        }
    }
}

/// An application/pkcs7-mime body: one CMS layer over a child entity.
struct CmsBody<'c> {
    decoder: TransferDecoder,
    layer: CmsLayer<'c>,
    child: Child<'c>,
    /// The layer's kind once its content started (the layering rules were applied).
    started: Option<CmsKind>,
    /// The MIC candidate over this layer's output (decrypted or decompressed content).
    mic: Option<Hasher>,
}

impl<'c> CmsBody<'c> {
    fn new<S: PayloadSink>(
        decoder: TransferDecoder,
        expected: Option<CmsKind>,
        shared: &Shared<'c, S>,
    ) -> Self {
        let context = shared.context;
        let params = CmsParams {
            expected,
            identities: context.decryption_identities,
            refuse_pkcs1v15: context.refuse_rsa_pkcs1v15_key_transport,
            extra_digest: shared.requested,
            content_required: true,
            max_decompressed: context.limits.max_decompressed_size as u64,
            max_compression_ratio: context.limits.max_compression_ratio,
        };
        Self {
            decoder,
            layer: CmsLayer::new(params),
            child: Child::new(EntityNode::inner(context)),
            started: None,
            mic: None,
        }
    }

    fn push<S: PayloadSink>(&mut self, data: &[u8], shared: &mut Shared<'c, S>) -> Result<()> {
        let Self {
            decoder,
            layer,
            child,
            started,
            mic,
        } = self;
        decoder.push(data, &mut |der| {
            layer.push(der, &mut |kind, content| {
                on_content(kind, content, started, mic, child, shared)
            })
        })
    }

    /// The end of the layer: its own checks (padding, tag, signature) come first, then
    /// the child's outcome.
    ///
    /// After a CBC layer whose padding was valid, the child's failure (a MIME, CMS or
    /// compression error, a signature that does not verify) is answered as a decryption
    /// failure, unless a signature inside verified first. CBC authenticates nothing: a
    /// tampered ciphertext (or, after a key transport that did not open, the substitute
    /// key) yields garbage whose padding is valid about once in 256 tries, and if that
    /// garbage then failed differently from a bad padding, the sender would learn which
    /// of its tries had a valid padding: a Vaudenay padding oracle on the content, and
    /// through the substitute key a Bleichenbacher oracle on the key transport. So until
    /// the first authenticated byte every failure is the same. The price: a bad
    /// signature inside CBC encryption is answered `decryption-failed`, not
    /// `authentication-failed` (our logs keep the reason); inside GCM, whose tag has
    /// been checked when the child's outcome is read, the answer says what failed.
    fn finish<S: PayloadSink>(self, shared: &mut Shared<'c, S>) -> Result<()> {
        let Self {
            mut decoder,
            mut layer,
            mut child,
            mut started,
            mut mic,
        } = self;
        decoder.finish(&mut |der| {
            layer.push(der, &mut |kind, content| {
                on_content(kind, content, &mut started, &mut mic, &mut child, shared)
            })
        })?;
        let kind = layer.kind();
        let outcome = layer.finish(&mut |kind, content| {
            on_content(kind, content, &mut started, &mut mic, &mut child, shared)
        })?;
        if started.is_none()
            && let Some(kind) = kind
        {
            shared.enter_cms(kind)?;
        }
        match outcome {
            CmsOutcome::Enveloped {
                cipher,
                key_transport,
                identity_index,
            } => {
                shared.facts.encryption = Some(EncryptionFacts {
                    cipher,
                    key_transport,
                    identity_index,
                });
                record_mic(MicRank::Decrypted, mic, shared)?;
                let inner = child.close(shared).and_then(|()| child.outcome());
                return inner.map_err(|error| {
                    if shared.sink_error.is_none() && shared.unauthenticated_plaintext() {
                        error.into_decryption_failure()
                    } else {
                        error
                    }
                });
            }
            CmsOutcome::Compressed => record_mic(MicRank::Decompressed, mic, shared)?,
            CmsOutcome::Signed {
                signer_set,
                content,
            } => {
                let digests = content.ok_or_else(|| {
                    As2Error::UnsupportedFormat("opaque SignedData without content".into())
                })?;
                let signer_infos = signed::parse_signer_set(&signer_set)?;
                let (verified, _) = signed::verify_signers(
                    &signer_infos,
                    std::slice::from_ref(&digests),
                    &shared.context.verify_options(),
                )?;
                let facts = SignatureFacts::new(&verified, true, SignedContentForm::Exact);
                shared.record_signature(facts, &digests)?;
            }
        }
        child.close(shared)?;
        child.outcome()
    }
}

fn record_mic<S: PayloadSink>(
    rank: MicRank,
    mic: Option<Hasher>,
    shared: &mut Shared<'_, S>,
) -> Result<()> {
    if let Some(mut hasher) = mic {
        let algorithm = shared.unsigned_mic_algorithm();
        shared
            .mics
            .push((rank, hasher.finish()?.to_vec(), algorithm));
    }
    Ok(())
}

/// Content coming out of a CMS layer: the first piece applies the layering rules, every
/// piece feeds the MIC candidate (while no better one has started) and the child.
fn on_content<'c, S: PayloadSink>(
    kind: CmsKind,
    content: &[u8],
    started: &mut Option<CmsKind>,
    mic: &mut Option<Hasher>,
    child: &mut Child<'c>,
    shared: &mut Shared<'c, S>,
) -> Result<()> {
    if started.is_none() {
        shared.enter_cms(kind)?;
        *started = Some(kind);
        if kind != CmsKind::Signed {
            *mic = Some(Hasher::new(
                shared.unsigned_mic_algorithm().message_digest(),
            )?);
        }
    }
    let rank = match kind {
        CmsKind::Enveloped | CmsKind::AuthEnveloped => MicRank::Decrypted,
        CmsKind::Compressed => MicRank::Decompressed,
        CmsKind::Signed => MicRank::Signed,
    };
    if shared.best_rank > rank {
        *mic = None;
    }
    if let Some(hasher) = mic {
        hasher.update(content)?;
    }
    child.push(content, shared)
}

/// A form of the signed part with bare LFs turned into CRLF (in the header block only,
/// or everywhere), digested from the first byte where it differs from the received bytes.
struct RepairedForm {
    /// Only the first this-many bytes are repaired (`None`: all).
    repaired_length: Option<u64>,
    /// `None` while the form equals the received bytes.
    digests: Option<Digests>,
    offset: u64,
    previous: u8,
    form: SignedContentForm,
}

impl RepairedForm {
    fn new(form: SignedContentForm, repaired_length: Option<u64>) -> Self {
        Self {
            repaired_length,
            digests: None,
            offset: 0,
            previous: 0,
            form,
        }
    }

    /// Digests `chunk` in this form; `exact` is the received form's state before it.
    fn update(&mut self, chunk: &[u8], exact: &Digests) -> Result<()> {
        let repaired = match self.repaired_length {
            Some(length) => usize::try_from(length.saturating_sub(self.offset))
                .unwrap_or(usize::MAX)
                .min(chunk.len()),
            None => chunk.len(),
        };
        let (region, rest) = chunk.split_at(repaired);
        if self.digests.is_none() && first_bare_lf(region, self.previous).is_some() {
            self.digests = Some(exact.clone());
        }
        if let Some(digests) = &mut self.digests {
            let mut start = 0;
            let mut previous = self.previous;
            for lf in memchr::memchr_iter(b'\n', region) {
                let before = if lf == 0 {
                    previous
                } else {
                    region.get(lf - 1).copied().unwrap_or(0)
                };
                if before != b'\r' {
                    digests.update(region.get(start..lf).unwrap_or_default())?;
                    digests.update(b"\r")?;
                    start = lf;
                }
            }
            digests.update(region.get(start..).unwrap_or_default())?;
            digests.update(rest)?;
            previous = chunk.last().copied().unwrap_or(previous);
            self.previous = previous;
        } else if let Some(&last) = chunk.last() {
            self.previous = last;
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }
}

fn first_bare_lf(data: &[u8], previous: u8) -> Option<usize> {
    memchr::memchr_iter(b'\n', data).find(|&lf| {
        let before = if lf == 0 {
            previous
        } else {
            data.get(lf - 1).copied().unwrap_or(0)
        };
        before != b'\r'
    })
}

/// A multipart/signed body: the first part is the signed entity, digested exactly as
/// received; a later application/pkcs7-signature part carries the signature.
struct SignedBody<'c> {
    splitter: PartSplitter,
    parts: SignedParts<'c>,
}

/// What a [`SignedBody`] does with the parts its splitter finds.
struct SignedParts<'c> {
    algorithms: Vec<MicAlgorithm>,
    /// The signed part's first bytes, until its header block is known to have ended.
    head: Option<HeaderScan>,
    exact: Option<Digests>,
    repaired: Vec<RepairedForm>,
    child: Child<'c>,
    signature_parts: Vec<Vec<u8>>,
    signature_bytes: usize,
    current_part: Option<usize>,
}

impl<'c> SignedBody<'c> {
    fn new<S: PayloadSink>(
        boundary: &str,
        micalg: Option<&str>,
        shared: &mut Shared<'c, S>,
    ) -> Result<Self> {
        shared.enter_signature()?;
        let context = shared.context;
        // The digests the signature may use: those micalg announces, or all we accept
        // when it names none we know; plus the MIC the partner asked for.
        let mut algorithms: Vec<MicAlgorithm> = micalg
            .unwrap_or_default()
            .split(',')
            .filter_map(MicAlgorithm::parse_lenient)
            .filter(|a| *a != MicAlgorithm::Md5 || context.allow_md5)
            .collect();
        if algorithms.is_empty() {
            algorithms = MicAlgorithm::ALL
                .into_iter()
                .filter(|a| *a != MicAlgorithm::Md5 || context.allow_md5)
                .collect();
        }
        algorithms.extend(shared.requested);
        Ok(Self {
            splitter: PartSplitter::new(boundary, context.limits.mime.max_parts)?,
            parts: SignedParts {
                algorithms,
                head: Some(HeaderScan::new(&context.limits.mime)),
                exact: None,
                repaired: Vec::new(),
                child: Child::new(EntityNode::inner(context)),
                signature_parts: Vec::new(),
                signature_bytes: 0,
                current_part: None,
            },
        })
    }

    fn push<S: PayloadSink>(&mut self, data: &[u8], shared: &mut Shared<'c, S>) -> Result<()> {
        let parts = &mut self.parts;
        self.splitter
            .push(data, &mut |event| parts.on_event(event, shared))
    }

    fn finish<S: PayloadSink>(mut self, shared: &mut Shared<'c, S>) -> Result<()> {
        let parts = &mut self.parts;
        self.splitter
            .finish(&mut |event| parts.on_event(event, shared))?;
        self.parts.verify(shared)
    }
}

impl<'c> SignedParts<'c> {
    fn on_event<S: PayloadSink>(
        &mut self,
        event: PartEvent<'_>,
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        match event {
            PartEvent::Start(index) => {
                self.current_part = Some(index);
                if index > 0 {
                    self.signature_parts.push(Vec::new());
                }
                Ok(())
            }
            PartEvent::Data(data) => match self.current_part {
                Some(0) => self.signed_bytes(data, shared),
                Some(_) => {
                    self.signature_bytes += data.len();
                    if self.signature_bytes > MAX_SIGNATURE_PART {
                        return Err(As2Error::LimitExceeded(
                            "signature part larger than 1 MiB".into(),
                        ));
                    }
                    if let Some(part) = self.signature_parts.last_mut() {
                        part.extend_from_slice(data);
                    }
                    Ok(())
                }
                None => Ok(()),
            },
            PartEvent::End => {
                if self.current_part == Some(0) {
                    self.end_signed_part(shared)?;
                }
                self.current_part = None;
                Ok(())
            }
        }
    }

    /// Bytes of the signed part: held until its header block has ended (the repaired
    /// forms need to know where it ends), then digested and passed to the child.
    fn signed_bytes<S: PayloadSink>(
        &mut self,
        data: &[u8],
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        if let Some(head) = &mut self.head {
            match head.push(data) {
                Ok(Some(body_start)) => self.release_head(Some(body_start), shared),
                Ok(None) => Ok(()),
                // The child reads the same bytes and reports the problem.
                Err(_) => self.release_head(None, shared),
            }
        } else {
            self.digest_and_pass(data, shared)
        }
    }

    fn release_head<S: PayloadSink>(
        &mut self,
        body_start: Option<usize>,
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        let Some(mut head) = self.head.take() else {
            return Ok(());
        };
        let body_start = match body_start {
            Some(start) => start,
            None => head.finish().unwrap_or(0),
        };
        let bytes = head.into_bytes();
        let bytes = bytes.as_slice();
        self.exact = Some(Digests::new(self.algorithms.iter().copied())?);
        self.repaired = vec![
            RepairedForm::new(SignedContentForm::CrlfHeaders, Some(body_start as u64)),
            RepairedForm::new(SignedContentForm::CrlfEverywhere, None),
        ];
        self.digest_and_pass(bytes, shared)
    }

    fn digest_and_pass<S: PayloadSink>(
        &mut self,
        data: &[u8],
        shared: &mut Shared<'c, S>,
    ) -> Result<()> {
        if let Some(exact) = &mut self.exact {
            if exact.length() + data.len() as u64 > MAX_REPAIRED_FORM {
                self.repaired.clear();
            }
            for form in &mut self.repaired {
                form.update(data, exact)?;
            }
            exact.update(data)?;
        }
        self.child.push(data, shared)
    }

    fn end_signed_part<S: PayloadSink>(&mut self, shared: &mut Shared<'c, S>) -> Result<()> {
        if self.head.is_some() {
            self.release_head(None, shared)?;
        }
        self.child.close(shared)
    }

    /// Checks the signature over the digests of the signed part.
    fn verify<S: PayloadSink>(&mut self, shared: &mut Shared<'c, S>) -> Result<()> {
        let exact = self
            .exact
            .take()
            .ok_or_else(|| As2Error::mime("multipart/signed without parts"))?;
        let limits = &shared.context.limits.mime;
        let mut signature = None;
        for raw in &self.signature_parts {
            let part = Entity::parse(raw, limits)?;
            let content_type = part.content_type();
            if content_type.is("application/pkcs7-signature")
                || content_type.is("application/x-pkcs7-signature")
            {
                signature = Some(part.decoded_body()?.into_owned());
                break;
            }
        }
        let signature = signature.ok_or_else(|| {
            As2Error::UnsupportedFormat("multipart/signed without a PKCS #7 signature part".into())
        })?;
        let (signer_set, _) = cms::stream::read_signed_data(&signature, None, false)?;
        let signer_infos = signed::parse_signer_set(&signer_set)?;
        let options = shared.context.verify_options();
        let exact = exact.finish()?;
        let (form, digests, verified) =
            match signed::verify_signers(&signer_infos, std::slice::from_ref(&exact), &options) {
                Ok((verified, _)) => (SignedContentForm::Exact, exact, verified),
                // Only when the exact bytes fail (their digest does not match the signed
                // one, or, without signed attributes, the signature does not verify over
                // them) are the repaired forms tried; when none verifies, the exact
                // bytes' failure is the one reported.
                Err(
                    exact_error @ (As2Error::IntegrityCheckFailed(_)
                    | As2Error::AuthenticationFailed(_)),
                ) => {
                    let mut forms = Vec::new();
                    let mut candidates = Vec::new();
                    for repaired in std::mem::take(&mut self.repaired) {
                        if let Some(digests) = repaired.digests {
                            forms.push(repaired.form);
                            candidates.push(digests.finish()?);
                        }
                    }
                    let Ok((verified, index)) =
                        signed::verify_signers(&signer_infos, &candidates, &options)
                    else {
                        return Err(exact_error);
                    };
                    let form = forms.get(index).copied().ok_or(exact_error)?;
                    let digests = candidates.swap_remove(index);
                    (form, digests, verified)
                }
                Err(error) => return Err(error),
            };
        shared.record_signature(SignatureFacts::new(&verified, false, form), &digests)?;
        self.child.outcome()
    }
}
