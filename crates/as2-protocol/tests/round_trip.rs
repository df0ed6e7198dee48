//! Every combination the crate builds unwraps to the same payload and MIC; failures map
//! to the right AS2 dispositions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{
    As2Id, As2RequestHeaders, DispositionNotificationOptions, MessageId, MicAlgorithm,
    ReceiptDeliveryOption,
};
use as2_protocol::mdn::{self, MdnReport, MdnToSend, MdnVerification};
use as2_protocol::outbound::{
    self, BuiltMessage, CompressionOrder, Encryption, MdnRequest, OutboundMessage, Signing,
};
use as2_protocol::unwrap::{CompressionPlacement, UnwrapContext, unwrap_message};
use as2_protocol::{As2Error, DispositionStatus, ProcessingError};

struct Parties {
    sender: Identity,
    receiver: Identity,
}

fn parties() -> Parties {
    Parties {
        sender: common::identity("sender"),
        receiver: common::identity("receiver"),
    }
}

fn ids() -> (As2Id, As2Id, MessageId) {
    (
        As2Id::new("Sender Co").unwrap(),
        As2Id::new("receiver").unwrap(),
        MessageId::generate("test.example").unwrap(),
    )
}

fn build(
    parties: &Parties,
    signing: Option<(MicAlgorithm, SignatureScheme)>,
    encryption: Option<(ContentCipher, KeyTransport)>,
    compression: Option<CompressionOrder>,
    payload: &[u8],
    mdn: Option<MdnRequest>,
) -> BuiltMessage {
    let (from, to, message_id) = ids();
    let message = OutboundMessage {
        as2_from: &from,
        as2_to: &to,
        message_id: &message_id,
        subject: Some("test"),
        payload,
        content_type: "application/EDIFACT",
        filename: Some("orders 1.edi"),
        signing: signing.map(|(digest, scheme)| Signing {
            identity: &parties.sender,
            digest,
            scheme,
        }),
        encryption: encryption.map(|(cipher, key_transport)| Encryption {
            recipient: &parties.receiver.certificate,
            cipher,
            key_transport,
        }),
        compression,
        mdn,
    };
    outbound::build_message(&message).unwrap()
}

fn request_headers(built: &BuiltMessage) -> As2RequestHeaders {
    As2RequestHeaders::parse(built.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))).unwrap()
}

/// The disposition of a message that fails to unwrap.
fn failure(
    headers: &As2RequestHeaders,
    body: &[u8],
    identities: &[Identity],
    certificates: &[openssl::x509::X509],
) -> DispositionStatus {
    unwrap_message(headers, body, &UnwrapContext::new(identities, certificates))
        .unwrap_err()
        .disposition_status()
}

fn receive(
    parties: &Parties,
    built: &BuiltMessage,
) -> Result<as2_protocol::UnwrappedMessage, As2Error> {
    let identities = [parties.receiver.clone()];
    let certificates = [parties.sender.certificate.clone()];
    let mut context = UnwrapContext::new(&identities, &certificates);
    context.allow_md5 = true;
    unwrap_message(&request_headers(built), &built.body, &context)
}

