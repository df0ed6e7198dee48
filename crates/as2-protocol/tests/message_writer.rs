//! The streaming [`MessageWriter`]: every layering, written in one piece, one byte at a
//! time, in random pieces and in large ones, unwraps (whole-buffer and streaming, in
//! random pieces) to the document, with the MIC the writer returned and the signature
//! and encryption it was asked for; and the `openssl cms` command line decrypts and
//! verifies what it writes (asn1crypto decompresses it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use as2_protocol::ReceivedContentMic;
use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mime::{Entity, MimeLimits};
use as2_protocol::outbound::{
    CompressionOrder, Encryption, MdnRequest, MessageWriter, OutboundMessage, Signing,
};
use as2_protocol::unwrap::{
    CompressionPlacement, StreamingUnwrap, UnwrapContext, UnwrappedMessage, unwrap_message,
};

struct Keys {
    sender: Identity,
    receiver: Identity,
    ids: (As2Id, As2Id, MessageId),
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        sender: common::identity("sender"),
        receiver: common::identity("receiver"),
        ids: (
            As2Id::new("sender").unwrap(),
            As2Id::new("receiver").unwrap(),
            MessageId::parse("<writer@test>").unwrap(),
        ),
    })
}

/// A small xorshift generator: reproducible random piece sizes.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % bound as u64).unwrap()
    }
}

/// How the document is cut into the pieces handed to `write`.
#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    Bytes,
    Random(u64),
    Large,
}

impl Split {
    fn sizes(self, length: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut left = length;
        let mut random = match self {
            Self::Random(seed) => Random(seed | 1),
            _ => Random(1),
        };
        while left > 0 {
            let size = match self {
                Self::Whole => left,
                Self::Bytes => 1,
                Self::Random(_) => 1 + random.below(9000),
                Self::Large => 100_000,
            }
            .min(left);
            sizes.push(size);
            left -= size;
        }
        sizes
    }
}

/// Writes `message` (whose payload is the document) in the pieces `split` makes, with
/// empty writes mixed in; returns the HTTP headers, the body and the MIC.
fn write_message(
    message: &OutboundMessage<'_>,
    split: Split,
) -> (As2RequestHeaders, Vec<u8>, ReceivedContentMic) {
    let (mut writer, headers) = MessageWriter::new(message).unwrap();
    let mut body = Vec::new();
    let mut rest = message.payload;
    for (index, size) in split.sizes(rest.len()).into_iter().enumerate() {
        let (piece, after) = rest.split_at(size);
        writer.write(piece, &mut body).unwrap();
        if index % 7 == 3 {
            writer.write(&[], &mut body).unwrap();
        }
        rest = after;
    }
    let mic = writer.finish(&mut body).unwrap();
    let headers =
        As2RequestHeaders::parse(headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap();
    (headers, body, mic)
}

fn context<'a>(
    identities: &'a [Identity],
    certificates: &'a [openssl::x509::X509],
) -> UnwrapContext<'a> {
    let mut context = UnwrapContext::new(identities, certificates);
    context.require_signature = false;
    context
}

/// Unwraps in pieces of random sizes through the streaming unwrap.
fn unwrap_streaming(headers: &As2RequestHeaders, body: &[u8], seed: u64) -> UnwrappedMessage {
    let keys = keys();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    let context = context(&identities, &certificates);
    let mut unwrap = StreamingUnwrap::new(headers, &context, Vec::new()).unwrap();
    let mut random = Random(seed | 1);
    let mut rest = body;
    while !rest.is_empty() {
        let size = (1 + random.below(5000)).min(rest.len());
        let (piece, after) = rest.split_at(size);
        unwrap.push(piece).unwrap();
        rest = after;
    }
    let (message, data) = unwrap.finish().unwrap();
    UnwrappedMessage {
        payload: as2_protocol::unwrap::Payload {
            content_type: message.payload.content_type,
            filename: message.payload.filename,
            data,
        },
        facts: message.facts,
        mic: message.mic,
    }
}

