//! Property tests: parsers never panic on hostile input, and what we write reads back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::sync::OnceLock;

use as2_protocol::ReceivedContentMic;
use as2_protocol::cms::{self, ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{
    As2Id, As2RequestHeaders, DispositionNotificationOptions, MessageId, MicAlgorithm,
    ReceiptDeliveryOption,
};
use as2_protocol::mdn::{self, Disposition, MdnVerification};
use as2_protocol::mime::{self, ContentType, Entity, MimeLimits, Multipart};
use as2_protocol::outbound::{self, CompressionOrder, Encryption, OutboundMessage, Signing};
use as2_protocol::unwrap::{UnwrapContext, unwrap_message};
use proptest::prelude::*;

struct Keys {
    sender: Identity,
    receiver: Identity,
    /// A signed, compressed and encrypted message to mutate.
    message: (As2RequestHeaders, Vec<u8>),
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sender = common::identity("sender");
        let receiver = common::identity("receiver");
        let (from, to, id) = (
            As2Id::new("a").unwrap(),
            As2Id::new("b").unwrap(),
            MessageId::parse("<p@x>").unwrap(),
        );
        let payload = common::payload(400);
        let built = outbound::build_message(&OutboundMessage {
            as2_from: &from,
            as2_to: &to,
            message_id: &id,
            subject: None,
            payload: &payload,
            content_type: "application/edi-x12",
            filename: Some("x.edi"),
            signing: Some(Signing {
                identity: &sender,
                digest: MicAlgorithm::Sha256,
                scheme: SignatureScheme::RsaPkcs1v15,
            }),
            encryption: Some(Encryption {
                recipient: &receiver.certificate,
                cipher: ContentCipher::Aes128Cbc,
                key_transport: KeyTransport::RsaPkcs1v15,
            }),
            compression: Some(CompressionOrder::AfterSigning),
            mdn: None,
        })
        .unwrap();
        let headers =
            As2RequestHeaders::parse(built.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .unwrap();
        Keys {
            sender,
            receiver,
            message: (headers, built.body),
        }
    })
}

fn unwrap_any(content_type: &str, body: &[u8]) {
    let keys = keys();
    let headers = As2RequestHeaders::parse([
        ("AS2-From", "a"),
        ("AS2-To", "b"),
        ("Message-ID", "<1@x>"),
        ("Content-Type", content_type),
    ])
    .unwrap();
    let identities = [keys.receiver.clone()];
    let certificates = [keys.sender.certificate.clone()];
    let _ = unwrap_message(
        &headers,
        body,
        &UnwrapContext::new(&identities, &certificates),
    );
}