#[test]
fn every_combination_round_trips() {
    let parties = parties();
    let payload = common::payload(3000);
    let mut signings = vec![None];
    for digest in MicAlgorithm::ALL {
        signings.push(Some((digest, SignatureScheme::RsaPkcs1v15)));
        if digest != MicAlgorithm::Md5 {
            signings.push(Some((digest, SignatureScheme::RsaPss)));
        }
    }
    let mut encryptions = vec![None];
    for cipher in ContentCipher::ALL {
        encryptions.push(Some((cipher, KeyTransport::RsaPkcs1v15)));
    }
    for digest in [
        MicAlgorithm::Sha1,
        MicAlgorithm::Sha256,
        MicAlgorithm::Sha512,
    ] {
        encryptions.push(Some((
            ContentCipher::Aes256Cbc,
            KeyTransport::RsaOaep(digest),
        )));
        encryptions.push(Some((
            ContentCipher::Aes128Gcm,
            KeyTransport::RsaOaep(digest),
        )));
    }
    let compressions = [
        None,
        Some(CompressionOrder::BeforeSigning),
        Some(CompressionOrder::AfterSigning),
    ];
    let mut combinations = 0;
    for signing in &signings {
        for encryption in &encryptions {
            for compression in compressions {
                let built = build(&parties, *signing, *encryption, compression, &payload, None);
                let unwrapped = receive(&parties, &built)
                    .unwrap_or_else(|e| panic!("{signing:?} {encryption:?} {compression:?}: {e}"));
                let context = format!("{signing:?} {encryption:?} {compression:?}");
                assert_eq!(unwrapped.payload.data, payload, "{context}");
                assert_eq!(
                    unwrapped.payload.filename.as_deref(),
                    Some("orders 1.edi"),
                    "{context}"
                );
                assert_eq!(
                    unwrapped.payload.content_type, "application/EDIFACT",
                    "{context}"
                );
                assert_eq!(unwrapped.mic, built.expected_mic, "{context}");
                let facts = &unwrapped.facts;
                assert_eq!(
                    facts.signature.as_ref().map(|s| (s.digest, s.scheme)),
                    *signing,
                    "{context}"
                );
                assert_eq!(
                    facts.encryption.map(|e| (e.cipher, e.key_transport)),
                    *encryption,
                    "{context}"
                );
                let expected_placement = match (compression, signing) {
                    (None, _) => None,
                    (Some(_), None) => Some(CompressionPlacement::Unsigned),
                    (Some(CompressionOrder::BeforeSigning), Some(_)) => {
                        Some(CompressionPlacement::BeforeSigning)
                    }
                    (Some(CompressionOrder::AfterSigning), Some(_)) => {
                        Some(CompressionPlacement::AfterSigning)
                    }
                };
                assert_eq!(facts.compression, expected_placement, "{context}");
                combinations += 1;
            }
        }
    }
    assert_eq!(combinations, signings.len() * encryptions.len() * 3);
}

#[test]
fn requested_mic_algorithm_wins_and_required_unsupported_fails() {
    let parties = parties();
    let request = MdnRequest {
        disposition_notification_to: "mdn@sender.example".into(),
        signed_receipt_algorithms: vec![MicAlgorithm::Sha512, MicAlgorithm::Sha256],
        receipt_delivery_option: Some(
            ReceiptDeliveryOption::parse("https://sender.example/mdn").unwrap(),
        ),
    };
    let built = build(
        &parties,
        Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
        None,
        None,
        b"data",
        Some(request),
    );
    assert_eq!(built.expected_mic.algorithm, MicAlgorithm::Sha512);
    let unwrapped = receive(&parties, &built).unwrap();
    assert_eq!(unwrapped.mic, built.expected_mic);

    let mut headers = request_headers(&built);
    headers.disposition_notification_options = Some(DispositionNotificationOptions::parse(
        "signed-receipt-protocol=required, pkcs7-signature; signed-receipt-micalg=required, sha3-256",
    ));
    let identities = [parties.receiver.clone()];
    let certificates = [parties.sender.certificate.clone()];
    let error = unwrap_message(
        &headers,
        &built.body,
        &UnwrapContext::new(&identities, &certificates),
    )
    .unwrap_err();
    assert!(matches!(error, As2Error::UnsupportedMicAlgorithms(_)));
    assert_eq!(
        error.disposition_status(),
        DispositionStatus::Failed("unsupported MIC-algorithms".into())
    );
}