fn unwrap_whole(headers: &As2RequestHeaders, body: &[u8]) -> UnwrappedMessage {
    let keys = keys();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    unwrap_message(headers, body, &context(&identities, &certificates)).unwrap()
}

type SigningChoice = Option<(MicAlgorithm, SignatureScheme)>;
type EncryptionChoice = Option<(ContentCipher, KeyTransport)>;

const SIGNINGS: [SigningChoice; 3] = [
    None,
    Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
    Some((MicAlgorithm::Sha384, SignatureScheme::RsaPss)),
];

const ENCRYPTIONS: [EncryptionChoice; 5] = [
    None,
    Some((ContentCipher::TripleDesCbc, KeyTransport::RsaPkcs1v15)),
    Some((
        ContentCipher::Aes128Cbc,
        KeyTransport::RsaOaep(MicAlgorithm::Sha256),
    )),
    Some((
        ContentCipher::Aes256Gcm,
        KeyTransport::RsaOaep(MicAlgorithm::Sha1),
    )),
    Some((ContentCipher::Aes192Gcm, KeyTransport::RsaPkcs1v15)),
];

const COMPRESSIONS: [Option<CompressionOrder>; 3] = [
    None,
    Some(CompressionOrder::BeforeSigning),
    Some(CompressionOrder::AfterSigning),
];

fn message<'a>(
    payload: &'a [u8],
    signing: SigningChoice,
    encryption: EncryptionChoice,
    compression: Option<CompressionOrder>,
    mdn: Option<MdnRequest>,
) -> OutboundMessage<'a> {
    let keys = keys();
    OutboundMessage {
        as2_from: &keys.ids.0,
        as2_to: &keys.ids.1,
        message_id: &keys.ids.2,
        subject: Some("streamed"),
        payload,
        content_type: "application/edi-x12",
        filename: Some("big.edi"),
        signing: signing.map(|(digest, scheme)| Signing {
            identity: &keys.sender,
            digest,
            scheme,
        }),
        encryption: encryption.map(|(cipher, key_transport)| Encryption {
            recipient: &keys.receiver.certificate,
            cipher,
            key_transport,
        }),
        compression,
        mdn,
    }
}

/// A signed receipt asking for `algorithm` (which may differ from the signing digest,
/// so that the writer digests the signed entity twice).
fn receipt(algorithm: MicAlgorithm) -> MdnRequest {
    MdnRequest {
        disposition_notification_to: "mailto:as2@example.com".into(),
        signed_receipt_algorithms: vec![algorithm],
        receipt_delivery_option: None,
    }
}

fn check(
    name: &str,
    message: &OutboundMessage<'_>,
    split: Split,
    unwrapped: &UnwrappedMessage,
    mic: &ReceivedContentMic,
) {
    assert_eq!(unwrapped.payload.data, message.payload, "{name} {split:?}");
    assert_eq!(unwrapped.payload.filename.as_deref(), Some("big.edi"));
    assert_eq!(unwrapped.payload.content_type, "application/edi-x12");
    assert_eq!(
        &unwrapped.mic, mic,
        "{name} {split:?}: the MIC the receiver computes"
    );
    match (message.signing, &unwrapped.facts.signature) {
        (None, None) => {}
        (Some(signing), Some(facts)) => {
            assert_eq!(facts.digest, signing.digest, "{name}");
            assert_eq!(facts.scheme, signing.scheme, "{name}");
        }
        (expected, found) => panic!("{name}: signing {expected:?}, found {found:?}"),
    }
    match (message.encryption, &unwrapped.facts.encryption) {
        (None, None) => {}
        (Some(encryption), Some(facts)) => {
            assert_eq!(facts.cipher, encryption.cipher, "{name}");
            assert_eq!(facts.key_transport, encryption.key_transport, "{name}");
        }
        (expected, found) => panic!("{name}: encryption {expected:?}, found {found:?}"),
    }
    let compression = message
        .compression
        .map(|order| match (order, message.signing) {
            (_, None) => CompressionPlacement::Unsigned,
            (CompressionOrder::BeforeSigning, Some(_)) => CompressionPlacement::BeforeSigning,
            (CompressionOrder::AfterSigning, Some(_)) => CompressionPlacement::AfterSigning,
        });
    assert_eq!(unwrapped.facts.compression, compression, "{name}");
}

