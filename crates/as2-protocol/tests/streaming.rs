//! The streaming unwrap gives the same answer as the whole-buffer one whatever the
//! chunking: every layering the crate builds, split at random points (down to one byte
//! at a time), unwraps to the same document, facts and MIC, and damaged messages fail
//! with the same disposition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::sync::OnceLock;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::outbound::{self, CompressionOrder, Encryption, OutboundMessage, Signing};
use as2_protocol::unwrap::{
    PayloadInfo, PayloadSink, StreamingUnwrap, UnwrapContext, UnwrappedMessage, unwrap_message,
};
use as2_protocol::{As2Error, DispositionStatus};
use proptest::prelude::*;

struct Keys {
    sender: Identity,
    receiver: Identity,
    messages: Vec<(String, As2RequestHeaders, Vec<u8>)>,
}

type SigningChoice = Option<(MicAlgorithm, SignatureScheme)>;
type EncryptionChoice = Option<(ContentCipher, KeyTransport)>;

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sender = common::identity("sender");
        let receiver = common::identity("receiver");
        let signings: [SigningChoice; 3] = [
            None,
            Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
            Some((MicAlgorithm::Sha512, SignatureScheme::RsaPss)),
        ];
        let encryptions: [EncryptionChoice; 4] = [
            None,
            Some((ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1v15)),
            Some((
                ContentCipher::Aes128Gcm,
                KeyTransport::RsaOaep(MicAlgorithm::Sha256),
            )),
            Some((ContentCipher::TripleDesCbc, KeyTransport::RsaPkcs1v15)),
        ];
        let compressions = [
            None,
            Some(CompressionOrder::BeforeSigning),
            Some(CompressionOrder::AfterSigning),
        ];
        let payload = common::payload(3000);
        let mut messages = Vec::new();
        for signing in signings {
            for encryption in encryptions {
                for compression in compressions {
                    let (from, to, id) = (
                        As2Id::new("a").unwrap(),
                        As2Id::new("b").unwrap(),
                        MessageId::parse("<s@x>").unwrap(),
                    );
                    let built = outbound::build_message(&OutboundMessage {
                        as2_from: &from,
                        as2_to: &to,
                        message_id: &id,
                        subject: None,
                        payload: &payload,
                        content_type: "application/edi-x12",
                        filename: Some("x.edi"),
                        signing: signing.map(|(digest, scheme)| Signing {
                            identity: &sender,
                            digest,
                            scheme,
                        }),
                        encryption: encryption.map(|(cipher, key_transport)| Encryption {
                            recipient: &receiver.certificate,
                            cipher,
                            key_transport,
                        }),
                        compression,
                        mdn: None,
                    })
                    .unwrap();
                    let headers = As2RequestHeaders::parse(
                        built.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    )
                    .unwrap();
                    let name = format!("{signing:?} {encryption:?} {compression:?}");
                    messages.push((name, headers, built.body));
                }
            }
        }
        Keys {
            sender,
            receiver,
            messages,
        }
    })
}

fn whole(headers: &As2RequestHeaders, body: &[u8]) -> Result<UnwrappedMessage, As2Error> {
    let keys = keys();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    unwrap_message(
        headers,
        body,
        &UnwrapContext::new(&identities, &certificates),
    )
}

/// Unwraps `body` pushed in pieces whose sizes cycle through `sizes`.
fn in_pieces(
    headers: &As2RequestHeaders,
    body: &[u8],
    sizes: &[usize],
) -> Result<UnwrappedMessage, As2Error> {
    let keys = keys();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    let context = UnwrapContext::new(&identities, &certificates);
    let mut unwrap = StreamingUnwrap::new(headers, &context, Vec::new())?;
    let mut rest = body;
    let mut index = 0;
    while !rest.is_empty() {
        let size = sizes[index % sizes.len()].clamp(1, rest.len());
        index += 1;
        let (piece, after) = rest.split_at(size);
        unwrap.push(piece)?;
        rest = after;
    }
    let (message, data) = unwrap.finish()?;
    assert_eq!(message.payload_size, data.len() as u64);
    Ok(UnwrappedMessage {
        payload: as2_protocol::unwrap::Payload {
            content_type: message.payload.content_type,
            filename: message.payload.filename,
            data,
        },
        facts: message.facts,
        mic: message.mic,
    })
}

