//! The streaming unwrap's heap does not grow with the document: a signed and encrypted
//! message of 64 MiB and then one of 1 GiB, made by an independent implementation
//! (`openssl cms -sign -stream` piped into `openssl cms -encrypt -stream`, so neither
//! side ever holds the message) and unwrapped in 64 KiB chunks, reach the same peak heap,
//! a few MiB; and so does a compressed message streamed through base64. The writing side
//! too: a 1 GiB document compressed, signed and encrypted by the `MessageWriter` needs the
//! heap a 64 MiB one does.
//!
//! Each test runs in its own process (cargo-nextest), so the allocator's peak is the
//! test's own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::io::{Read, Write};
use std::sync::OnceLock;

use as2_protocol::cms::{CompressedDataWriter, Identity};
use as2_protocol::cms::{ContentCipher, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::outbound::{
    CompressionOrder, Encryption, MdnRequest, MessageWriter, OutboundMessage, Signing,
};
use as2_protocol::unwrap::{PayloadInfo, PayloadSink, StreamingUnwrap, UnwrapContext};
use cap::Cap;
use openssl::hash::{Hasher, MessageDigest};

#[global_allocator]
static ALLOCATOR: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

const MIB: u64 = 1024 * 1024;
/// Heap the unwrap may use on top of what the test held before it, whatever the size:
/// the allocator refuses more (the test aborts).
const HEAP_BUDGET: usize = 16 * 1024 * 1024;
/// Two peaks this close are the same heap (thread and pipe bookkeeping varies by a few
/// KiB between runs); a heap that grew with the document would differ by MiBs.
const SAME_HEAP: usize = 64 * 1024;

/// A document of `size` bytes: a 1 MiB block of pseudo-random bytes, each repetition
/// stamped with its index so no two MiB are alike.
struct Document {
    block: Vec<u8>,
    size: u64,
}

impl Document {
    fn new(size: u64) -> Self {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let block = (0..MIB)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        Self { block, size }
    }

    /// Writes the document, returning its SHA-256.
    fn write_to(&mut self, out: &mut dyn Write) -> Vec<u8> {
        let mut hasher = Hasher::new(MessageDigest::sha256()).unwrap();
        let mut written = 0;
        let mut index = 0u64;
        while written < self.size {
            self.block[..8].copy_from_slice(&index.to_le_bytes());
            let length = usize::try_from((self.size - written).min(MIB)).unwrap();
            let piece = &self.block[..length];
            hasher.update(piece).unwrap();
            out.write_all(piece).unwrap();
            written += length as u64;
            index += 1;
        }
        hasher.finish().unwrap().to_vec()
    }
}

/// Counts and digests what the unwrap hands over.
struct DigestingSink {
    hasher: Hasher,
    length: u64,
}

impl PayloadSink for DigestingSink {
    fn start(&mut self, _: &PayloadInfo) -> as2_protocol::Result<()> {
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> as2_protocol::Result<()> {
        self.length += data.len() as u64;
        self.hasher.update(data)?;
        Ok(())
    }
}

struct Parties {
    sender: Identity,
    receiver: Identity,
    dir: tempfile::TempDir,
}

fn parties() -> &'static Parties {
    static PARTIES: OnceLock<Parties> = OnceLock::new();
    PARTIES.get_or_init(|| {
        let parties = Parties {
            sender: common::identity("sender"),
            receiver: common::identity("receiver"),
            dir: tempfile::tempdir().unwrap(),
        };
        let write = |name: &str, text: String| {
            std::fs::write(parties.dir.path().join(name), text).unwrap();
        };
        write("sender.key", common::key_pem(&parties.sender));
        write("sender.pem", common::cert_pem(&parties.sender));
        write("receiver.pem", common::cert_pem(&parties.receiver));
        parties
    })
}

const ENTITY_HEADER: &[u8] = b"Content-Type: application/octet-stream\r\n\r\n";

/// Streams a signed and encrypted message of a `size`-byte document through the
/// unwrap; returns the peak heap above the level before it.
fn signed_and_encrypted(size: u64) -> usize {
    let parties = parties();
    let mut pipeline = as2_testkit::openssl_cli::SignEncrypt::spawn(
        parties.dir.path(),
        "sender.pem",
        "sender.key",
        "receiver.pem",
    );
    let mut to_sign = pipeline.input.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut entity = Hasher::new(MessageDigest::sha256()).unwrap();
        entity.update(ENTITY_HEADER).unwrap();
        to_sign.write_all(ENTITY_HEADER).unwrap();
        let mut tee = Tee {
            out: &mut to_sign,
            hasher: &mut entity,
        };
        let document = Document::new(size).write_to(&mut tee);
        (document, entity.finish().unwrap().to_vec())
    });

    let headers = As2RequestHeaders::parse([
        ("AS2-From", "sender"),
        ("AS2-To", "receiver"),
        ("Message-ID", "<big@openssl>"),
        ("Content-Type", "application/pkcs7-mime; smime-type=enveloped-data"),
        (
            "Disposition-Notification-Options",
            "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256",
        ),
    ])
    .unwrap();
    let identities = [parties.receiver.clone()];
    let certificates = [parties.sender.certificate.clone()];
    let context = UnwrapContext::new(&identities, &certificates);
    let sink = DigestingSink {
        hasher: Hasher::new(MessageDigest::sha256()).unwrap(),
        length: 0,
    };

    let before = ALLOCATOR.allocated();
    ALLOCATOR.set_limit(before + HEAP_BUDGET).unwrap();
    let peak_before = ALLOCATOR.max_allocated();
    let mut unwrap = StreamingUnwrap::new(&headers, &context, sink).unwrap();
    let mut message = pipeline.output.take().unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let read = message.read(&mut chunk).unwrap();
        if read == 0 {
            break;
        }
        received += read as u64;
        unwrap.push(&chunk[..read]).unwrap();
    }
    let (unwrapped, mut sink) = unwrap.finish().unwrap();
    let peak = ALLOCATOR.max_allocated();
    ALLOCATOR.set_limit(usize::MAX).unwrap();

    let (document, entity) = writer.join().unwrap();
    pipeline.wait();
    assert!(received > size, "the message is larger than its document");
    assert_eq!(sink.length, size);
    assert_eq!(sink.hasher.finish().unwrap().to_vec(), document);
    assert_eq!(unwrapped.payload_size, size);
    assert_eq!(unwrapped.mic.algorithm, MicAlgorithm::Sha256);
    assert_eq!(
        unwrapped.mic.digest, entity,
        "the MIC is the signed entity's digest"
    );
    assert!(unwrapped.facts.signature.is_some() && unwrapped.facts.encryption.is_some());
    println!(
        "{size} bytes: message {received} bytes, peak heap {} KiB above {} KiB",
        peak.saturating_sub(before) / 1024,
        before / 1024
    );
    // The counter only grows: a run that needed more than the earlier ones shows as a
    // higher peak.
    peak.max(peak_before).saturating_sub(before)
}

