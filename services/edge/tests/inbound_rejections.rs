//! Messages that must not be processed get the RFC 4130 outcome, and nothing of them is
//! published: wrong or tampered signatures, tampered or misaddressed ciphertext, unknown
//! partners, policy violations, missing headers, garbage, oversize bodies, and MDN
//! options that cannot be honoured.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use as2_protocol::mdn::{MdnVerification, parse_mdn};
use as2_rpc::routing::v1::SecurityPolicy;
use openssl::x509::X509;
use serde_json::json;
use support::{
    GATEWAY_ID, HttpResponse, KeyMaterial, PARTNER_ID, Stack, consume, message_parts, post, python,
};

const STRICT_PARTNER_ID: &str = "strict partner";
const TOPIC: &str = "inbound-rejections";
const STRICT_TOPIC: &str = "inbound-rejections-strict";

/// The disposition of the MDN in `response` (which must be 200 with a parseable MDN).
fn disposition(stack: &Stack, response: &HttpResponse) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    let gateway_cert = X509::from_pem(stack.gateway.cert_pem.as_bytes()).unwrap();
    let parsed = parse_mdn(
        response.header("content-type").unwrap_or_default(),
        &response.body,
        &MdnVerification {
            partner_certificates: std::slice::from_ref(&gateway_cert),
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: false,
        },
    )
    .unwrap_or_else(|error| panic!("error MDN does not parse: {error}\n{}", response.text()));
    assert!(
        parsed.report.received_content_mic.is_none()
            || parsed.report.disposition.status.is_processed()
    );
    parsed.report.disposition.status.to_string()
}

fn request(stack: &Stack, payload: &str, settings: serde_json::Value) -> serde_json::Value {
    use base64::Engine as _;
    let mut request = stack.pyas2lib_request(PARTNER_ID);
    let fields = request.as_object_mut().unwrap();
    fields.insert(
        "payload_b64".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(payload)),
    );
    fields.insert("mdn_mode".into(), json!("SYNC"));
    for (name, value) in settings.as_object().unwrap() {
        fields.insert(name.clone(), value.clone());
    }
    request
}

fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_their_rfc_outcome_and_publish_nothing() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, TOPIC))
        .await;
    let mut strict = stack.partnership(STRICT_PARTNER_ID, STRICT_TOPIC);
    strict.security_policy = Some(SecurityPolicy {
        require_signature: true,
        ..SecurityPolicy::default()
    });
    stack.create_partnership(strict).await;
    let impostor = KeyMaterial::generate("impostor");
    let url = stack.edge.url();

    let payload =
        "UNB+UNOA:2+PARTNER:ZZ+GATEWAY:ZZ+261122:1200+1'\r\nFTX+AAI+++tamper here'\r\nUNZ+1+1'\r\n";
    let requests = vec![
        // 0: signed with a key that is not the partner's
        request(
            &stack,
            payload,
            json!({"sign": true, "sender_key_pem": impostor.key_pem, "sender_cert_pem": impostor.cert_pem}),
        ),
        // 1: signed, to be tampered with
        request(&stack, payload, json!({"sign": true})),
        // 2: encrypted, to be tampered with
        request(
            &stack,
            payload,
            json!({"encrypt": true, "enc_alg": "aes_256_cbc"}),
        ),
        // 3: encrypted to another certificate
        request(
            &stack,
            payload,
            json!({"encrypt": true, "receiver_cert_pem": impostor.cert_pem}),
        ),
        // 4: unsigned to a partnership that requires signing
        request(&stack, payload, json!({"sender_id": STRICT_PARTNER_ID})),
        // 5: a valid message, used for header and option mutations
        request(
            &stack,
            payload,
            json!({"sign": true, "mdn_digest_alg": "sha256"}),
        ),
    ];
    let built = python("pyas2lib_sender.py", "build", &json!(requests));
    let built = built.as_array().unwrap();

    let (headers, body) = message_parts(&built[0]);
    assert_eq!(
        disposition(&stack, &post(&url, &headers, body).await),
        "processed/error: authentication-failed"
    );

    let (headers, body) = message_parts(&built[1]);
    let tampered = String::from_utf8(body)
        .unwrap()
        .replace("tamper here", "tampered!!!");
    // The signature is intact, the content no longer matches its digest.
    assert_eq!(
        disposition(&stack, &post(&url, &headers, tampered.into_bytes()).await),
        "processed/error: integrity-check-failed"
    );

    let (headers, mut body) = message_parts(&built[2]);
    // Flip the last byte of the next-to-last cipher block: the padding byte of the last
    // plaintext block changes deterministically and can no longer be valid.
    let index = body.len() - 17;
    body[index] ^= 0xff;
    assert_eq!(
        disposition(&stack, &post(&url, &headers, body).await),
        "processed/error: decryption-failed"
    );

    let (headers, body) = message_parts(&built[3]);
    assert_eq!(
        disposition(&stack, &post(&url, &headers, body).await),
        "processed/error: decryption-failed"
    );

    let (headers, body) = message_parts(&built[4]);
    assert_eq!(
        disposition(&stack, &post(&url, &headers, body).await),
        "processed/error: insufficient-message-security"
    );

    // Unknown pairs.
    let (valid_headers, valid_body) = message_parts(&built[5]);
    let mut headers = valid_headers.clone();
    set_header(&mut headers, "AS2-To", "nobody");
    assert_eq!(
        disposition(&stack, &post(&url, &headers, valid_body.clone()).await),
        "processed/error: unknown-trading-partner"
    );
    let mut headers = valid_headers.clone();
    set_header(&mut headers, "AS2-From", "stranger");
    assert_eq!(
        disposition(&stack, &post(&url, &headers, valid_body.clone()).await),
        "processed/error: unknown-trading-partner"
    );

    // MDN options that cannot be honoured.
    let mut headers = valid_headers.clone();
    set_header(
        &mut headers,
        "Disposition-Notification-Options",
        "signed-receipt-protocol=required, pkcs7-signature; signed-receipt-micalg=required, sha-999, whirlpool",
    );
    assert_eq!(
        disposition(&stack, &post(&url, &headers, valid_body.clone()).await),
        "failed/Failure: unsupported MIC-algorithms"
    );
    let mut headers = valid_headers.clone();
    set_header(
        &mut headers,
        "Disposition-Notification-Options",
        "signed-receipt-protocol=required, pgp-signature; signed-receipt-micalg=optional, sha-256",
    );
    assert_eq!(
        disposition(&stack, &post(&url, &headers, valid_body.clone()).await),
        "failed/Failure: unsupported format"
    );

    // Garbage bodies under plausible content types.
    for content_type in [
        "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m",
        "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z",
        "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"b\"",
    ] {
        let mut headers = valid_headers.clone();
        set_header(&mut headers, "Content-Type", content_type);
        set_header(
            &mut headers,
            "Message-ID",
            &format!("<garbage-{}@test>", content_type.len()),
        );
        let response = post(
            &url,
            &headers,
            b"\x30\x82\xff\xff garbage \x00\x01\x02".to_vec(),
        )
        .await;
        let outcome = disposition(&stack, &response);
        assert!(
            outcome.starts_with("processed/error: "),
            "garbage as {content_type}: {outcome}"
        );
    }

    // Missing AS2 headers: 400 with the reason, no MDN.
    for missing in ["AS2-From", "AS2-To", "Message-ID"] {
        let mut headers = valid_headers.clone();
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case(missing));
        let response = post(&url, &headers, valid_body.clone()).await;
        assert_eq!(response.status, 400, "without {missing}");
        assert!(
            response.text().contains(missing),
            "the reason names {missing}: {}",
            response.text()
        );
    }

    // Over the body limit (4 MiB in the test configuration): 413.
    let response = post(&url, &valid_headers, vec![b'x'; 4 * 1024 * 1024 + 1]).await;
    assert_eq!(response.status, 413);

    // No MDN requested, bad message: 400 with the reason.
    let (mut headers, body) = message_parts(&built[0]);
    headers.retain(|(name, _)| {
        !name
            .to_ascii_lowercase()
            .starts_with("disposition-notification")
    });
    let response = post(&url, &headers, body).await;
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("authentication failed"),
        "{}",
        response.text()
    );

    // Finally the valid message: it alone reaches the topic.
    assert_eq!(
        disposition(&stack, &post(&url, &valid_headers, valid_body).await),
        "processed"
    );
    let records = consume(
        &stack.broker.bootstrap_servers(),
        TOPIC,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "only the valid message is published");
    assert_eq!(records[0].payload, payload.as_bytes());
    assert_eq!(records[0].header("as2-to"), Some(GATEWAY_ID));

    stack.edge.stop().await;
    stack.routing.stop().await;
}
