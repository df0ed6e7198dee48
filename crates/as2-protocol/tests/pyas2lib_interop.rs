//! Interoperability with pyas2lib, an independent AS2 implementation (Python).
//!
//! The interpreter comes from `AS2_TEST_PYTHON`, else `<workspace>/.venv-test/bin/python`
//! (see `as2_testkit::python`); the repository's test command creates that virtualenv. Missing Python is a failure,
//! never a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mdn::{self, MdnReport, MdnToSend, MdnVerification};
use as2_protocol::outbound::{
    self, CompressionOrder, Encryption, MdnRequest, OutboundMessage, Signing,
};
use as2_protocol::unwrap::{UnwrapContext, unwrap_message};
use as2_protocol::{As2Error, DispositionStatus};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

fn peer(command: &str, request: &Value) -> Value {
    let output =
        as2_testkit::interop_script("pyas2lib_peer.py", command, request.to_string().as_bytes());
    serde_json::from_slice(&output).unwrap()
}

struct Parties {
    ours: Identity,
    theirs: Identity,
}

const OUR_ID: &str = "Gateway Test";
const THEIR_ID: &str = "pyas2lib";

impl Parties {
    fn new() -> Self {
        Self {
            ours: common::identity("gateway"),
            theirs: common::identity("pyas2lib"),
        }
    }

    /// Keys for a request in which pyas2lib is the sender and we receive.
    fn pyas2lib_sends(&self) -> Value {
        self.pyas2lib_as("sender", "receiver")
    }

    /// Keys for a request in which we send and pyas2lib receives.
    fn pyas2lib_receives(&self) -> Value {
        self.pyas2lib_as("receiver", "sender")
    }

