//! The real `as2-sender` binary is killed (SIGKILL) in the middle of a run and started
//! again: every document reaches django-pyas2, none under two different Message-IDs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Child;
use std::time::Duration;

use as2_rpc::routing::v1::OutboundSettings;
use support::KeyMaterial;
use support::{DjangoPartner, OutboundStack, eventually, sender_process, signed_encrypted_sync};

fn spawn_sender(stack: &OutboundStack, log: &std::path::Path) -> Child {
    sender_process(stack, log)
        .env("AS2_SENDER_MAX_IN_FLIGHT", "2")
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sender_killed_mid_run_delivers_everything_after_a_restart_under_stable_ids() {
    let stack = OutboundStack::start().await;
    let partner = DjangoPartner::start(
        &["django restart"],
        KeyMaterial::generate("django partner"),
        &stack.gateway.cert_pem,
    );
    stack
        .partnership(
            "restart",
            "django restart",
            &partner.key.cert_pem,
            &partner.url(),
            OutboundSettings {
                max_retries: 10,
                ..signed_encrypted_sync()
            },
        )
        .await;
    const DOCUMENTS: usize = 40;
    let payloads: Vec<Vec<u8>> = (0..DOCUMENTS)
        .map(|n| format!("ISA*restart document {n}~").into_bytes())
        .collect();
    for (n, payload) in payloads.iter().enumerate() {
        stack
            .produce("restart", &format!("doc-{n}.edi"), payload)
            .await;
    }
    let logs = tempfile::tempdir().unwrap();
    let mut first = spawn_sender(&stack, &logs.path().join("first.log"));
    assert!(
        eventually(Duration::from_secs(60), || partner.received().len() >= 2).await,
        "the first sender delivered nothing: {}",
        std::fs::read_to_string(logs.path().join("first.log")).unwrap_or_default()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let delivered_before_restart = partner.received().len();
    assert!(
        delivered_before_restart < DOCUMENTS,
        "killed too late to matter"
    );

    let mut second = spawn_sender(&stack, &logs.path().join("second.log"));
    let all_delivered = eventually(Duration::from_secs(90), || {
        let received = partner.received();
        payloads
            .iter()
            .all(|payload| received.iter().any(|message| &message.payload == payload))
    })
    .await;
    let receipts = stack.receipts(DOCUMENTS, Duration::from_secs(3)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(
        all_delivered,
        "not every document arrived: {}",
        std::fs::read_to_string(logs.path().join("second.log")).unwrap_or_default()
    );

    // One Message-ID per document, however often it was sent. A resend the partner had
    // already received is stored by django-pyas2 as "<id>_duplicate" (with the payload
    // still encrypted): its id must be one of a document's ids.
    let received = partner.received();
    let mut ids_by_payload: HashMap<Vec<u8>, BTreeSet<String>> = HashMap::new();
    let mut resent_ids = Vec::new();
    for message in &received {
        match message.message_id.strip_suffix("_duplicate") {
            Some(id) => resent_ids.push(id.to_owned()),
            None => {
                ids_by_payload
                    .entry(message.payload.clone())
                    .or_default()
                    .insert(message.message_id.clone());
            }
        }
    }
    assert_eq!(ids_by_payload.len(), DOCUMENTS);
    for (payload, ids) in &ids_by_payload {
        assert_eq!(
            ids.len(),
            1,
            "{} went out under {ids:?}",
            String::from_utf8_lossy(payload)
        );
    }
    let first_ids: BTreeSet<&String> = ids_by_payload.values().flatten().collect();
    for id in &resent_ids {
        assert!(
            first_ids.contains(id),
            "a resend under an id no document had: {id}"
        );
    }
    // Every document has a delivered receipt (at least once: a receipt may repeat).
    let delivered: BTreeSet<&str> = receipts
        .iter()
        .filter(|receipt| receipt["outcome"] == "delivered")
        .map(|receipt| receipt["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(delivered.len(), DOCUMENTS, "{receipts:#?}");
    for ids in ids_by_payload.values() {
        let id = format!("<{}>", ids.first().unwrap());
        assert!(delivered.contains(id.as_str()), "no receipt for {id}");
    }
}
