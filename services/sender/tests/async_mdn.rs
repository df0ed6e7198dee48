//! An asynchronous MDN from django-pyas2 travels back through the real edge: the edge
//! recognises it, hands it to the sender's ReconcileMdn, and the receipt says delivered.
//! The sender archives the message as sent, django-pyas2's answer and the MDN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_rpc::routing::v1::{Compression, MdnMode, OutboundSettings};
use support::{
    DjangoPartner, KeyMaterial, OutboundStack, RunningEdge, RunningSender, eventually,
    signed_encrypted_sync,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn django_pyas2_async_mdns_come_back_through_the_edge_and_are_reconciled() {
    let stack = OutboundStack::start().await;
    let archive_dir = tempfile::tempdir().unwrap();
    let archive_url = format!("file://{}", archive_dir.path().display());
    let mut config = stack.sender_config();
    config.object_store.object_store_url = Some(archive_url.clone());
    let sender = RunningSender::start(config).await;
    let edge = RunningEdge::start(&stack, &sender.grpc_url).await;
    let partner = DjangoPartner::start(
        &["django async"],
        KeyMaterial::generate("django partner"),
        &stack.gateway.cert_pem,
    );
    stack
        .partnership(
            "async",
            "django async",
            &partner.key.cert_pem,
            &partner.url(),
            OutboundSettings {
                mdn_mode: MdnMode::Async.into(),
                async_mdn_url: edge.url.clone(),
                compression: Compression::BeforeSigning.into(),
                ..signed_encrypted_sync()
            },
        )
        .await;
    stack.produce("async", "async.edi", b"ISA*async~").await;
    assert!(eventually(Duration::from_secs(30), || partner.received().len() == 1).await);
    // Give the sender a moment to record the message as awaiting; an MDN that comes
    // first is reconciled as well.
    tokio::time::sleep(Duration::from_millis(500)).await;
    partner.send_async_mdns();

    let receipts = stack.receipts(1, Duration::from_secs(1)).await;
    assert_eq!(receipts.len(), 1, "{receipts:#?}");
    let receipt = &receipts[0];
    assert_eq!(receipt["outcome"], "delivered", "{receipt:#}");
    assert_eq!(receipt["mdn_mode"], "async");
    assert_eq!(receipt["mic_verified"], true, "{receipt:#}");
    assert!(receipt["mdn"]["body_base64"].is_string());
    let received = partner.received();
    assert_eq!(
        format!("<{}>", received[0].message_id),
        receipt["message_id"].as_str().unwrap()
    );
    assert_eq!(received[0].payload, b"ISA*async~");

    // The archive: the message as sent, the HTTP answer, the MDN; the receipt names it.
    let store = as2_store::Store::open(
        &as2_store::ObjectStoreArgs {
            object_store_url: Some(archive_url),
            ..Default::default()
        }
        .store_config(std::path::Path::new("/nonexistent"))
        .unwrap(),
    )
    .unwrap();
    let hash = as2_store::archive::message_hash(
        support::GATEWAY_ID,
        "django async",
        receipt["message_id"].as_str().unwrap(),
    );
    let entries = as2_store::archive::entries_of(&store, &hash).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let read = |key: String| {
        let store = store.clone();
        async move {
            let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let message = read(as2_store::archive::message_key(&entries[0])).await;
    assert!(
        message.to_lowercase().contains(&format!(
            "message-id: {}",
            receipt["message_id"].as_str().unwrap()
        )),
        "{message}"
    );
    assert!(message.contains("smime-type=enveloped-data"), "{message}");
    let answer = read(as2_store::archive::answer_key(&entries[0])).await;
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");
    let mdn = read(as2_store::archive::mdn_key(&entries[0])).await;
    assert!(mdn.to_lowercase().contains("content-type:"), "{mdn}");
    assert!(mdn.contains("processed"), "{mdn}");
    edge.stop().await;
    sender.stop().await;
}
