//! Dedup claims against a real Redis.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use as2_common::config::RedisConfig;
use as2_edge::dedup::{Claim, DedupStore, MessageKey, StoredReceipt};

async fn store(redis: &as2_testkit::RedisServer, in_flight_ttl: Duration) -> DedupStore {
    let connected = as2_common::redis::connect(&RedisConfig::new(redis.url(), "dedup-test"))
        .await
        .unwrap();
    DedupStore::new(
        connected.connection,
        connected.namespace,
        in_flight_ttl,
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

#[tokio::test]
async fn first_claim_wins_then_resends_see_in_flight_then_done() {
    let redis = as2_testkit::RedisServer::start();
    let store = store(&redis, Duration::from_secs(30)).await;

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

#[tokio::test]
async fn a_released_claim_can_be_taken_again() {
    let redis = as2_testkit::RedisServer::start();
    let store = store(&redis, Duration::from_secs(30)).await;
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    store.release(token).await.unwrap();
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}

#[tokio::test]
async fn an_abandoned_claim_expires() {
    let redis = as2_testkit::RedisServer::start();
    let store = store(&redis, Duration::from_millis(200)).await;
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
async fn concurrent_claims_have_exactly_one_winner() {
    let redis = as2_testkit::RedisServer::start();
    let store = store(&redis, Duration::from_secs(30)).await;
    let claims = futures::future::join_all((0..20).map(|_| store.claim(&MESSAGE))).await;
    let winners = claims
        .iter()
        .filter(|claim| matches!(claim, Ok(Claim::Claimed(_))))
        .count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_claim() {
    let mut redis = as2_testkit::RedisServer::start();
    let store = store(&redis, Duration::from_secs(30)).await;
    redis.stop();
    assert!(store.claim(&MESSAGE).await.is_err());
}