fn disposition(result: &Result<UnwrappedMessage, As2Error>) -> Option<DispositionStatus> {
    result.as_ref().err().map(As2Error::disposition_status)
}

#[test]
fn every_layering_unwraps_the_same_in_one_byte_pieces_and_in_uneven_ones() {
    let keys = keys();
    assert_eq!(keys.messages.len(), 36);
    for (name, headers, body) in &keys.messages {
        let expected = whole(headers, body).unwrap_or_else(|e| panic!("{name}: {e}"));
        for sizes in [&[1][..], &[3, 1, 4, 1, 5, 9, 2, 6], &[4096], &[17, 65_536]] {
            let streamed =
                in_pieces(headers, body, sizes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(streamed, expected, "{name} in pieces of {sizes:?}");
        }
    }
}

/// A sink that refuses to store: its failure is the one reported, at once.
struct FailingSink;

impl PayloadSink for FailingSink {
    fn start(&mut self, _: &PayloadInfo) -> as2_protocol::Result<()> {
        Ok(())
    }

    fn write(&mut self, _: &[u8]) -> as2_protocol::Result<()> {
        Err(As2Error::LimitExceeded("the store is full".into()))
    }
}

#[test]
fn a_failing_sink_ends_the_unwrap_with_its_own_error() {
    let keys = keys();
    let (_, headers, body) = keys
        .messages
        .iter()
        .find(|(name, ..)| name.starts_with("Some((Sha256") && name.contains("Aes256Cbc"))
        .unwrap();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    let context = UnwrapContext::new(&identities, &certificates);
    let mut unwrap = StreamingUnwrap::new(headers, &context, FailingSink).unwrap();
    let error = body
        .chunks(100)
        .find_map(|piece| unwrap.push(piece).err())
        .expect("the sink's failure stops the push");
    assert!(
        matches!(&error, As2Error::LimitExceeded(reason) if reason == "the store is full"),
        "{error}"
    );
    assert!(
        unwrap.push(b"more").is_err(),
        "a failed unwrap stays failed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_splits_of_damaged_messages_fail_the_same_way(
        message in 0usize..36,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        sizes in proptest::collection::vec(1usize..700, 1..8),
    ) {
        let keys = keys();
        let (name, headers, body) = &keys.messages[message];
        let mut damaged = body.clone();
        for (index, value) in &flips {
            let position = index.index(damaged.len());
            damaged[position] ^= value | 1;
        }
        let expected = whole(headers, &damaged);
        let streamed = in_pieces(headers, &damaged, &sizes);
        prop_assert_eq!(disposition(&streamed), disposition(&expected), "{}", name);
        if let (Ok(streamed), Ok(expected)) = (&streamed, &expected) {
            prop_assert_eq!(streamed, expected);
        }
    }

    #[test]
    fn truncated_messages_never_unwrap(message in 0usize..36, keep in any::<prop::sample::Index>()) {
        let keys = keys();
        let (name, headers, body) = &keys.messages[message];
        // A CMS structure cut anywhere is incomplete; a multipart/signed body may lose
        // the end of its closing delimiter unnoticed, and a plain body anything.
        let keep = keep.index(body.len());
        let result = in_pieces(headers, &body[..keep], &[97]);
        let outer_cms = headers
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/pkcs7-mime"));
        if outer_cms {
            prop_assert!(result.is_err(), "{} cut at {} of {} unwrapped", name, keep, body.len());
        }
    }
}
