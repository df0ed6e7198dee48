//! Every way an encrypted message can fail before its first authenticated byte gives the
//! same error text and disposition (no padding oracle): tampered, truncated or
//! misaddressed ciphertext, a corrupted wrapped key, a failed GCM tag. A partnership can
//! refuse RSA PKCS #1 v1.5 key transport.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use as2_protocol::cms::{self, ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::outbound::{self, BuiltMessage, Encryption, OutboundMessage, Signing};
use as2_protocol::unwrap::{UnwrapContext, unwrap_message};
use as2_protocol::{As2Error, DECRYPTION_FAILED, DispositionStatus, ProcessingError};
use as2_testkit::tamper::{flipped, rsa2048_wrapped_key};

/// Zero bytes after the ciphertext of a CBC message as the crate writes it: the
/// end-of-contents of the encryptedContent, the encryptedContentInfo, the
/// EnvelopedData, the `[0]` and the ContentInfo.
const CBC_TRAILER: usize = 10;
/// The GCM tag (an OCTET STRING of 16 bytes) and the last three end-of-contents.
const GCM_TAG_END: usize = 6;

struct Fixture {
    sender: Identity,
    receiver: Identity,
    stranger: Identity,
}

impl Fixture {
    fn new() -> Self {
        Self {
            sender: common::identity("sender"),
            receiver: common::identity("receiver"),
            stranger: common::identity("stranger"),
        }
    }

    /// A signed message encrypted for `recipient`.
    fn message(
        &self,
        recipient: &Identity,
        cipher: ContentCipher,
        key_transport: KeyTransport,
    ) -> BuiltMessage {
        let from = As2Id::new("Sender Co").unwrap();
        let to = As2Id::new("receiver").unwrap();
        let message_id = MessageId::generate("test.example").unwrap();
        let payload = common::payload(2000);
        outbound::build_message(&OutboundMessage {
            as2_from: &from,
            as2_to: &to,
            message_id: &message_id,
            subject: Some("test"),
            payload: &payload,
            content_type: "application/EDIFACT",
            filename: Some("orders.edi"),
            signing: Some(Signing {
                identity: &self.sender,
                digest: MicAlgorithm::Sha256,
                scheme: SignatureScheme::RsaPkcs1v15,
            }),
            encryption: Some(Encryption {
                recipient: &recipient.certificate,
                cipher,
                key_transport,
            }),
            compression: None,
            mdn: None,
        })
        .unwrap()
    }