#[test]
fn failures_map_to_dispositions() {
    let parties = parties();
    let stranger = common::identity("stranger");
    let signed_encrypted = build(
        &parties,
        Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
        Some((ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1v15)),
        None,
        b"payload",
        None,
    );
    let headers = request_headers(&signed_encrypted);

    // Not our key: decryption-failed.
    let wrong_key = [stranger.clone()];
    let certificates = [parties.sender.certificate.clone()];
    assert_eq!(
        failure(&headers, &signed_encrypted.body, &wrong_key, &certificates),
        DispositionStatus::Error(ProcessingError::DecryptionFailed)
    );

    // Not the partner's certificate, inside CBC encryption (which authenticates
    // nothing): answered as a decryption failure, like every failure before the first
    // authenticated byte.
    let identities = [parties.receiver.clone()];
    let wrong_certificate = [stranger.certificate.clone()];
    assert_eq!(
        failure(
            &headers,
            &signed_encrypted.body,
            &identities,
            &wrong_certificate
        ),
        DispositionStatus::Error(ProcessingError::DecryptionFailed)
    );
    // Inside GCM (the tag verified) or without encryption: authentication-failed.
    for encryption in [
        Some((ContentCipher::Aes256Gcm, KeyTransport::RsaPkcs1v15)),
        None,
    ] {
        let signed = build(
            &parties,
            Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
            encryption,
            None,
            b"payload",
            None,
        );
        assert_eq!(
            failure(
                &request_headers(&signed),
                &signed.body,
                &identities,
                &wrong_certificate
            ),
            DispositionStatus::Error(ProcessingError::AuthenticationFailed)
        );
    }

    // Certificate rotation: the second configured certificate verifies.
    let rotated = [
        stranger.certificate.clone(),
        parties.sender.certificate.clone(),
    ];
    let unwrapped = unwrap_message(
        &headers,
        &signed_encrypted.body,
        &UnwrapContext::new(&identities, &rotated),
    )
    .unwrap();
    assert_eq!(unwrapped.facts.signature.unwrap().certificate_index, 1);

    // Tampered signed content: integrity-check-failed.
    let signed = build(
        &parties,
        Some((MicAlgorithm::Sha256, SignatureScheme::RsaPkcs1v15)),
        None,
        None,
        b"payload text",
        None,
    );
    let tampered_body = String::from_utf8(signed.body.clone())
        .unwrap()
        .replace("payload text", "payload test");
    assert_eq!(
        failure(
            &request_headers(&signed),
            tampered_body.as_bytes(),
            &identities,
            &certificates
        ),
        DispositionStatus::Error(ProcessingError::IntegrityCheckFailed)
    );

    // Policy: unsigned when a signature is required (GCM or no encryption:
    // insufficient-message-security; CBC: nothing is authenticated, decryption-failed).
    let mut context = UnwrapContext::new(&identities, &certificates);
    context.require_signature = true;
    for (encryption, expected) in [
        (
            Some((ContentCipher::Aes128Gcm, KeyTransport::RsaPkcs1v15)),
            ProcessingError::InsufficientMessageSecurity,
        ),
        (None, ProcessingError::InsufficientMessageSecurity),
        (
            Some((ContentCipher::Aes128Cbc, KeyTransport::RsaPkcs1v15)),
            ProcessingError::DecryptionFailed,
        ),
    ] {
        let plain = build(&parties, None, encryption, None, b"x", None);
        let error = unwrap_message(&request_headers(&plain), &plain.body, &context).unwrap_err();
        assert_eq!(
            error.disposition_status(),
            DispositionStatus::Error(expected),
            "{encryption:?}"
        );
    }

    // MD5 only when allowed.
    let md5 = build(
        &parties,
        Some((MicAlgorithm::Md5, SignatureScheme::RsaPkcs1v15)),
        None,
        None,
        b"x",
        None,
    );
    assert!(
        unwrap_message(
            &request_headers(&md5),
            &md5.body,
            &UnwrapContext::new(&identities, &certificates)
        )
        .is_err()
    );

    // Corrupted ciphertext: decryption-failed.
    let mut corrupted = signed_encrypted.body.clone();
    let last = corrupted.len() - 5;
    corrupted[last] ^= 0x55;
    let error = unwrap_message(
        &headers,
        &corrupted,
        &UnwrapContext::new(&identities, &certificates),
    )
    .unwrap_err();
    assert!(
        matches!(error.disposition_status(), DispositionStatus::Error(_)),
        "{error}"
    );
}

#[test]
fn certificate_validity_check_is_switchable() {
    let expired = common::identity_valid("expired sender", -30, -1);
    let receiver = common::identity("receiver");
    let parties = Parties {
        sender: expired,
        receiver,
    };
    let built = build(
        &parties,
        Some((MicAlgorithm::Sha1, SignatureScheme::RsaPkcs1v15)),
        None,
        Some(CompressionOrder::BeforeSigning),
        b"old partner",
        None,
    );
    let identities = [parties.receiver.clone()];
    let certificates = [parties.sender.certificate.clone()];
    let mut context = UnwrapContext::new(&identities, &certificates);
    let error = unwrap_message(&request_headers(&built), &built.body, &context).unwrap_err();
    assert_eq!(
        error.disposition_status(),
        DispositionStatus::Error(ProcessingError::AuthenticationFailed)
    );
    context.check_certificate_validity = false;
    let unwrapped = unwrap_message(&request_headers(&built), &built.body, &context).unwrap();
    assert_eq!(unwrapped.payload.data, b"old partner");
}

