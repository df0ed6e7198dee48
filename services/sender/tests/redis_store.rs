//! The sender's message records on a real Redis and on a real three-master Redis
//! Cluster (every script: begin, await the MDN, finish into the receipt outbox, the
//! sweeper's reads), and the upgrade of records written before the hash tags.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use as2_common::config::RedisConfig;
use as2_common::redis::{KeyGroup, Redis, layout};
use as2_sender::message::RecordSource;
use as2_sender::store::{MessageState, MessageStore, NewMessage, Outcome, SendFacts};
use as2_sender::{SenderConfig, SenderServer};

const NOW_MS: i64 = 1_800_000_000_000;

async fn connect(url: &str) -> (Redis, MessageStore) {
    let redis = as2_common::redis::connect(&RedisConfig::new(url, "out"))
        .await
        .unwrap();
    let store = MessageStore::new(redis.connection.clone(), redis.namespace.clone(), 3_600);
    (redis, store)
}

fn source(offset: i64) -> RecordSource {
    RecordSource {
        topic: "as2.outbound".to_owned(),
        partition: 0,
        offset,
    }
}

async fn begin(store: &MessageStore, message_id: &str, offset: i64) -> Option<MessageState> {
    store
        .begin(
            &NewMessage {
                message_id,
                partnership_id: "acme",
                source: &source(offset),
                filename: Some("order.edi"),
                traceparent: "",
            },
            NOW_MS,
        )
        .await
        .unwrap()
}

fn delivered() -> Outcome {
    Outcome {
        delivered: true,
        http_status: 200,
        disposition: "automatic-action/MDN-sent-automatically; processed".to_owned(),
        received_mic: "abc=, sha-256".to_owned(),
        mic_verified: true,
        ..Outcome::default()
    }
}

/// A message sent with an asynchronous MDN requested, whose MDN arrives: every state
/// change and the sweeper's reads.
async fn async_mdn_lifecycle(url: &str) {
    let (_redis, store) = connect(url).await;
    let message_id = "<lifecycle@gateway.example>";
    assert_eq!(begin(&store, message_id, 1).await, None);
    assert_eq!(
        begin(&store, message_id, 1).await,
        Some(MessageState::Sending)
    );
    store
        .record_send_facts(
            message_id,
            &SendFacts {
                as2_from: "us",
                as2_to: "acme",
                mdn_mode: "async",
                expected_mic: "abc=, sha-256".to_owned(),
                signed: true,
                signed_mdn_requested: true,
                archive_location: "",
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .record_attempt(message_id, "timed out", 0)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .await_mdn(message_id, NOW_MS + 1_000, 202)
            .await
            .unwrap(),
        Some(MessageState::AwaitingMdn)
    );
    let id = MessageStore::record_id(message_id);
    assert_eq!(
        store.overdue(NOW_MS + 2_000, 10).await.unwrap(),
        std::slice::from_ref(&id)
    );
    assert!(
        store
            .finish(message_id, &delivered(), NOW_MS + 500)
            .await
            .unwrap()
    );
    assert!(
        !store
            .finish(message_id, &delivered(), NOW_MS + 600)
            .await
            .unwrap(),
        "the outcome is recorded once"
    );
    assert!(store.overdue(NOW_MS + 2_000, 10).await.unwrap().is_empty());
    assert_eq!(
        store.unpublished(NOW_MS + 1_000, 10).await.unwrap(),
        std::slice::from_ref(&id)
    );
    store.receipt_published(message_id).await.unwrap();
    assert!(
        store
            .unpublished(NOW_MS + 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let record = store.load(message_id).await.unwrap().unwrap();
    assert_eq!(record.state(), Some(MessageState::Delivered));
    assert_eq!(record.attempts, 1);
    assert_eq!(record.expected_mic, "abc=, sha-256");
    assert!(record.mic_verified);
}

#[tokio::test]
async fn the_message_lifecycle_runs_on_redis() {
    let redis = as2_testkit::RedisServer::start();
    async_mdn_lifecycle(&redis.url()).await;
}

#[tokio::test]
async fn the_message_lifecycle_runs_on_a_redis_cluster() {
    let cluster = as2_testkit::RedisCluster::start();
    async_mdn_lifecycle(&cluster.url()).await;
    let (redis, _store) = connect(&cluster.url()).await;
    assert!(redis.is_cluster());
}

#[tokio::test]
async fn records_written_in_the_old_layout_are_found_after_the_upgrade() {
    let redis_server = as2_testkit::RedisServer::start();
    let (redis, store) = connect(&redis_server.url()).await;
    // An open message awaiting its MDN, one finished whose receipt is not published
    // yet, and one done with.
    let (awaiting, unpublished, done) = (
        "<awaiting@gateway.example>",
        "<unpublished@gateway.example>",
        "<done@gateway.example>",
    );
    for (offset, message_id) in [awaiting, unpublished, done].into_iter().enumerate() {
        begin(&store, message_id, i64::try_from(offset).unwrap()).await;
    }
    store.await_mdn(awaiting, NOW_MS, 202).await.unwrap();
    for message_id in [unpublished, done] {
        store
            .finish(message_id, &delivered(), NOW_MS)
            .await
            .unwrap();
    }
    store.receipt_published(done).await.unwrap();
    let renamed = layout::rename_to_legacy_layout(&redis, KeyGroup::Outbound)
        .await
        .unwrap();
    assert_eq!(
        renamed,
        3 + 2,
        "three messages, the deadline index, the outbox"
    );
    assert!(
        store.load(done).await.unwrap().is_none(),
        "under the old name"
    );

    // The new version starts (binding connects and moves the keys).
    let keys_dir = tempfile::tempdir().unwrap();
    let config = sender_config(&redis_server.url(), keys_dir.path());
    drop(SenderServer::bind(config).await.unwrap());

    let state = |message_id| {
        let store = store.clone();
        async move {
            store
                .load(message_id)
                .await
                .unwrap()
                .and_then(|record| record.state())
        }
    };
    assert_eq!(state(awaiting).await, Some(MessageState::AwaitingMdn));
    assert_eq!(state(unpublished).await, Some(MessageState::Delivered));
    assert_eq!(state(done).await, Some(MessageState::Delivered));
    assert_eq!(
        store.overdue(NOW_MS + 1, 10).await.unwrap(),
        [MessageStore::record_id(awaiting)]
    );
    assert_eq!(
        store.unpublished(NOW_MS + 1, 10).await.unwrap(),
        [MessageStore::record_id(unpublished)]
    );
    let mut connection = redis.connection.clone();
    let old_keys: Vec<String> = redis::cmd("KEYS")
        .arg("out:sender:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(old_keys.is_empty(), "{old_keys:?}");
}

fn sender_config(redis_url: &str, keys_dir: &Path) -> SenderConfig {
    SenderConfig::local(
        redis_url,
        "out",
        "127.0.0.1:9",
        "http://127.0.0.1:9",
        keys_dir,
    )
}