const CONTENT_TYPES: [&str; 7] = [
    "application/pkcs7-mime; smime-type=enveloped-data",
    "application/pkcs7-mime; smime-type=authEnveloped-data",
    "application/pkcs7-mime; smime-type=compressed-data",
    "application/pkcs7-mime; smime-type=signed-data",
    "application/pkcs7-mime",
    "multipart/signed; boundary=b; protocol=\"application/pkcs7-signature\"",
    "text/plain",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mime_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), boundary in "[ -~]{0,20}") {
        let limits = MimeLimits::default();
        if let Ok(entity) = Entity::parse(&data, &limits) {
            let _ = entity.content_type();
            let _ = entity.filename();
            let _ = entity.decoded_body();
            let _ = entity.multipart(&limits);
        }
        let _ = Multipart::parse(&data, &boundary, &limits);
        let _ = mime::decode_base64(&data);
        let _ = mime::decode_quoted_printable(&data);
        let _ = mime::to_crlf(&data);
    }

    #[test]
    fn header_parsers_never_panic(value in "\\PC{0,200}") {
        let _ = As2Id::parse_header(&value);
        let _ = MessageId::parse(&value);
        let _ = DispositionNotificationOptions::parse(&value).choose_mic_algorithm(false);
        let _ = MicAlgorithm::parse_lenient(&value);
        let _ = ReceivedContentMic::parse(&value);
        let _ = Disposition::parse(&value);
        let _ = ContentType::parse(&value);
        let _ = ReceiptDeliveryOption::parse(&value);
        let _ = As2RequestHeaders::parse([("AS2-From", value.as_str()), ("AS2-To", value.as_str()), ("Message-ID", value.as_str())]);
    }

    #[test]
    fn cms_readers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let keys = keys();
        let _ = cms::decrypt(&data, std::slice::from_ref(&keys.receiver));
        let _ = cms::decompress(&data, 1 << 20);
        let options = cms::VerifyOptions { certificates: std::slice::from_ref(&keys.sender.certificate), allow_md5: false, check_validity: true };
        let _ = cms::verify_opaque(&data, &options);
        let _ = cms::verify_detached(&data, &[b"content".as_slice()], &options);
    }

    #[test]
    fn unwrap_never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..1024), kind in 0usize..CONTENT_TYPES.len()) {
        unwrap_any(CONTENT_TYPES[kind], &data);
    }

    #[test]
    fn mdn_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let verification = MdnVerification { partner_certificates: &[], allow_md5: false, check_certificate_validity: true, require_signature: false };
        let _ = mdn::parse_mdn("multipart/report; report-type=disposition-notification; boundary=b", &data, &verification);
        let _ = mdn::parse_mdn("message/disposition-notification", &data, &verification);
    }

    #[test]
    fn as2_ids_round_trip(id in "[ -~]{1,128}") {
        let parsed = As2Id::new(id.clone()).unwrap();
        let reparsed = As2Id::parse_header(&parsed.to_header_value()).unwrap();
        prop_assert_eq!(reparsed.as_str(), id.as_str());
    }

    #[test]
    fn disposition_options_round_trip(indices in proptest::collection::vec(0usize..6, 1..6)) {
        let algorithms: Vec<MicAlgorithm> = indices.iter().map(|i| MicAlgorithm::ALL[*i]).collect();
        let options = DispositionNotificationOptions::signed_receipt(&algorithms);
        let parsed = DispositionNotificationOptions::parse(&options.to_string());
        prop_assert_eq!(&parsed, &options);
        prop_assert_eq!(parsed.choose_mic_algorithm(true).unwrap(), algorithms.first().copied());
    }

    #[test]
    fn multipart_parts_keep_their_bytes(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5), crlf in any::<bool>()) {
        let boundary = "=_prop_boundary_7f3a";
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut body = b"preamble".to_vec();
        let mut expected = Vec::new();
        for part in &parts {
            // Part bodies must not contain the delimiter (they never do here), and a CR
            // right before an LF delimiter line would rightly be read as a CRLF delimiter.
            let mut part = part.clone();
            if part.last() == Some(&b'\r') {
                part.push(b'.');
            }
            let part = &part;
            let entity = [b"Content-Type: application/octet-stream".as_slice(), eol, eol, part].concat();
            body.extend([eol, b"--", boundary.as_bytes(), eol, &entity].concat());
            expected.push(entity);
        }
        body.extend([eol, b"--", boundary.as_bytes(), b"--", eol, b"epilogue"].concat());
        let multipart = Multipart::parse(&body, boundary, &MimeLimits::default()).unwrap();
        let raws: Vec<Vec<u8>> = multipart.parts.iter().map(|p| p.raw().to_vec()).collect();
        prop_assert_eq!(raws, expected);
        prop_assert_eq!(multipart.epilogue, b"epilogue");
    }

    #[test]
    fn base64_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert_eq!(mime::decode_base64(&mime::encode_base64_lines(&data)).unwrap(), data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_messages_fail_cleanly(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let keys = keys();
        let (headers, body) = &keys.message;
        let mut mutated = body.clone();
        for (index, value) in &flips {
            let position = index.index(mutated.len());
            mutated[position] ^= value | 1;
        }
        let identities = [keys.receiver.clone()];
        let certificates = [keys.sender.certificate.clone()];
        let _ = unwrap_message(headers, &mutated, &UnwrapContext::new(&identities, &certificates));
    }
}
