//! The streaming outbound builder: [`MessageWriter`] writes an AS2 message as the
//! document arrives, layer by layer (payload entity, compress, sign, compress, encrypt),
//! in memory bounded whatever the document's size and the sizes of its pieces.

use std::io::Write;

use crate::cms::{
    self, CompressedDataWriter, ContentCipher, EnvelopedWriter, Identity, KeyTransport,
    SignOptions, SignatureScheme,
};
use crate::error::{As2Error, Result};
use crate::headers::MicAlgorithm;
use crate::mic::{self, ReceivedContentMic};
use crate::mime;
use crate::stream::digests::{ContentDigests, Digests};

use super::{CompressionOrder, OutboundMessage};

/// Most document bytes handed down the stages at once: what each stage holds between
/// calls (its output for one piece) stays near this whatever the caller's chunk sizes.
const PIECE: usize = 16 * 1024;

/// Writes an AS2 message as a stream: [`MessageWriter::new`] with the message's
/// description, the document in pieces of any size with [`MessageWriter::write`], and
/// [`MessageWriter::finish`]. The body comes out as it is produced: the payload entity,
/// compressed (CompressedData, BER with indefinite lengths), signed (multipart/signed,
/// the signature part written at the end), compressed after signing, and encrypted
/// (EnvelopedData or AuthEnvelopedData written as `openssl cms -encrypt -stream` does),
/// as the message asks; the MIC the partner's MDN must carry is computed on the way.
///
/// The writer owns what it needs (it is `Send + 'static`), and holds a few hundred KiB
/// at most (the zlib state when compressing, and one piece per stage). After an error it
/// refuses further writes.
pub struct MessageWriter {
    /// The payload entity's header block, fed to the first stage on the first write
    /// (empty when the payload is the whole body).
    entity_prefix: Option<Vec<u8>>,
    stages: Vec<Slot>,
    mic_algorithm: MicAlgorithm,
    /// The MIC's running digest when no stage signs (the payload entity, or the raw
    /// payload when it is the whole body); the signing stage digests the signed entity.
    unsigned_mic: Option<Digests>,
    failed: bool,
}

impl std::fmt::Debug for MessageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageWriter")
            .field("stages", &self.stages.len())
            .field("mic_algorithm", &self.mic_algorithm)
            .finish_non_exhaustive()
    }
}

/// One stage and the buffer its output goes into on the way to the next stage.
struct Slot {
    stage: Stage,
    output: Vec<u8>,
}

/// One layer of the message: bytes of the entity it wraps in, bytes of its body out.
struct Stage {
    /// Bytes to write before anything else: the stage's own MIME header block when
    /// another stage wraps it, and the start of its body.
    pending: Vec<u8>,
    /// The header fields of the entity this stage makes.
    headers: Vec<(String, String)>,
    kind: StageKind,
}

enum StageKind {
    Compress(CompressedDataWriter<Vec<u8>>),
    Sign(MultipartSigner),
    Encrypt(EnvelopedWriter),
}

impl Stage {
    fn compress() -> Result<Self> {
        let mut writer = CompressedDataWriter::new(Vec::new()).map_err(zlib_error)?;
        let pending = std::mem::take(writer.get_mut());
        Ok(Self {
            pending,
            headers: smime_headers("compressed-data", "smime.p7z"),
            kind: StageKind::Compress(writer),
        })
    }

    fn sign(
        identity: Identity,
        digest: MicAlgorithm,
        scheme: SignatureScheme,
        mic: MicAlgorithm,
    ) -> Result<Self> {
        let (signer, content_type) = MultipartSigner::new(identity, digest, scheme, Some(mic))?;
        let mut pending = Vec::new();
        signer.start(&mut pending);
        Ok(Self {
            pending,
            headers: vec![("Content-Type".to_owned(), content_type)],
            kind: StageKind::Sign(signer),
        })
    }

    fn encrypt(
        recipient: &openssl::x509::X509,
        cipher: ContentCipher,
        key_transport: KeyTransport,
    ) -> Result<Self> {
        let mut pending = Vec::new();
        let writer = EnvelopedWriter::new(recipient, cipher, key_transport, &mut pending)?;
        let smime_type = if cipher.is_authenticated() {
            "authEnveloped-data"
        } else {
            "enveloped-data"
        };
        Ok(Self {
            pending,
            headers: smime_headers(smime_type, "smime.p7m"),
            kind: StageKind::Encrypt(writer),
        })
    }

    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            out.append(&mut self.pending);
            self.pending = Vec::new();
        }
    }

    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.flush_pending(out);
        match &mut self.kind {
            StageKind::Compress(writer) => {
                writer.write_all(data).map_err(zlib_error)?;
                let written = writer.get_mut();
                out.extend_from_slice(written);
                written.clear();
                Ok(())
            }
            StageKind::Sign(signer) => signer.update(data, out),
            StageKind::Encrypt(writer) => writer.update(data, out),
        }
    }

    /// Ends the stage; the signing stage returns the digests of the signed entity.
    fn finish(mut self, out: &mut Vec<u8>) -> Result<Option<ContentDigests>> {
        self.flush_pending(out);
        match self.kind {
            StageKind::Compress(writer) => {
                out.extend_from_slice(&writer.finish().map_err(zlib_error)?);
                Ok(None)
            }
            StageKind::Sign(signer) => signer.finish(out).map(Some),
            StageKind::Encrypt(writer) => writer.finish(out).map(|()| None),
        }
    }
}