    /// Unwraps `body` (with the headers of `built`) as the receiver, with `refuse` as
    /// the PKCS #1 v1.5 switch.
    fn unwrap(&self, built: &BuiltMessage, body: &[u8], refuse: bool) -> Result<(), As2Error> {
        let headers =
            As2RequestHeaders::parse(built.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .unwrap();
        let identities = [self.receiver.clone()];
        let certificates = [self.sender.certificate.clone()];
        let mut context = UnwrapContext::new(&identities, &certificates);
        context.require_signature = true;
        context.refuse_rsa_pkcs1v15_key_transport = refuse;
        unwrap_message(&headers, body, &context).map(|_| ())
    }
}

#[test]
fn every_failure_before_the_first_authenticated_byte_reads_the_same() {
    let fixture = Fixture::new();
    let cbc =
        |key_transport| fixture.message(&fixture.receiver, ContentCipher::Aes256Cbc, key_transport);
    let pkcs1 = cbc(KeyTransport::RsaPkcs1v15);
    let oaep = cbc(KeyTransport::RsaOaep(MicAlgorithm::Sha256));
    let gcm = fixture.message(
        &fixture.receiver,
        ContentCipher::Aes128Gcm,
        KeyTransport::RsaPkcs1v15,
    );
    let misaddressed = fixture.message(
        &fixture.stranger,
        ContentCipher::Aes256Cbc,
        KeyTransport::RsaPkcs1v15,
    );
    let misaddressed_gcm = fixture.message(
        &fixture.stranger,
        ContentCipher::Aes256Gcm,
        KeyTransport::RsaOaep(MicAlgorithm::Sha1),
    );
    // The intact messages unwrap: what fails below fails because of the damage.
    for built in [&pkcs1, &oaep, &gcm] {
        fixture.unwrap(built, &built.body, false).unwrap();
    }

    let length = pkcs1.body.len();
    let cases: Vec<(&str, &BuiltMessage, Vec<u8>)> = vec![
        // The last byte of the next-to-last block: the padding no longer reads.
        (
            "tampered padding",
            &pkcs1,
            flipped(&pkcs1.body, length - CBC_TRAILER - 17),
        ),
        // A block in the middle: the padding is intact, the content inside is garbage
        // (its MIME or its signature fails).
        ("tampered content", &pkcs1, flipped(&pkcs1.body, length / 2)),
        (
            "truncated ciphertext",
            &pkcs1,
            pkcs1.body[..length * 2 / 3].to_vec(),
        ),
        (
            "truncated at a block end",
            &pkcs1,
            [&pkcs1.body[..length - CBC_TRAILER - 32], &[0; CBC_TRAILER]].concat(),
        ),
        (
            "wrong recipient certificate",
            &misaddressed,
            misaddressed.body.clone(),
        ),
        (
            "wrong recipient certificate, GCM and OAEP",
            &misaddressed_gcm,
            misaddressed_gcm.body.clone(),
        ),
        (
            "corrupted PKCS #1 v1.5 wrapped key",
            &pkcs1,
            flipped(&pkcs1.body, rsa2048_wrapped_key(&pkcs1.body) + 100),
        ),
        (
            "corrupted first byte of the wrapped key",
            &pkcs1,
            flipped(&pkcs1.body, rsa2048_wrapped_key(&pkcs1.body)),
        ),
        (
            "corrupted OAEP wrapped key",
            &oaep,
            flipped(&oaep.body, rsa2048_wrapped_key(&oaep.body) + 7),
        ),
        (
            "GCM tag",
            &gcm,
            flipped(&gcm.body, gcm.body.len() - GCM_TAG_END - 3),
        ),
        (
            "GCM ciphertext",
            &gcm,
            flipped(&gcm.body, gcm.body.len() / 2),
        ),
    ];
    let mut details = Vec::new();
    for (name, built, body) in &cases {
        let error = fixture.unwrap(built, body, false).unwrap_err();
        assert_eq!(error.to_string(), DECRYPTION_FAILED, "{name}: {error:?}");
        assert_eq!(
            error.disposition_status(),
            DispositionStatus::Error(ProcessingError::DecryptionFailed),
            "{name}"
        );
        details.push((name, error.detail()));
    }
    // The reasons are kept for our logs: a key that did not open says so there.
    for (name, detail) in &details {
        let substituted = name.contains("wrong recipient") || name.contains("wrapped key");
        assert_eq!(
            detail.contains("does not decrypt with our keys"),
            substituted,
            "{name}: {detail}"
        );
    }

    // The whole-buffer decryption reads the same.
    let error =
        cms::decrypt(&misaddressed.body, std::slice::from_ref(&fixture.receiver)).unwrap_err();
    assert_eq!(error.to_string(), DECRYPTION_FAILED);
    let error = cms::decrypt(&pkcs1.body, &[]).unwrap_err();
    assert_eq!(error.to_string(), DECRYPTION_FAILED);
}

#[test]
fn a_partnership_can_refuse_pkcs1v15_key_transport() {
    let fixture = Fixture::new();
    let pkcs1 = fixture.message(
        &fixture.receiver,
        ContentCipher::Aes256Cbc,
        KeyTransport::RsaPkcs1v15,
    );
    let error = fixture.unwrap(&pkcs1, &pkcs1.body, true).unwrap_err();
    assert_eq!(
        error.disposition_status(),
        DispositionStatus::Error(ProcessingError::InsufficientMessageSecurity),
        "{error}"
    );
    // Decided on the algorithm identifier alone: a wrapped key that does not open is
    // refused the same way.
    let corrupted = flipped(&pkcs1.body, rsa2048_wrapped_key(&pkcs1.body) + 100);
    assert_eq!(
        fixture
            .unwrap(&pkcs1, &corrupted, true)
            .unwrap_err()
            .to_string(),
        error.to_string()
    );
    for key_transport in [
        KeyTransport::RsaOaep(MicAlgorithm::Sha1),
        KeyTransport::RsaOaep(MicAlgorithm::Sha256),
    ] {
        let oaep = fixture.message(&fixture.receiver, ContentCipher::Aes128Gcm, key_transport);
        fixture.unwrap(&oaep, &oaep.body, true).unwrap();
    }
}
