//! An asynchronous MDN from django-pyas2 travels back through the real edge: the edge
//! recognises it, hands it to the sender's ReconcileMdn, and the receipt says delivered.

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
    let sender = RunningSender::start(stack.sender_config()).await;
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
    edge.stop().await;
    sender.stop().await;
}