#[test]
fn every_layering_written_in_any_pieces_unwraps_to_the_document_and_the_mic() {
    let small = common::payload(3000);
    let large = common::payload(300_000);
    let mut cases = 0;
    for signing in SIGNINGS {
        for encryption in ENCRYPTIONS {
            for compression in COMPRESSIONS {
                let name = format!("{signing:?} {encryption:?} {compression:?}");
                // Every other case asks for a receipt MIC other than the signing digest.
                let mdn = (cases % 2 == 1).then(|| receipt(MicAlgorithm::Sha512));
                for (payload, splits) in [
                    (
                        &small,
                        &[Split::Whole, Split::Bytes, Split::Random(cases)][..],
                    ),
                    (&large, &[Split::Large, Split::Random(cases + 99)][..]),
                ] {
                    let message = message(payload, signing, encryption, compression, mdn.clone());
                    for &split in splits {
                        let (headers, body, mic) = write_message(&message, split);
                        let expected_algorithm = if mdn.is_some() {
                            MicAlgorithm::Sha512
                        } else {
                            signing.map_or(MicAlgorithm::Sha1, |(digest, _)| digest)
                        };
                        assert_eq!(mic.algorithm, expected_algorithm, "{name}");
                        let whole = unwrap_whole(&headers, &body);
                        check(&name, &message, split, &whole, &mic);
                        let streamed = unwrap_streaming(&headers, &body, cases + 7);
                        assert_eq!(streamed, whole, "{name} {split:?}");
                    }
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 45);
}

#[test]
fn the_mic_is_over_the_raw_payload_or_the_payload_entity_when_unsigned() {
    let payload = common::payload(5000);
    let entity = [
        b"Content-Type: application/edi-x12\r\nContent-Transfer-Encoding: binary\r\nContent-Disposition: attachment; filename=\"big.edi\"\r\n\r\n".as_slice(),
        &payload,
    ]
    .concat();
    let plain = message(&payload, None, None, None, None);
    let (_, body, mic) = write_message(&plain, Split::Random(5));
    assert_eq!(body, payload, "a plain message's body is the document");
    assert_eq!(
        mic,
        ReceivedContentMic::compute(MicAlgorithm::Sha1, &payload).unwrap()
    );
    for (encryption, compression) in [
        (ENCRYPTIONS[2], None),
        (None, Some(CompressionOrder::AfterSigning)),
        (ENCRYPTIONS[3], Some(CompressionOrder::BeforeSigning)),
    ] {
        let wrapped = message(
            &payload,
            None,
            encryption,
            compression,
            Some(receipt(MicAlgorithm::Sha256)),
        );
        let (_, _, mic) = write_message(&wrapped, Split::Bytes);
        assert_eq!(
            mic,
            ReceivedContentMic::compute(MicAlgorithm::Sha256, &entity).unwrap()
        );
    }
}

#[test]
fn an_empty_document_is_a_message_too() {
    for signing in SIGNINGS {
        for encryption in ENCRYPTIONS {
            for compression in COMPRESSIONS {
                let message = message(b"", signing, encryption, compression, None);
                let (headers, body, mic) = write_message(&message, Split::Whole);
                let name = format!("{signing:?} {encryption:?} {compression:?}");
                check(
                    &name,
                    &message,
                    Split::Whole,
                    &unwrap_whole(&headers, &body),
                    &mic,
                );
            }
        }
    }
}

#[test]
fn the_writer_checks_the_message_before_writing() {
    let payload = b"x";
    let mut bad = message(payload, None, None, None, None);
    bad.content_type = "text/plain\r\nX-Injected: 1";
    assert!(MessageWriter::new(&bad).is_err());
    let mut bad = message(payload, None, None, None, None);
    bad.filename = Some("a\nb");
    assert!(MessageWriter::new(&bad).is_err());
}

#[test]
fn the_body_is_ber_with_indefinite_lengths_and_the_http_headers_name_the_outer_entity() {
    let payload = common::payload(40_000);
    let encrypted = message(&payload, SIGNINGS[1], ENCRYPTIONS[2], None, None);
    let (headers, body, _) = write_message(&encrypted, Split::Random(3));
    assert_eq!(&body[..2], [0x30, 0x80], "an indefinite-length ContentInfo");
    assert_eq!(
        &body[body.len() - 6..],
        [0; 6],
        "ends with end-of-contents octets"
    );
    assert_eq!(
        headers.content_type.as_deref(),
        Some("application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m")
    );
    let gcm = message(&payload, None, ENCRYPTIONS[3], None, None);
    let (headers, body, _) = write_message(&gcm, Split::Whole);
    assert!(
        headers
            .content_type
            .unwrap()
            .contains("smime-type=authEnveloped-data")
    );
    // The mac (a 16-byte OCTET STRING) follows the authEncryptedContentInfo.
    let tail = &body[body.len() - 28..];
    assert_eq!(&tail[..6], [0, 0, 0, 0, 0x04, 16], "{tail:02x?}");
    let signed = message(&payload, SIGNINGS[2], None, None, None);
    let (headers, body, _) = write_message(&signed, Split::Bytes);
    assert!(
        headers
            .content_type
            .unwrap()
            .starts_with("multipart/signed;")
    );
    assert!(body.starts_with(b"--"));
    assert!(body.ends_with(b"--\r\n"));
}

// ---------------------------------------------------------------------------------------
// The openssl command line as the independent reader.

use as2_testkit::openssl_cli::run as openssl;

fn decrypt(dir: &Path, body: &[u8]) -> Vec<u8> {
    std::fs::write(dir.join("message.der"), body).unwrap();
    openssl(
        dir,
        &[
            "cms",
            "-decrypt",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "message.der",
            "-recip",
            "receiver.pem",
            "-inkey",
            "receiver.key",
            "-out",
            "decrypted.bin",
        ],
    );
    std::fs::read(dir.join("decrypted.bin")).unwrap()
}

/// Verifies a multipart/signed entity (headers and body) the detached way: the signed
/// part's exact bytes as `-content`, the signature part's DER; returns the signed part.
fn verify_detached(dir: &Path, signed_entity: &[u8]) -> Vec<u8> {
    let limits = MimeLimits::default();
    let entity = Entity::parse(signed_entity, &limits).unwrap();
    assert!(entity.content_type().is("multipart/signed"));
    let multipart = entity.multipart(&limits).unwrap();
    let [content, signature] = &multipart.parts[..] else {
        panic!("two parts")
    };
    std::fs::write(dir.join("content.bin"), content.raw()).unwrap();
    std::fs::write(dir.join("signature.der"), signature.decoded_body().unwrap()).unwrap();
    openssl(
        dir,
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "signature.der",
            "-content",
            "content.bin",
            "-CAfile",
            "sender.pem",
            "-out",
            "verified.bin",
        ],
    );
    let verified = std::fs::read(dir.join("verified.bin")).unwrap();
    assert_eq!(verified, content.raw());
    verified
}

/// Decompresses a compressed-data entity (headers and body) with asn1crypto and Python's
/// zlib (Debian's openssl is built without zlib, so `openssl cms -uncompress` cannot).
fn uncompress(dir: &Path, compressed_entity: &[u8]) -> Vec<u8> {
    let entity = Entity::parse(compressed_entity, &MimeLimits::default()).unwrap();
    assert!(
        entity
            .header("Content-Type")
            .unwrap()
            .contains("smime-type=compressed-data")
    );
    std::fs::write(dir.join("compressed.der"), entity.body()).unwrap();
    let script = "import sys\nfrom asn1crypto import cms\n\
        info = cms.ContentInfo.load(open(sys.argv[1], 'rb').read())\n\
        assert info['content_type'].native == 'compressed_data'\n\
        sys.stdout.buffer.write(info['content'].decompressed)\n";
    let output = Command::new(as2_testkit::python())
        .arg("-c")
        .arg(script)
        .arg(dir.join("compressed.der"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "asn1crypto: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn openssl_decrypts_and_verifies_what_the_writer_streams() {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("sender.pem"), common::cert_pem(&keys.sender)).unwrap();
    std::fs::write(dir.join("receiver.pem"), common::cert_pem(&keys.receiver)).unwrap();
    std::fs::write(dir.join("receiver.key"), common::key_pem(&keys.receiver)).unwrap();
    let payload = common::payload(70_000);
    let entity = [
        b"Content-Type: application/edi-x12\r\nContent-Transfer-Encoding: binary\r\nContent-Disposition: attachment; filename=\"big.edi\"\r\n\r\n".as_slice(),
        &payload,
    ]
    .concat();
    let transports = [
        KeyTransport::RsaPkcs1v15,
        KeyTransport::RsaOaep(MicAlgorithm::Sha1),
        KeyTransport::RsaOaep(MicAlgorithm::Sha256),
    ];
    // Encrypted only: every cipher and key transport.
    for (index, cipher) in ContentCipher::ALL.into_iter().enumerate() {
        let key_transport = transports[index % transports.len()];
        let split = [Split::Bytes, Split::Random(index as u64), Split::Large][index % 3];
        let encrypted = message(&payload, None, Some((cipher, key_transport)), None, None);
        let (_, body, _) = write_message(&encrypted, split);
        assert_eq!(
            decrypt(dir, &body),
            entity,
            "{cipher} {key_transport} {split:?}"
        );
    }
    // Signed (both schemes) and encrypted: the decrypted entity verifies.
    for (signing, encryption) in [(SIGNINGS[1], ENCRYPTIONS[1]), (SIGNINGS[2], ENCRYPTIONS[3])] {
        let signed = message(&payload, signing, encryption, None, None);
        let (_, body, mic) = write_message(&signed, Split::Random(11));
        let signed_entity = decrypt(dir, &body);
        assert_eq!(verify_detached(dir, &signed_entity), entity);
        let (digest, _) = signing.unwrap();
        assert_eq!(mic, ReceivedContentMic::compute(digest, &entity).unwrap());
    }
    // Compressed, signed, encrypted; and signed, compressed, encrypted.
    let compressed_first = message(
        &payload,
        SIGNINGS[2],
        ENCRYPTIONS[4],
        Some(CompressionOrder::BeforeSigning),
        None,
    );
    let (_, body, mic) = write_message(&compressed_first, Split::Bytes);
    let compressed_entity = verify_detached(dir, &decrypt(dir, &body));
    assert_eq!(
        mic,
        ReceivedContentMic::compute(MicAlgorithm::Sha384, &compressed_entity).unwrap()
    );
    assert_eq!(uncompress(dir, &compressed_entity), entity);
    let compressed_after = message(
        &payload,
        SIGNINGS[1],
        ENCRYPTIONS[2],
        Some(CompressionOrder::AfterSigning),
        None,
    );
    let (_, body, _) = write_message(&compressed_after, Split::Random(12));
    let signed_entity = uncompress(dir, &decrypt(dir, &body));
    assert_eq!(verify_detached(dir, &signed_entity), entity);
}