fn zlib_error(error: std::io::Error) -> As2Error {
    As2Error::InvalidArgument(format!("zlib: {error}"))
}

/// The header fields of an `application/pkcs7-mime` entity with a binary body.
fn smime_headers(smime_type: &str, filename: &str) -> Vec<(String, String)> {
    vec![
        (
            "Content-Type".to_owned(),
            format!("application/pkcs7-mime; smime-type={smime_type}; name={filename}"),
        ),
        ("Content-Transfer-Encoding".to_owned(), "binary".to_owned()),
        (
            "Content-Disposition".to_owned(),
            format!("attachment; filename=\"{filename}\""),
        ),
    ]
}

/// A MIME header block: the fields and the blank line.
fn header_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut block = Vec::with_capacity(256);
    for (name, value) in headers {
        mime::push_header(&mut block, name, value);
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// Hands `data` to the first stage and its output on down; the last stage writes to
/// `out`.
fn run(slots: &mut [Slot], data: &[u8], out: &mut Vec<u8>) -> Result<()> {
    match slots.split_first_mut() {
        None => {
            out.extend_from_slice(data);
            Ok(())
        }
        Some((slot, [])) => slot.stage.push(data, out),
        Some((slot, rest)) => {
            slot.output.clear();
            slot.stage.push(data, &mut slot.output)?;
            if slot.output.is_empty() {
                return Ok(());
            }
            run(rest, &slot.output, out)
        }
    }
}

impl MessageWriter {
    /// Starts a message: uses every field of `message` except `payload` (the document,
    /// which the caller then passes to [`MessageWriter::write`] in pieces of any size).
    /// Returns the writer and the message's HTTP headers: the AS2 headers and the
    /// outermost entity's Content-Type (and its other header fields), as
    /// [`super::BuiltMessage::headers`] holds them.
    ///
    /// The boundary, the content-encryption key (wrapped for the recipient here) and
    /// the MIC algorithm are chosen now: the first requested receipt algorithm, else the
    /// signing digest, else SHA-1.
    pub fn new(message: &OutboundMessage<'_>) -> Result<(Self, Vec<(String, String)>)> {
        let payload_headers = super::payload_headers(message)?;
        let requested = message.mdn.as_ref().and_then(super::receipt_options);
        let mic_algorithm =
            mic::choose_mic_algorithm(requested.as_ref(), message.signing.map(|s| s.digest), true)?;
        let compress_first = matches!(
            (message.compression, message.signing),
            (Some(CompressionOrder::BeforeSigning), _)
                | (Some(CompressionOrder::AfterSigning), None)
        );
        let mut stages = Vec::new();
        if compress_first {
            stages.push(Stage::compress()?);
        }
        if let Some(signing) = message.signing {
            stages.push(Stage::sign(
                signing.identity.clone(),
                signing.digest,
                signing.scheme,
                mic_algorithm,
            )?);
            if message.compression == Some(CompressionOrder::AfterSigning) {
                stages.push(Stage::compress()?);
            }
        }
        if let Some(encryption) = message.encryption {
            stages.push(Stage::encrypt(
                encryption.recipient,
                encryption.cipher,
                encryption.key_transport,
            )?);
        }
        // Each entity's header block starts the body of the stage that wraps it; the
        // outermost entity's header fields are HTTP headers.
        let (entity_prefix, body_headers) = match stages.last() {
            None => (Vec::new(), payload_headers),
            Some(outermost) => {
                let outer_headers = outermost.headers.clone();
                let inner = stages.len() - 1;
                for stage in stages.iter_mut().take(inner) {
                    let mut pending = header_block(&stage.headers);
                    pending.append(&mut stage.pending);
                    stage.pending = pending;
                }
                (header_block(&payload_headers), outer_headers)
            }
        };
        let unsigned_mic = if message.signing.is_some() {
            None
        } else {
            Some(Digests::new([mic_algorithm])?)
        };
        let headers = super::http_headers(message, requested.as_ref(), body_headers);
        let writer = Self {
            entity_prefix: Some(entity_prefix),
            stages: stages
                .into_iter()
                .map(|stage| Slot {
                    stage,
                    output: Vec::new(),
                })
                .collect(),
            mic_algorithm,
            unsigned_mic,
            failed: false,
        };
        Ok((writer, headers))
    }

    /// The next bytes of the document: appends the body bytes produced so far to `out`
    /// (possibly none; the start of the body comes with the first call). The writer
    /// holds the same bounded memory whatever the size of `chunk`.
    pub fn write(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if self.failed {
            return Err(As2Error::InvalidArgument(
                "the message writer failed earlier".into(),
            ));
        }
        let result = self.write_pieces(chunk, out);
        self.failed = result.is_err();
        result
    }

    fn write_pieces(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if let Some(prefix) = self.entity_prefix.take() {
            self.feed(&prefix, out)?;
        }
        for piece in chunk.chunks(PIECE) {
            self.feed(piece, out)?;
        }
        Ok(())
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(digests) = &mut self.unsigned_mic {
            digests.update(data)?;
        }
        run(&mut self.stages, data, out)
    }

    /// Ends the document: appends the rest of the body (the signature part, the
    /// cipher's last block or tag, the end-of-contents octets) to `out` and returns the
    /// MIC the partner's MDN must carry.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<ReceivedContentMic> {
        if self.failed {
            return Err(As2Error::InvalidArgument(
                "the message writer failed earlier".into(),
            ));
        }
        self.write_pieces(&[], out)?;
        let mut slots = std::mem::take(&mut self.stages);
        let mut signed = None;
        while !slots.is_empty() {
            let slot = slots.remove(0);
            let digests = if slots.is_empty() {
                slot.stage.finish(out)?
            } else {
                let mut tail = slot.output;
                tail.clear();
                let digests = slot.stage.finish(&mut tail)?;
                run(&mut slots, &tail, out)?;
                digests
            };
            signed = signed.or(digests);
        }
        let digests = match (signed, self.unsigned_mic) {
            (Some(digests), _) => digests,
            (None, Some(digests)) => digests.finish()?,
            (None, None) => {
                return Err(As2Error::InvalidArgument("no digest for the MIC".into()));
            }
        };
        let digest = digests
            .get(self.mic_algorithm)
            .ok_or_else(|| As2Error::InvalidArgument("no digest for the MIC".into()))?;
        Ok(ReceivedContentMic {
            digest: digest.to_vec(),
            algorithm: self.mic_algorithm,
        })
    }
}

