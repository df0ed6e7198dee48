//! Decryption failures answer uniformly (no padding oracle): messages made by the
//! `openssl cms` command line with tampered ciphertext, encrypted to another
//! certificate, or with a corrupted wrapped key get the same HTTP status, the same
//! disposition and byte for byte the same MDN explanation (apart from the Message-ID),
//! and nothing of them is published. A partnership that refuses RSA PKCS #1 v1.5 key
//! transport refuses it and still takes RSA-OAEP.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::path::Path;
use std::time::Duration;

use as2_protocol::mdn::{MdnVerification, ParsedMdn, parse_mdn};
use as2_rpc::routing::v1::SecurityPolicy;
use as2_testkit::openssl_cli::{run, sign_entity};
use as2_testkit::tamper::{flipped, rsa2048_wrapped_key};
use openssl::x509::X509;
use support::{GATEWAY_ID, HttpResponse, KeyMaterial, PARTNER_ID, Stack, consume, post};

const TOPIC: &str = "inbound-decryption-failures";
const OAEP_ONLY_PARTNER_ID: &str = "oaep only partner";
const OAEP_ONLY_TOPIC: &str = "inbound-decryption-failures-oaep";

/// `signed.eml` encrypted (AES-256-CBC, DER) for the certificate in `recipient`.
fn encrypt(directory: &Path, recipient: &str, key_options: &[&str]) -> Vec<u8> {
    let mut args = vec![
        "cms",
        "-encrypt",
        "-binary",
        "-in",
        "signed.eml",
        "-aes-256-cbc",
        "-recip",
        recipient,
        "-outform",
        "DER",
        "-out",
        "encrypted.der",
    ];
    args.extend_from_slice(key_options);
    run(directory, &args);
    std::fs::read(directory.join("encrypted.der")).unwrap()
}

fn headers(as2_from: &str, message_id: &str) -> Vec<(String, String)> {
    [
        ("AS2-Version", "1.2".to_owned()),
        ("AS2-From", format!("\"{as2_from}\"")),
        ("AS2-To", GATEWAY_ID.to_owned()),
        ("Message-ID", message_id.to_owned()),
        (
            "Content-Type",
            "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m".to_owned(),
        ),
        ("Disposition-Notification-To", "as2@partner.test".to_owned()),
        (
            "Disposition-Notification-Options",
            "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"
                .to_owned(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

fn parsed(stack: &Stack, response: &HttpResponse) -> ParsedMdn {
    let gateway_cert = X509::from_pem(stack.gateway.cert_pem.as_bytes()).unwrap();
    parse_mdn(
        response.header("content-type").unwrap_or_default(),
        &response.body,
        &MdnVerification {
            partner_certificates: std::slice::from_ref(&gateway_cert),
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: true,
        },
    )
    .unwrap_or_else(|error| panic!("the MDN does not parse: {error}\n{}", response.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decryption_failures_answer_the_same_and_pkcs1v15_can_be_refused() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, TOPIC))
        .await;
    let mut oaep_only = stack.partnership(OAEP_ONLY_PARTNER_ID, OAEP_ONLY_TOPIC);
    oaep_only.security_policy = Some(SecurityPolicy {
        refuse_rsa_pkcs1v15_key_transport: true,
        ..SecurityPolicy::default()
    });
    stack.create_partnership(oaep_only).await;
    let stranger = KeyMaterial::generate("stranger");
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("partner.key"), &stack.partner.key_pem).unwrap();
    std::fs::write(dir.join("partner.pem"), &stack.partner.cert_pem).unwrap();
    std::fs::write(dir.join("gateway.pem"), &stack.gateway.cert_pem).unwrap();
    std::fs::write(dir.join("stranger.pem"), &stranger.cert_pem).unwrap();
    let payload = "UNB+UNOA:2+PARTNER:ZZ+GATEWAY:ZZ+261122:1200+1'\r\nUNZ+1+1'\r\n";
    std::fs::write(
        dir.join("entity.txt"),
        format!("Content-Type: application/EDIFACT\r\n\r\n{payload}"),
    )
    .unwrap();
    sign_entity(dir, &[]);
    let good = encrypt(dir, "gateway.pem", &[]);
    let misaddressed = encrypt(dir, "stranger.pem", &[]);
    let oaep = encrypt(dir, "gateway.pem", &["-keyopt", "rsa_padding_mode:oaep"]);
    let url = stack.edge.url();

    // The intact message is processed: what fails below fails because of the damage.
    let response = post(
        &url,
        &headers(PARTNER_ID, "<good@partner.test>"),
        good.clone(),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        parsed(&stack, &response)
            .report
            .disposition
            .status
            .to_string(),
        "processed"
    );

    // DER with definite lengths: the ciphertext ends the message; the byte 17 from the
    // end is the last of the next-to-last block (the padding no longer reads).
    let cases = [
        ("tampered-padding", flipped(&good, good.len() - 17)),
        ("tampered-content", flipped(&good, good.len() - 200)),
        ("wrong-recipient", misaddressed),
        (
            "corrupted-wrapped-key",
            flipped(&good, rsa2048_wrapped_key(&good) + 128),
        ),
    ];
    let mut answers = Vec::new();
    for (name, body) in cases {
        let message_id = format!("<{name}@partner.test>");
        let response = post(&url, &headers(PARTNER_ID, &message_id), body).await;
        let mdn = parsed(&stack, &response);
        let text = mdn.text.clone().unwrap_or_default();
        assert!(text.contains(&message_id), "{name}: {text}");
        answers.push((
            name,
            response.status,
            mdn.report.disposition.to_string(),
            text.replace(&message_id, "<MESSAGE-ID>"),
        ));
    }
    let (_, status, disposition, text) = &answers[0];
    assert_eq!(*status, 200);
    assert_eq!(
        disposition,
        "automatic-action/MDN-sent-automatically; processed/error: decryption-failed"
    );
    assert!(
        text.ends_with("could not be processed: decryption failed."),
        "{text}"
    );
    for (name, other_status, other_disposition, other_text) in &answers[1..] {
        assert_eq!(other_status, status, "{name}");
        assert_eq!(other_disposition, disposition, "{name}");
        assert_eq!(other_text.as_bytes(), text.as_bytes(), "{name}");
    }

    // The partnership that refuses PKCS #1 v1.5 key transport: refused on the algorithm
    // identifier (in the clear), RSA-OAEP accepted.
    let response = post(
        &url,
        &headers(OAEP_ONLY_PARTNER_ID, "<pkcs1v15@partner.test>"),
        good,
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        parsed(&stack, &response)
            .report
            .disposition
            .status
            .to_string(),
        "processed/error: insufficient-message-security"
    );
    let response = post(
        &url,
        &headers(OAEP_ONLY_PARTNER_ID, "<oaep@partner.test>"),
        oaep,
    )
    .await;
    assert_eq!(
        parsed(&stack, &response)
            .report
            .disposition
            .status
            .to_string(),
        "processed"
    );

    // Only the intact messages are published.
    for topic in [TOPIC, OAEP_ONLY_TOPIC] {
        let records = consume(
            &stack.broker.bootstrap_servers(),
            topic,
            1,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(records.len(), 1, "{topic}");
        assert_eq!(records[0].payload, payload.as_bytes(), "{topic}");
    }
    stack.edge.stop().await;
    stack.routing.stop().await;
}