struct Tee<'a> {
    out: &'a mut dyn Write,
    hasher: &'a mut Hasher,
}

impl Write for Tee<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(data)?;
        self.out.write_all(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[test]
fn a_gib_signed_and_encrypted_by_openssl_unwraps_in_the_heap_of_64_mib() {
    let small = signed_and_encrypted(64 * MIB);
    let large = signed_and_encrypted(1024 * MIB);
    assert!(
        large.saturating_sub(small) < SAME_HEAP,
        "the 1 GiB message needed more heap than the 64 MiB one ({large} against {small} bytes)"
    );
    assert!(large < HEAP_BUDGET);
}

/// Base64 in lines of 76 characters, each handed to the unwrap as it is written.
struct Base64Lines<'u, 'c> {
    unwrap: &'u mut StreamingUnwrap<'c, DigestingSink>,
    pending: Vec<u8>,
    encoded: Vec<u8>,
    sent: u64,
}

impl Base64Lines<'_, '_> {
    fn send(&mut self, data: &[u8]) {
        use base64::Engine as _;
        self.pending.extend_from_slice(data);
        let whole = self.pending.len() / 57 * 57;
        self.encoded.clear();
        for line in self.pending[..whole].chunks(57) {
            let mut text = String::new();
            base64::engine::general_purpose::STANDARD.encode_string(line, &mut text);
            self.encoded.extend_from_slice(text.as_bytes());
            self.encoded.extend_from_slice(b"\r\n");
        }
        self.pending.drain(..whole);
        self.sent += self.encoded.len() as u64;
        self.unwrap.push(&self.encoded).unwrap();
    }

    fn finish(mut self) -> u64 {
        let rest = std::mem::take(&mut self.pending);
        let mut text = String::new();
        base64::Engine::encode_string(&base64::engine::general_purpose::STANDARD, &rest, &mut text);
        self.unwrap.push(text.as_bytes()).unwrap();
        self.sent + text.len() as u64
    }
}

impl Write for Base64Lines<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.send(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams a compressed, base64-encoded message of an EDI-like document of about `size`
/// bytes through the unwrap; returns the peak heap above the level before it.
fn compressed_in_base64(size: u64) -> usize {
    let headers = As2RequestHeaders::parse([
        ("AS2-From", "sender"),
        ("AS2-To", "receiver"),
        ("Message-ID", "<big@compressed>"),
        (
            "Content-Type",
            "application/pkcs7-mime; smime-type=compressed-data",
        ),
        ("Content-Transfer-Encoding", "base64"),
    ])
    .unwrap();
    let mut context = UnwrapContext::new(&[], &[]);
    context.limits.max_decompressed_size = usize::MAX;
    let sink = DigestingSink {
        hasher: Hasher::new(MessageDigest::sha256()).unwrap(),
        length: 0,
    };
    let before = ALLOCATOR.allocated();
    ALLOCATOR.set_limit(before + HEAP_BUDGET).unwrap();
    let mut unwrap = StreamingUnwrap::new(&headers, &context, sink).unwrap();
    let header = b"Content-Type: application/edi-x12\r\n\r\n";
    // Without a requested algorithm and a signature the MIC is SHA-1 over the
    // decompressed entity.
    let mut entity = Hasher::new(MessageDigest::sha1()).unwrap();
    let mut document = Hasher::new(MessageDigest::sha256()).unwrap();
    let mut document_length = 0u64;
    let lines = Base64Lines {
        unwrap: &mut unwrap,
        pending: Vec::new(),
        encoded: Vec::new(),
        sent: 0,
    };
    let mut writer = CompressedDataWriter::new(lines).unwrap();
    entity.update(header).unwrap();
    writer.write_all(header).unwrap();
    let mut batch = String::new();
    let mut line = 0u64;
    while document_length < size {
        batch.clear();
        for _ in 0..1000 {
            line += 1;
            batch.push_str(&format!(
                "LIN+{line}++{}:EN'\r\nQTY+21:{}'\r\nPRI+AAA:{}.{:02}'\r\n",
                line * 7919 % 1_000_003,
                line % 97,
                line % 1000,
                line % 100
            ));
        }
        entity.update(batch.as_bytes()).unwrap();
        document.update(batch.as_bytes()).unwrap();
        document_length += batch.len() as u64;
        writer.write_all(batch.as_bytes()).unwrap();
    }
    let sent = writer.finish().unwrap().finish();
    let (unwrapped, mut sink) = unwrap.finish().unwrap();
    let peak = ALLOCATOR.max_allocated();
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    assert_eq!(sink.length, document_length);
    assert_eq!(
        sink.hasher.finish().unwrap().to_vec(),
        document.finish().unwrap().to_vec()
    );
    assert_eq!(unwrapped.mic.algorithm, MicAlgorithm::Sha1);
    assert_eq!(unwrapped.mic.digest, entity.finish().unwrap().to_vec());
    assert_eq!(
        unwrapped.facts.compression,
        Some(as2_protocol::unwrap::CompressionPlacement::Unsigned)
    );
    println!(
        "{document_length} bytes: message {sent} bytes of base64, peak heap {} KiB above {} KiB",
        peak.saturating_sub(before) / 1024,
        before / 1024
    );
    peak.saturating_sub(before)
}

#[test]
fn a_compressed_stream_in_base64_unwraps_in_the_same_heap_at_16_and_512_mib() {
    let small = compressed_in_base64(16 * MIB);
    let large = compressed_in_base64(512 * MIB);
    assert!(
        large.saturating_sub(small) < SAME_HEAP,
        "the 512 MiB document needed more heap than the 16 MiB one ({large} against {small} bytes)"
    );
    assert!(large < HEAP_BUDGET);
}

/// Writes a signed and encrypted message of a `size`-byte document through the
/// `MessageWriter` in 64 KiB chunks, compressed before signing when `compressed`,
/// digesting and discarding the body after every write; returns the peak heap above the
/// level before it.
fn written_by_the_writer(size: u64, compressed: bool) -> usize {
    let parties = parties();
    let (from, to, id) = (
        As2Id::new("sender").unwrap(),
        As2Id::new("receiver").unwrap(),
        MessageId::parse("<big@writer>").unwrap(),
    );
    let message = OutboundMessage {
        as2_from: &from,
        as2_to: &to,
        message_id: &id,
        subject: None,
        payload: &[],
        content_type: "application/octet-stream",
        filename: Some("big.bin"),
        signing: Some(Signing {
            identity: &parties.sender,
            digest: MicAlgorithm::Sha256,
            scheme: SignatureScheme::RsaPkcs1v15,
        }),
        encryption: Some(Encryption {
            recipient: &parties.receiver.certificate,
            cipher: ContentCipher::Aes256Gcm,
            key_transport: KeyTransport::RsaOaep(MicAlgorithm::Sha256),
        }),
        compression: compressed.then_some(CompressionOrder::BeforeSigning),
        // A receipt MIC other than the signing digest: two digests of the signed entity.
        mdn: Some(MdnRequest {
            disposition_notification_to: "mailto:as2@example.com".into(),
            signed_receipt_algorithms: vec![MicAlgorithm::Sha512],
            receipt_delivery_option: None,
        }),
    };
    let mut document = if compressed {
        // EDI-like text that repeats every 4 KiB, stamped with its index every MiB: a
        // GiB of it deflates in seconds (random bytes would take minutes in a test
        // build).
        let text: Vec<u8> = (0..)
            .flat_map(|line: u64| {
                format!(
                    "LIN+{line}++{}:EN'\r\nQTY+21:{}'\r\nPRI+AAA:{}.{:02}'\r\n",
                    line * 7919 % 1_000_003,
                    line % 97,
                    line % 1000,
                    line % 100
                )
                .into_bytes()
            })
            .take(4096)
            .collect();
        Document {
            block: text.into_iter().cycle().take(MIB as usize).collect(),
            size,
        }
    } else {
        Document::new(size)
    };
    let mut body = Hasher::new(MessageDigest::sha256()).unwrap();
    let mut body_length = 0u64;
    let mut out = Vec::with_capacity(256 * 1024);

    let before = ALLOCATOR.allocated();
    ALLOCATOR.set_limit(before + HEAP_BUDGET).unwrap();
    let peak_before = ALLOCATOR.max_allocated();
    let (mut writer, headers) = MessageWriter::new(&message).unwrap();
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        document.block[..8].copy_from_slice(&index.to_le_bytes());
        let length = usize::try_from((size - written).min(MIB)).unwrap();
        for piece in document.block[..length].chunks(64 * 1024) {
            writer.write(piece, &mut out).unwrap();
            body.update(&out).unwrap();
            body_length += out.len() as u64;
            out.clear();
        }
        written += length as u64;
        index += 1;
    }
    let mic = writer.finish(&mut out).unwrap();
    body.update(&out).unwrap();
    body_length += out.len() as u64;
    let peak = ALLOCATOR.max_allocated();
    ALLOCATOR.set_limit(usize::MAX).unwrap();

    if compressed {
        assert!(body_length < size / 10, "the document compresses");
    } else {
        assert!(
            body_length > size,
            "the message is larger than its document"
        );
    }
    assert_eq!(mic.algorithm, MicAlgorithm::Sha512);
    assert!(
        headers
            .iter()
            .any(|(name, value)| name == "Content-Type" && value.contains("authEnveloped-data"))
    );
    let _ = body.finish().unwrap();
    println!(
        "{size} bytes (compressed: {compressed}): message {body_length} bytes, peak heap {} KiB \
         above {} KiB",
        peak.saturating_sub(before) / 1024,
        before / 1024
    );
    peak.max(peak_before).saturating_sub(before)
}

/// Most heap the writer may need: the zlib state and a piece per stage.
const WRITER_HEAP: usize = 1024 * 1024;

#[test]
fn a_gib_compressed_signed_and_encrypted_by_the_writer_in_the_heap_of_64_mib() {
    let small = written_by_the_writer(64 * MIB, true);
    let large = written_by_the_writer(1024 * MIB, true);
    assert!(
        large.saturating_sub(small) < SAME_HEAP,
        "the 1 GiB message needed more heap than the 64 MiB one ({large} against {small} bytes)"
    );
    assert!(large < WRITER_HEAP, "{large} bytes");
}

/// Without compression every byte of the GiB goes through the signing digests and the
/// cipher.
#[test]
fn a_gib_signed_and_encrypted_by_the_writer_in_the_heap_of_64_mib() {
    let small = written_by_the_writer(64 * MIB, false);
    let large = written_by_the_writer(1024 * MIB, false);
    assert!(
        large.saturating_sub(small) < SAME_HEAP,
        "the 1 GiB message needed more heap than the 64 MiB one ({large} against {small} bytes)"
    );
    assert!(large < WRITER_HEAP, "{large} bytes");
}
