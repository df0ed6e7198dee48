//! Messages made by the `openssl cms` command line, including what pyas2lib cannot
//! build (AES-GCM AuthEnvelopedData, RSA-OAEP key transport, RSA-PSS signatures), are
//! processed end to end with the MIC computed over the signed entity.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use as2_protocol::headers::MicAlgorithm;
use as2_protocol::mdn::{MdnVerification, parse_mdn};
use as2_protocol::mic::ReceivedContentMic;
use as2_protocol::mime::{Entity, MimeLimits};
use as2_testkit::openssl_cli::{run, sign_entity};
use openssl::x509::X509;
use support::{GATEWAY_ID, PARTNER_ID, Stack, consume, post};

const TOPIC: &str = "inbound-openssl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_gcm_oaep_and_pss_messages_are_processed() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, TOPIC))
        .await;
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path();
    std::fs::write(dir.join("partner.key"), &stack.partner.key_pem).unwrap();
    std::fs::write(dir.join("partner.pem"), &stack.partner.cert_pem).unwrap();
    std::fs::write(dir.join("gateway.pem"), &stack.gateway.cert_pem).unwrap();
    let gateway_cert = X509::from_pem(stack.gateway.cert_pem.as_bytes()).unwrap();

    let cases: [(&str, &[&str], &[&str]); 5] = [
        ("-aes-128-gcm", &[], &[]),
        ("-aes-256-gcm", &["-keyopt", "rsa_padding_mode:oaep"], &[]),
        ("-aes-256-gcm", &[], &["-keyopt", "rsa_padding_mode:pss"]),
        (
            "-aes-256-cbc",
            &["-keyopt", "rsa_padding_mode:oaep"],
            &["-keyopt", "rsa_padding_mode:pss"],
        ),
        ("-aes-128-cbc", &["-keyopt", "rsa_padding_mode:oaep"], &[]),
    ];
    let mut expected_payloads = Vec::new();
    for (index, (cipher, encrypt_options, sign_options)) in cases.iter().enumerate() {
        let payload = format!(
            "ISA*00*          *00*          *ZZ*PARTNER*ZZ*GATEWAY*261122*1200*U*00401*{index:09}*0*P*>~\r\nIEA*1*{index:09}~\r\n"
        );
        let entity = format!(
            "Content-Type: application/EDI-X12\r\nContent-Disposition: attachment; filename=\"cli-{index}.x12\"\r\n\r\n{payload}"
        );
        std::fs::write(dir.join("entity.txt"), &entity).unwrap();
        sign_entity(dir, sign_options);
        let mut encrypt = vec![
            "cms",
            "-encrypt",
            "-binary",
            "-in",
            "signed.eml",
            cipher,
            "-recip",
            "gateway.pem",
            "-outform",
            "DER",
            "-out",
            "encrypted.der",
        ];
        encrypt.extend_from_slice(encrypt_options);
        run(dir, &encrypt);
        let body = std::fs::read(dir.join("encrypted.der")).unwrap();
        let smime_type = if cipher.ends_with("gcm") {
            "authEnveloped-data"
        } else {
            "enveloped-data"
        };
        let headers: Vec<(String, String)> = [
            ("AS2-Version", "1.2".to_owned()),
            ("AS2-From", format!("\"{PARTNER_ID}\"")),
            ("AS2-To", GATEWAY_ID.to_owned()),
            ("Message-ID", format!("<openssl-{index}@partner.test>")),
            ("Content-Type", format!("application/pkcs7-mime; smime-type={smime_type}; name=smime.p7m")),
            ("Disposition-Notification-To", "as2@partner.test".to_owned()),
            ("Disposition-Notification-Options", "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        let response = post(&stack.edge.url(), &headers, body).await;
        assert_eq!(
            response.status,
            200,
            "{cipher} {encrypt_options:?} {sign_options:?}: {}",
            response.text()
        );
        let parsed = parse_mdn(
            response.header("content-type").unwrap(),
            &response.body,
            &MdnVerification {
                partner_certificates: std::slice::from_ref(&gateway_cert),
                allow_md5: false,
                check_certificate_validity: true,
                require_signature: true,
            },
        )
        .unwrap();
        assert_eq!(
            parsed.report.disposition.to_string(),
            "automatic-action/MDN-sent-automatically; processed"
        );
        // The signed entity as openssl signed it (the first part of signed.eml).
        let signed = std::fs::read(dir.join("signed.eml")).unwrap();
        let signed = Entity::parse(&signed, &MimeLimits::default()).unwrap();
        assert!(
            signed
                .header("Content-Type")
                .unwrap()
                .contains("multipart/signed")
        );
        let expected =
            ReceivedContentMic::compute(MicAlgorithm::Sha256, entity.as_bytes()).unwrap();
        assert_eq!(
            parsed.report.received_content_mic.as_ref(),
            Some(&expected),
            "{cipher} {encrypt_options:?} {sign_options:?}"
        );
        expected_payloads.push((format!("<openssl-{index}@partner.test>"), payload));
    }

    let records = consume(
        &stack.broker.bootstrap_servers(),
        TOPIC,
        cases.len(),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), cases.len());
    for (message_id, payload) in expected_payloads {
        let record = records
            .iter()
            .find(|record| record.header("as2-message-id") == Some(message_id.as_str()))
            .unwrap();
        assert_eq!(record.payload, payload.as_bytes());
        assert_eq!(record.header("as2-signed"), Some("true"));
        assert_eq!(record.header("as2-encrypted"), Some("true"));
    }
    stack.edge.stop().await;
    stack.routing.stop().await;
}
