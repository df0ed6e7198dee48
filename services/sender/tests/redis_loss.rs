//! Redis loses the sender's state (a restart without persistence) and no document goes
//! silent: a message awaiting its asynchronous MDN gets an `unknown` receipt, and a
//! message being sent at that moment keeps its real outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_rpc::routing::v1::{MdnMode, OutboundSettings};
use support::{
    DjangoPartner, KeyMaterial, OutboundStack, RunningSender, eventually, signed_encrypted_sync,
};

/// A sender on its own Redis (not the routing service's), so that Redis can lose the
/// sender's state alone.
async fn sender_on(stack: &OutboundStack, redis: &as2_testkit::RedisServer) -> RunningSender {
    let mut config = stack.sender_config();
    config.redis = as2_common::config::RedisConfig::new(redis.url(), "out");
    RunningSender::start(config).await
}

async fn count(redis: &as2_testkit::RedisServer, key: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_awaiting_their_mdn_when_redis_loses_the_state_get_unknown_receipts() {
    let stack = OutboundStack::start().await;
    let mut sender_redis = as2_testkit::RedisServer::start();
    let sender = sender_on(&stack, &sender_redis).await;
    let partner = DjangoPartner::start(
        &["django lost"],
        KeyMaterial::generate("django partner"),
        &stack.gateway.cert_pem,
    );
    stack
        .partnership(
            "lost",
            "django lost",
            &partner.key.cert_pem,
            &partner.url(),
            OutboundSettings {
                mdn_mode: MdnMode::Async.into(),
                // The partner is never asked to send its MDNs in this test.
                async_mdn_url: "http://127.0.0.1:9/as2".to_owned(),
                ..signed_encrypted_sync()
            },
        )
        .await;
    for n in 0..3 {
        stack
            .produce(
                "lost",
                &format!("lost-{n}.edi"),
                format!("ISA*lost {n}~").as_bytes(),
            )
            .await;
    }
    assert!(eventually(Duration::from_secs(60), || partner.received().len() == 3).await);
    let mut awaiting = 0;
    for _ in 0..100 {
        awaiting = count(&sender_redis, "out:{sender}:awaiting-mdn").await;
        if awaiting == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(awaiting, 3, "the three messages await their MDN");
    // Their offsets are committed once they await: let the commits land.
    tokio::time::sleep(Duration::from_secs(1)).await;

    sender_redis.restart();

    let receipts = stack.receipts(3, Duration::from_secs(2)).await;
    assert_eq!(receipts.len(), 3, "one receipt per document: {receipts:#?}");
    let mut ids: Vec<String> = receipts
        .iter()
        .map(|receipt| {
            assert_eq!(receipt["outcome"], "unknown", "{receipt:#}");
            assert!(
                receipt["reason"].as_str().unwrap().contains("not known"),
                "{receipt:#}"
            );
            assert_eq!(receipt["partnership_id"], "lost");
            assert_eq!(receipt["as2_to"], "django lost", "{receipt:#}");
            receipt["message_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut sent: Vec<String> = partner
        .received()
        .iter()
        .map(|message| format!("<{}>", message.message_id))
        .collect();
    sent.sort();
    assert_eq!(ids, sent, "the receipts name the messages the partner has");

    // A document produced after the loss is sent as usual.
    stack.produce("lost", "after.edi", b"ISA*after~").await;
    assert!(eventually(Duration::from_secs(60), || partner.received().len() == 4).await);
    sender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_being_sent_when_redis_loses_its_record_keeps_its_real_outcome() {
    let stack = OutboundStack::start().await;
    let mut sender_redis = as2_testkit::RedisServer::start();
    let sender = sender_on(&stack, &sender_redis).await;
    let mut partner = DjangoPartner::start(
        &["django retry"],
        KeyMaterial::generate("django partner"),
        &stack.gateway.cert_pem,
    );
    stack
        .partnership(
            "retry",
            "django retry",
            &partner.key.cert_pem,
            &partner.url(),
            OutboundSettings {
                max_retries: 50,
                ..signed_encrypted_sync()
            },
        )
        .await;
    partner.stop();
    stack.produce("retry", "retry.edi", b"ISA*retry~").await;
    // The sender tries, fails to connect, and waits to try again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sender_redis.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    partner.restart();

    let receipts = stack.receipts(1, Duration::from_secs(3)).await;
    assert_eq!(receipts.len(), 1, "{receipts:#?}");
    assert_eq!(receipts[0]["outcome"], "delivered", "{:#}", receipts[0]);
    assert!(
        receipts[0]["attempts"].as_u64().unwrap() >= 2,
        "{:#}",
        receipts[0]
    );
    assert_eq!(partner.received().len(), 1);
    sender.stop().await;
}