#[test]
fn decompression_bombs_fail_cleanly() {
    let parties = parties();
    let big = vec![b'A'; 4 * 1024 * 1024];
    let built = build(
        &parties,
        None,
        None,
        Some(CompressionOrder::BeforeSigning),
        &big,
        None,
    );
    assert!(built.body.len() < 64 * 1024);
    let identities = [parties.receiver.clone()];
    let certificates = [parties.sender.certificate.clone()];
    let mut context = UnwrapContext::new(&identities, &certificates);
    context.limits.max_decompressed_size = 1024 * 1024;
    let error = unwrap_message(&request_headers(&built), &built.body, &context).unwrap_err();
    assert_eq!(
        error.disposition_status(),
        DispositionStatus::Error(ProcessingError::DecompressionFailed)
    );
}

#[test]
fn mdns_round_trip_signed_and_unsigned() {
    let parties = parties();
    let built = build(
        &parties,
        Some((MicAlgorithm::Sha384, SignatureScheme::RsaPss)),
        None,
        None,
        b"doc",
        None,
    );
    let headers = request_headers(&built);
    let unwrapped = receive(&parties, &built).unwrap();
    let report = MdnReport::for_outcome("as2-gateway test", &headers, Ok(&unwrapped));
    let mdn_id = MessageId::generate("receiver.example").unwrap();
    for signing in [None, Some((&parties.receiver, MicAlgorithm::Sha256))] {
        let mdn = mdn::build_mdn(&MdnToSend {
            as2_from: &headers.as2_to,
            as2_to: &headers.as2_from,
            message_id: &mdn_id,
            text: "The message was received.",
            report: &report,
            signing,
        })
        .unwrap();
        let certificates = [parties.receiver.certificate.clone()];
        let verification = MdnVerification {
            partner_certificates: &certificates,
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: signing.is_some(),
        };
        let parsed = mdn::parse_mdn(
            mdn.header("Content-Type").unwrap(),
            &mdn.body,
            &verification,
        )
        .unwrap();
        assert_eq!(parsed.report, report);
        assert!(parsed.mic_matches(&built.expected_mic));
        assert_eq!(parsed.signature.is_some(), signing.is_some());
        assert_eq!(parsed.text.as_deref(), Some("The message was received."));
    }

    let error = As2Error::DecryptionFailed("x".into());
    let failed = MdnReport::for_outcome("ua", &headers, Err(&error));
    assert_eq!(
        failed.disposition.to_string(),
        "automatic-action/MDN-sent-automatically; processed/error: decryption-failed"
    );
}

#[test]
fn lenient_mdn_parsing() {
    let report = "Reporting-UA: vendor\r\nOriginal-Recipient: rfc822; \"Our Id\"\r\nFinal-Recipient:rfc822;\"Our Id\"\r\n\
                  Original-Message-ID: <abc@x>\r\nDisposition: automatic-action/MDN-sent-automatically;\r\n  processed/Error :\r\n decryption-failed\r\n\
                  Received-content-MIC: KT62dGd8r3G2Ew0Vb5lzzIwUOv8=,sha1\r\n";
    let encoded = as2_protocol::mime::encode_base64_lines(report.as_bytes());
    let body = [
        b"--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/disposition-notification\nContent-Transfer-Encoding: base64\n\n".as_slice(),
        &encoded,
        b"--b--\n",
    ]
    .concat();
    let verification = MdnVerification {
        partner_certificates: &[],
        allow_md5: false,
        check_certificate_validity: false,
        require_signature: false,
    };
    let parsed = mdn::parse_mdn(
        "multipart/report; report-type=disposition-notification; boundary=b",
        &body,
        &verification,
    )
    .unwrap();
    assert_eq!(parsed.report.original_recipient.as_deref(), Some("Our Id"));
    assert_eq!(parsed.report.original_message_id, "<abc@x>");
    assert_eq!(
        parsed.report.disposition.status,
        DispositionStatus::Error(ProcessingError::DecryptionFailed)
    );
    assert_eq!(
        parsed.report.received_content_mic.unwrap().algorithm,
        MicAlgorithm::Sha1
    );
}
