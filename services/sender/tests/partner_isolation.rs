//! A partner that is down does not hold the slots other partners need: its records wait
//! between retries in a slot or two of their own, and another partnership's documents
//! are sent meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_rpc::routing::v1::OutboundSettings;
use support::{
    DjangoPartner, KeyMaterial, OUTBOUND_TOPIC, OutboundStack, RunningSender, eventually,
    signed_encrypted_sync,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partner_that_is_down_does_not_hold_the_slots_of_the_others() {
    let stack = OutboundStack::start().await;
    let mut config = stack.sender_config();
    config.sending.max_in_flight = 4;
    let sender = RunningSender::start(config).await;
    let partner = DjangoPartner::start(
        &["django up"],
        KeyMaterial::generate("django partner"),
        &stack.gateway.cert_pem,
    );
    // The two partnerships' records land on different partitions (key = partnership).
    let down = "down";
    let partition_of = |key: &str| as2_common::kafka::partition_for_key(key.as_bytes(), 2);
    let up = ["up", "up-1", "up-2", "up-3", "up-4"]
        .into_iter()
        .find(|candidate| partition_of(candidate) != partition_of(down))
        .unwrap();
    let closed = as2_testkit::free_port();
    stack
        .partnership(
            down,
            "django down",
            &partner.key.cert_pem,
            &format!("http://127.0.0.1:{closed}/as2"),
            OutboundSettings {
                max_retries: 100,
                ..signed_encrypted_sync()
            },
        )
        .await;
    stack
        .partnership(
            up,
            "django up",
            &partner.key.cert_pem,
            &partner.url(),
            signed_encrypted_sync(),
        )
        .await;
    for n in 0..8 {
        stack
            .produce(
                down,
                &format!("down-{n}.edi"),
                format!("ISA*down {n}~").as_bytes(),
            )
            .await;
    }
    // Let the sender take the down partner's records and start retrying them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 0..3 {
        stack
            .produce(
                up,
                &format!("up-{n}.edi"),
                format!("ISA*up {n}~").as_bytes(),
            )
            .await;
    }
    let delivered = eventually(Duration::from_secs(30), || partner.received().len() == 3).await;
    let receipts = stack.receipts(3, Duration::from_secs(1)).await;
    sender.stop().await;
    assert!(
        delivered,
        "the up partner got {} of 3 documents while the down partner's records retried ({OUTBOUND_TOPIC})",
        partner.received().len()
    );
    assert_eq!(receipts.len(), 3, "{receipts:#?}");
    for receipt in &receipts {
        assert_eq!(receipt["outcome"], "delivered", "{receipt:#}");
        assert_eq!(receipt["partnership_id"], up);
    }
}