/// Writes multipart/signed with a detached CMS signature as the signed entity streams
/// past: the opening delimiter, the entity (digested with the signing digest, and the
/// MIC's when another), then at the end the signature part (base64 lines) and the close
/// delimiter.
pub(crate) struct MultipartSigner {
    identity: Identity,
    digest: MicAlgorithm,
    scheme: SignatureScheme,
    boundary: String,
    digests: Digests,
}

impl MultipartSigner {
    /// A signer with a fresh boundary, also digesting with `mic` when given; returns it
    /// and the multipart/signed Content-Type value.
    pub(crate) fn new(
        identity: Identity,
        digest: MicAlgorithm,
        scheme: SignatureScheme,
        mic: Option<MicAlgorithm>,
    ) -> Result<(Self, String)> {
        let boundary = mime::make_boundary()?;
        let content_type = format!(
            "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg={digest}; boundary=\"{boundary}\""
        );
        let digests = Digests::new(std::iter::once(digest).chain(mic))?;
        let signer = Self {
            identity,
            digest,
            scheme,
            boundary,
            digests,
        };
        Ok((signer, content_type))
    }

    /// Appends the body's start (the first delimiter) to `out`.
    pub(crate) fn start(&self, out: &mut Vec<u8>) {
        mime::push_delimiter(out, &self.boundary, false);
    }

    /// The next bytes of the signed entity: digested and appended to `out`.
    pub(crate) fn update(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.digests.update(data)?;
        out.extend_from_slice(data);
        Ok(())
    }

    /// Appends the signature part and the close delimiter to `out`; returns the digests
    /// of the signed entity.
    pub(crate) fn finish(self, out: &mut Vec<u8>) -> Result<ContentDigests> {
        let digests = self.digests.finish()?;
        let message_digest = digests
            .get(self.digest)
            .ok_or_else(|| As2Error::InvalidArgument("no signing digest".into()))?;
        let signature = cms::signed::sign_digest(
            message_digest,
            &SignOptions {
                signer: &self.identity,
                digest: self.digest,
                scheme: self.scheme,
                detached: true,
            },
        )?;
        out.extend_from_slice(b"\r\n");
        mime::push_delimiter(out, &self.boundary, false);
        mime::push_header(
            out,
            "Content-Type",
            "application/pkcs7-signature; name=smime.p7s; smime-type=signed-data",
        );
        mime::push_header(out, "Content-Transfer-Encoding", "base64");
        mime::push_header(
            out,
            "Content-Disposition",
            "attachment; filename=\"smime.p7s\"",
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&mime::encode_base64_lines(&signature));
        mime::push_delimiter(out, &self.boundary, true);
        Ok(digests)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageWriter;

    #[test]
    fn the_writer_can_move_to_another_thread() {
        const fn assert_send_static<T: Send + 'static>() {}
        assert_send_static::<MessageWriter>();
    }
}