    /// pyas2lib plays `role` with its key; we play `other_role`, known by our certificate.
    fn pyas2lib_as(&self, role: &str, other_role: &str) -> Value {
        json!({
            format!("{role}_id"): THEIR_ID,
            format!("{role}_key_pem"): common::key_pem(&self.theirs),
            format!("{role}_cert_pem"): common::cert_pem(&self.theirs),
            format!("{other_role}_id"): OUR_ID,
            format!("{other_role}_cert_pem"): common::cert_pem(&self.ours),
        })
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    base
}

fn headers_of(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn headers_json(headers: &[(String, String)]) -> Value {
    Value::Array(headers.iter().map(|(n, v)| json!([n, v])).collect())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap()
}

fn decode(value: &Value) -> Vec<u8> {
    BASE64.decode(value.as_str().unwrap()).unwrap()
}

/// CRLF lines: pyas2lib canonicalizes text payloads, so bare LFs would not survive its side.
fn payload() -> Vec<u8> {
    b"UNB+UNOA:2+PYAS2LIB+GATEWAY+260101:1200+1'\r\nUNH+1+ORDERS:D:96A:UN'\r\n".repeat(30)
}

#[test]
fn pyas2lib_messages_unwrap_with_the_mic_pyas2lib_computes() {
    let parties = Parties::new();
    let digests: [Option<&str>; 6] = [
        None,
        Some("sha1"),
        Some("sha224"),
        Some("sha256"),
        Some("sha384"),
        Some("sha512"),
    ];
    let ciphers = [
        None,
        Some("tripledes_192_cbc"),
        Some("aes_128_cbc"),
        Some("aes_192_cbc"),
        Some("aes_256_cbc"),
    ];
    let mut requests = Vec::new();
    for digest in digests {
        for cipher in ciphers {
            for compress in [false, true] {
                requests.push(merge(
                    parties.pyas2lib_sends(),
                    json!({
                        "sign": digest.is_some(),
                        "digest_alg": digest.unwrap_or("sha256"),
                        "encrypt": cipher.is_some(),
                        "enc_alg": cipher.unwrap_or("tripledes_192_cbc"),
                        "compress": compress,
                        "mdn_mode": "SYNC",
                        "mdn_digest_alg": digest,
                        "payload_b64": BASE64.encode(payload()),
                        "filename": "orders.edi",
                    }),
                ));
            }
        }
    }
    let built = peer("build", &Value::Array(requests.clone()));
    let identities = [parties.ours.clone()];
    let certificates = [parties.theirs.certificate.clone()];
    let context = UnwrapContext::new(&identities, &certificates);
    for (request, message) in requests.iter().zip(built.as_array().unwrap()) {
        let headers = headers_of(&message["headers"]);
        let parsed =
            As2RequestHeaders::parse(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .unwrap();
        assert_eq!(parsed.as2_to.as_str(), OUR_ID);
        let unwrapped = unwrap_message(&parsed, &decode(&message["body_b64"]), &context)
            .unwrap_or_else(|e| panic!("{request}: {e}"));
        assert_eq!(unwrapped.payload.data, payload(), "{request}");
        assert_eq!(unwrapped.payload.filename.as_deref(), Some("orders.edi"));
        assert_eq!(
            unwrapped.facts.signature.is_some(),
            request["sign"].as_bool().unwrap()
        );
        assert_eq!(
            unwrapped.facts.encryption.is_some(),
            request["encrypt"].as_bool().unwrap()
        );
        assert_eq!(
            unwrapped.facts.compression.is_some(),
            request["compress"].as_bool().unwrap()
        );
        // pyas2lib computes a MIC for every message it signs: a missing one fails.
        if let Some(mic) = as2_testkit::interop_mic(message, request["sign"].as_bool().unwrap()) {
            assert_eq!(unwrapped.mic.digest_base64(), mic, "{request}");
            let digest =
                MicAlgorithm::parse_lenient(message["digest_alg"].as_str().unwrap()).unwrap();
            assert_eq!(unwrapped.mic.algorithm, digest);
        }
    }
}

fn our_message(
    parties: &Parties,
    signing: Option<MicAlgorithm>,
    cipher: Option<ContentCipher>,
    compression: Option<CompressionOrder>,
    mdn_algorithms: Vec<MicAlgorithm>,
) -> outbound::BuiltMessage {
    let (from, to) = (As2Id::new(OUR_ID).unwrap(), As2Id::new(THEIR_ID).unwrap());
    let message_id = MessageId::generate("gateway.test").unwrap();
    let payload = payload();
    outbound::build_message(&OutboundMessage {
        as2_from: &from,
        as2_to: &to,
        message_id: &message_id,
        subject: Some("interop"),
        payload: &payload,
        content_type: "application/EDIFACT",
        filename: Some("orders.edi"),
        signing: signing.map(|digest| Signing {
            identity: &parties.ours,
            digest,
            scheme: SignatureScheme::RsaPkcs1v15,
        }),
        encryption: cipher.map(|cipher| Encryption {
            recipient: &parties.theirs.certificate,
            cipher,
            key_transport: KeyTransport::RsaPkcs1v15,
        }),
        compression,
        mdn: Some(MdnRequest {
            disposition_notification_to: "mdn@gateway.test".into(),
            signed_receipt_algorithms: mdn_algorithms,
            receipt_delivery_option: None,
        }),
    })
    .unwrap()
}

#[test]
fn our_messages_unwrap_in_pyas2lib_and_its_mdns_verify_here() {
    let parties = Parties::new();
    let digests = [
        MicAlgorithm::Sha1,
        MicAlgorithm::Sha224,
        MicAlgorithm::Sha256,
        MicAlgorithm::Sha384,
        MicAlgorithm::Sha512,
    ];
    let ciphers = [
        None,
        Some(ContentCipher::TripleDesCbc),
        Some(ContentCipher::Aes128Cbc),
        Some(ContentCipher::Aes192Cbc),
        Some(ContentCipher::Aes256Cbc),
    ];
    let mut cases = Vec::new();
    for (index, digest) in digests.into_iter().enumerate() {
        for cipher in ciphers {
            let compression = match index % 3 {
                0 => None,
                1 => Some(CompressionOrder::BeforeSigning),
                _ => Some(CompressionOrder::AfterSigning),
            };
            cases.push(our_message(
                &parties,
                Some(digest),
                cipher,
                compression,
                vec![digest],
            ));
        }
    }
    let requests: Vec<Value> = cases
        .iter()
        .map(|built| merge(parties.pyas2lib_receives(), json!({"headers": headers_json(&built.headers), "body_b64": BASE64.encode(&built.body)})))
        .collect();
    let responses = peer("parse", &Value::Array(requests));
    let certificates = [parties.theirs.certificate.clone()];
    let verification = MdnVerification {
        partner_certificates: &certificates,
        allow_md5: false,
        check_certificate_validity: true,
        require_signature: true,
    };
    for (built, response) in cases.iter().zip(responses.as_array().unwrap()) {
        assert_eq!(response["status"], "processed", "{response}");
        assert_eq!(decode(&response["payload_b64"]), payload());
        assert_eq!(
            response["mic"].as_str().unwrap(),
            built.expected_mic.digest_base64()
        );

        let mdn_headers = headers_of(&response["mdn"]["headers"]);
        let mdn_body = decode(&response["mdn"]["body_b64"]);
        let parsed = mdn::parse_mdn(
            header(&mdn_headers, "Content-Type"),
            &mdn_body,
            &verification,
        )
        .unwrap();
        assert_eq!(
            parsed.report.disposition.status,
            DispositionStatus::Processed
        );
        assert!(
            parsed.mic_matches(&built.expected_mic),
            "{:?}",
            parsed.report
        );
        assert_eq!(
            parsed.report.original_message_id.trim_matches(['<', '>']),
            header(&built.headers, "Message-ID").trim_matches(['<', '>'])
        );
        assert!(parsed.signature.is_some());
    }
}

#[test]
fn our_mdns_parse_and_verify_in_pyas2lib() {
    let parties = Parties::new();
    let mut requests = Vec::new();
    let mut expectations = Vec::new();
    for (digest, signed_mdn) in [
        ("sha256", true),
        ("sha1", true),
        ("sha512", true),
        ("sha384", false),
    ] {
        let build_request = merge(
            parties.pyas2lib_sends(),
            json!({
                "sign": true, "digest_alg": digest, "encrypt": true, "enc_alg": "aes_256_cbc",
                "mdn_mode": "SYNC", "mdn_digest_alg": if signed_mdn { Some(digest) } else { None },
                "payload_b64": BASE64.encode(payload()),
            }),
        );
        let message = peer("build", &build_request);
        let headers = headers_of(&message["headers"]);
        let parsed =
            As2RequestHeaders::parse(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
                .unwrap();
        let identities = [parties.ours.clone()];
        let certificates = [parties.theirs.certificate.clone()];
        let outcome = unwrap_message(
            &parsed,
            &decode(&message["body_b64"]),
            &UnwrapContext::new(&identities, &certificates),
        );
        let unwrapped = outcome.as_ref().unwrap();
        assert_eq!(
            unwrapped.mic.digest_base64(),
            message["mic"].as_str().unwrap()
        );
        let signing =
            mdn::receipt_signing_algorithm(parsed.disposition_notification_options.as_ref(), false)
                .unwrap();
        assert_eq!(signing.is_some(), signed_mdn);
        // Both outcomes: the processed MDN and an error MDN for the same message.
        let error = As2Error::DecryptionFailed("test".into());
        for result in [outcome.as_ref(), Err(&error)] {
            let report = MdnReport::for_outcome("as2-gateway interop", &parsed, result);
            let mdn_id = MessageId::generate("gateway.test").unwrap();
            let built = mdn::build_mdn(&MdnToSend {
                as2_from: &parsed.as2_to,
                as2_to: &parsed.as2_from,
                message_id: &mdn_id,
                text: "Your message was received.",
                report: &report,
                signing: signing.map(|digest| (&parties.ours, digest)),
            })
            .unwrap();
            requests.push(merge(
                parties.pyas2lib_sends(),
                json!({
                    "headers": headers_json(&built.headers),
                    "body_b64": BASE64.encode(&built.body),
                    "original_message_id": parsed.message_id.without_brackets(),
                    "original_mic": message["mic"],
                    "mdn_digest_alg": if signed_mdn { Some(digest) } else { None },
                }),
            ));
            expectations.push((
                result.is_ok(),
                parsed.message_id.without_brackets().to_owned(),
            ));
        }
    }
    let responses = peer("parse_mdn", &Value::Array(requests));
    for ((processed, message_id), response) in
        expectations.iter().zip(responses.as_array().unwrap())
    {
        assert_eq!(
            response["original_message_id"].as_str(),
            Some(message_id.as_str())
        );
        if *processed {
            assert_eq!(response["status"], "processed", "{response}");
            assert!(response["detailed_status"].is_null(), "{response}");
        } else {
            assert_eq!(response["status"], "processed/error", "{response}");
            assert_eq!(response["detailed_status"], "decryption-failed");
        }
    }
}
