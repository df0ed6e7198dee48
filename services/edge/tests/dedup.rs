//! Dedup claims: the same scenarios against a real Redis and in memory, and the Redis
//! failure modes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use as2_common::config::RedisConfig;
use as2_common::redis::KeyNamespace;
use as2_edge::dedup::{Claim, DedupStore, MessageKey, StoredReceipt};

async fn redis_store(redis: &as2_testkit::RedisServer, in_flight_ttl: Duration) -> DedupStore {
    let connected = as2_common::redis::connect(&RedisConfig::new(redis.url(), "dedup-test"))
        .await
        .unwrap();
    DedupStore::new(
        connected.connection.as_standalone().unwrap().clone(),
        connected.namespace,
        in_flight_ttl,
        Duration::from_secs(60),
    )
}

fn memory_store() -> DedupStore {
    DedupStore::in_memory(
        KeyNamespace::new("dedup-test").unwrap(),
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
}

fn receipt() -> StoredReceipt {
    StoredReceipt {
        status: 200,
        headers: vec![(
            "Content-Type".into(),
            "multipart/report; report-type=disposition-notification".into(),
        )],
        body: b"the mdn".to_vec(),
        pending_async_mdn: None,
    }
}

const MESSAGE: MessageKey<'static> = MessageKey {
    as2_from: "partner",
    as2_to: "us",
    message_id: "<1@partner>",
};

/// Runs each scenario (an `async fn(DedupStore)`) once on a fresh Redis and once in
/// memory.
macro_rules! on_both_backends {
    ($($scenario:ident),+ $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let redis = as2_testkit::RedisServer::start();
                    let store = super::redis_store(&redis, std::time::Duration::from_secs(30)).await;
                    assert_eq!(store.backend_kind(), "redis");
                    super::$scenario(store).await;
                }
            )+
        }
        mod in_memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let store = super::memory_store();
                    assert_eq!(store.backend_kind(), "memory");
                    super::$scenario(store).await;
                }
            )+
        }
    };
}

on_both_backends!(
    first_claim_wins_then_resends_see_in_flight_then_done,
    a_released_claim_can_be_taken_again,
    a_late_release_keeps_the_stored_receipt,
    an_updated_receipt_replaces_the_stored_one,
    concurrent_claims_have_exactly_one_winner,
    messages_differ_by_every_part,
);

async fn first_claim_wins_then_resends_see_in_flight_then_done(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("first claim must win")
    };
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::InFlight
    ));

    store.complete(token, &receipt()).await.unwrap();
    let same_without_brackets = MessageKey {
        message_id: "1@partner",
        ..MESSAGE
    };
    match store.claim(&same_without_brackets).await.unwrap() {
        Claim::Done(stored) => assert_eq!(stored, receipt()),
        other => panic!("expected the stored receipt, got {other:?}"),
    }
}

async fn a_released_claim_can_be_taken_again(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    store.release(token).await.unwrap();
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}

async fn a_late_release_keeps_the_stored_receipt(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    // The receipt is stored for the message while this claim's holder still has its
    // token: releasing the token afterwards must not drop the receipt.
    store.update_receipt(&MESSAGE, &receipt()).await.unwrap();
    store.release(token).await.unwrap();
    match store.claim(&MESSAGE).await.unwrap() {
        Claim::Done(stored) => assert_eq!(stored, receipt()),
        other => panic!("expected the stored receipt, got {other:?}"),
    }
}

async fn an_updated_receipt_replaces_the_stored_one(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    let mut first = receipt();
    first.status = 202;
    store.complete(token, &first).await.unwrap();
    store.update_receipt(&MESSAGE, &receipt()).await.unwrap();
    match store.claim(&MESSAGE).await.unwrap() {
        Claim::Done(stored) => assert_eq!(stored, receipt()),
        other => panic!("expected the updated receipt, got {other:?}"),
    }
}

async fn concurrent_claims_have_exactly_one_winner(store: DedupStore) {
    let claims = futures::future::join_all((0..20).map(|_| store.claim(&MESSAGE))).await;
    let winners = claims
        .iter()
        .filter(|claim| matches!(claim, Ok(Claim::Claimed(_))))
        .count();
    let in_flight = claims
        .iter()
        .filter(|claim| matches!(claim, Ok(Claim::InFlight)))
        .count();
    assert_eq!((winners, in_flight), (1, 19));
}

async fn messages_differ_by_every_part(store: DedupStore) {
    let others = [
        MessageKey {
            as2_from: "other partner",
            ..MESSAGE
        },
        MessageKey {
            as2_to: "someone else",
            ..MESSAGE
        },
        MessageKey {
            message_id: "<2@partner>",
            ..MESSAGE
        },
    ];
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
    for other in &others {
        assert!(
            matches!(store.claim(other).await.unwrap(), Claim::Claimed(_)),
            "{other:?} is another message"
        );
    }
}

#[tokio::test]
async fn an_abandoned_claim_expires_in_redis() {
    let redis = as2_testkit::RedisServer::start();
    let store = redis_store(&redis, Duration::from_millis(200)).await;
    let Claim::Claimed(_abandoned) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_claim() {
    let mut redis = as2_testkit::RedisServer::start();
    let store = redis_store(&redis, Duration::from_secs(30)).await;
    redis.stop();
    assert!(store.claim(&MESSAGE).await.is_err());
}

#[tokio::test]
async fn in_memory_stores_are_separate() {
    let first = memory_store();
    let second = memory_store();
    assert!(matches!(
        first.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
    // A clone shares the records; another store does not.
    assert!(matches!(
        first.clone().claim(&MESSAGE).await.unwrap(),
        Claim::InFlight
    ));
    assert!(matches!(
        second.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}
