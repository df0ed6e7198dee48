//! The quick-start state: an edge and a routing service with the Redis URL `memory://`
//! run without any Redis, and the edge's in-memory dedup answers a resend with the
//! stored MDN without publishing it again.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use as2_common::redis::IN_MEMORY_URL;
use as2_protocol::headers::MessageId;
use as2_rpc::routing::v1::CreatePartnershipRequest;
use support::{
    GATEWAY_KEY_ID, KeyMaterial, PARTNER_ID, RunningEdge, RunningRouting, consume, edge_config,
    partnership_for, post, signed_encrypted_message,
};

const TOPIC: &str = "quick-start-documents";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_on_in_memory_state_processes_and_deduplicates() {
    let broker = as2_testkit::KafkaBroker::start();
    let routing = RunningRouting::start(IN_MEMORY_URL, "quick").await;
    let keys_dir = tempfile::tempdir().unwrap();
    let gateway = KeyMaterial::generate("as2 gateway test");
    gateway.write_key_dir(keys_dir.path(), GATEWAY_KEY_ID);
    let partner = KeyMaterial::generate("quick start partner");
    let edge = RunningEdge::start(edge_config(
        IN_MEMORY_URL,
        "quick",
        &broker.bootstrap_servers(),
        &routing.url,
        keys_dir.path(),
    ))
    .await;

    routing
        .client()
        .await
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership_for(&partner, PARTNER_ID, TOPIC)),
        })
        .await
        .unwrap();

    let message_id = MessageId::generate("partner.example").unwrap();
    let (headers, body) = signed_encrypted_message(
        &gateway,
        PARTNER_ID,
        &partner,
        &message_id,
        b"ISA*00*quick start~",
    );
    let first = post(&edge.url(), &headers, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(
        first
            .text()
            .contains("Disposition: automatic-action/MDN-sent-automatically; processed\r\n"),
        "{}",
        first.text()
    );
    let resend = post(&edge.url(), &headers, body).await;
    assert_eq!(resend.status, 200, "{}", resend.text());
    assert_eq!(resend.body, first.body, "a resend gets the stored MDN");

    let records = consume(
        &broker.bootstrap_servers(),
        TOPIC,
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(records.len(), 1, "the resend is not published again");
    assert_eq!(records[0].payload, b"ISA*00*quick start~");

    edge.stop().await;
    routing.stop().await;
}
