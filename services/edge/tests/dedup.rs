//! Dedup claims: the same scenarios against a real Redis, a real 3-master Redis Cluster
//! and in memory, and the Redis failure modes.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use as2_common::config::RedisConfig;
use as2_common::redis::KeyNamespace;
use as2_edge::dedup::{
    Claim, DedupStore, DedupTimes, Inspection, MessageKey, PendingObject, PublishAttempt,
    StoredReceipt,
};

/// Short enough for the takeover scenarios to run quickly; the holder renews every 100 ms.
const LEASE: Duration = Duration::from_millis(300);
const PUBLISH_WINDOW: Duration = Duration::from_millis(900);

fn times(lease: Duration) -> DedupTimes {
    DedupTimes {
        lease,
        publish_window: PUBLISH_WINDOW,
        retention: Duration::from_secs(60),
    }
}

async fn redis_store(redis: &as2_testkit::RedisServer, lease: Duration) -> DedupStore {
    redis_store_at(&redis.url(), lease).await
}

/// A store on the Redis (or Redis Cluster) at `url`.
async fn redis_store_at(url: &str, lease: Duration) -> DedupStore {
    let connected = as2_common::redis::connect(&RedisConfig::new(url, "dedup-test"))
        .await
        .unwrap();
    DedupStore::new(connected.connection, connected.namespace, times(lease))
}

fn memory_store() -> DedupStore {
    DedupStore::in_memory(KeyNamespace::new("dedup-test").unwrap(), times(LEASE))
}

fn attempt() -> PublishAttempt {
    PublishAttempt {
        topic: "documents".to_owned(),
        partition: 3,
        scan_from: 1_234_567_890_123,
        object: None,
    }
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
                    let store = super::redis_store(&redis, super::LEASE).await;
                    assert_eq!(store.backend_kind(), "redis");
                    super::$scenario(store).await;
                }
            )+
        }
        mod on_redis_cluster {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let cluster = as2_testkit::RedisCluster::start();
                    let store = super::redis_store_at(&cluster.url(), super::LEASE).await;
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
    a_live_holder_keeps_its_claim_past_the_lease,
    a_dead_holders_armed_attempt_is_handed_to_the_resend,
    a_holder_that_lost_its_lease_cannot_arm,
    an_abandoned_claim_is_free_at_once_and_keeps_its_attempt,
    a_noted_object_is_pending_until_its_claim_ends,
    a_dead_holders_noted_object_is_handed_to_the_resend,
    a_done_claim_names_the_object_its_record_references,
);

async fn first_claim_wins_then_resends_see_in_flight_then_done(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("first claim must win")
    };
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::InFlight { .. }
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
        .filter(|claim| matches!(claim, Ok(Claim::InFlight { .. })))
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

async fn a_live_holder_keeps_its_claim_past_the_lease(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    tokio::time::sleep(LEASE * 3).await;
    match store.claim(&MESSAGE).await.unwrap() {
        Claim::InFlight { retry_after } => assert!(retry_after <= LEASE, "{retry_after:?}"),
        other => panic!("a renewed claim is held, got {other:?}"),
    }
    assert!(store.arm(&token, &attempt()).await.unwrap());
}

async fn a_dead_holders_armed_attempt_is_handed_to_the_resend(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    assert!(store.arm(&token, &attempt()).await.unwrap());
    // The holder dies (its renewals stop with it).
    drop(token);
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let Claim::Claimed(taken_over) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("a dead holder's claim is taken over")
    };
    let earlier = taken_over.earlier().expect("the armed attempt");
    assert_eq!(earlier.attempt, attempt());
    assert!(
        earlier.window_left > Duration::ZERO && earlier.window_left <= PUBLISH_WINDOW - LEASE,
        "{:?}",
        earlier.window_left
    );
    // The new holder's lease is renewed like any other.
    tokio::time::sleep(LEASE * 2).await;
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::InFlight { .. }
    ));
}

async fn a_holder_that_lost_its_lease_cannot_arm(store: DedupStore) {
    let Claim::Claimed(mut stalled) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    // A stalled process renews nothing: its lease runs out and a resend takes over.
    stalled.stop_renewing();
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let Claim::Claimed(other) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("an unrenewed claim is taken over")
    };
    assert!(!store.arm(&stalled, &attempt()).await.unwrap());
    assert!(store.arm(&other, &attempt()).await.unwrap());
}

async fn an_abandoned_claim_is_free_at_once_and_keeps_its_attempt(store: DedupStore) {
    let Claim::Claimed(token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    assert!(store.arm(&token, &attempt()).await.unwrap());
    store.abandon(token).await.unwrap();
    let Claim::Claimed(next) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("an abandoned claim is free")
    };
    assert_eq!(
        next.earlier().map(|earlier| &earlier.attempt),
        Some(&attempt())
    );
}

#[tokio::test]
async fn an_unrenewed_claim_runs_out_in_redis() {
    let redis = as2_testkit::RedisServer::start();
    let store = redis_store(&redis, Duration::from_millis(200)).await;
    let Claim::Claimed(abandoned) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    drop(abandoned);
    tokio::time::sleep(Duration::from_millis(400)).await;
    match store.claim(&MESSAGE).await.unwrap() {
        Claim::Claimed(token) => assert!(token.earlier().is_none(), "it never armed"),
        other => panic!("expected the claim, got {other:?}"),
    }
}

#[tokio::test]
async fn a_claim_written_by_the_previous_version_is_held_until_it_expires() {
    let redis = as2_testkit::RedisServer::start();
    let store = redis_store(&redis, LEASE).await;
    let key = format!("dedup-test:dedup:{}", MESSAGE.digest());
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg("in_flight")
        .arg("token")
        .arg("old")
        .query_async(&mut connection)
        .await
        .unwrap();
    let () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(400)
        .query_async(&mut connection)
        .await
        .map(|_: i64| ())
        .unwrap();
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::InFlight { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        store.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}

#[tokio::test]
async fn redis_down_is_an_error_not_a_claim() {
    let mut redis = as2_testkit::RedisServer::start();
    let store = redis_store(&redis, LEASE).await;
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
        Claim::InFlight { .. }
    ));
    assert!(matches!(
        second.claim(&MESSAGE).await.unwrap(),
        Claim::Claimed(_)
    ));
}

/// A claim of [`MESSAGE`] that noted `object`.
async fn claim_noting(store: &DedupStore, object: &str) -> as2_edge::dedup::ClaimToken {
    let Claim::Claimed(mut token) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("claim")
    };
    assert!(
        store
            .note_object(&mut token, &MESSAGE, object)
            .await
            .unwrap()
    );
    token
}

/// The objects registered at least `age` ago, by key.
async fn pending(store: &DedupStore, age: Duration) -> Vec<String> {
    store
        .pending_objects(age, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|pending: PendingObject| {
            assert_eq!(pending.message(), MESSAGE);
            pending.object
        })
        .collect()
}

async fn a_noted_object_is_pending_until_its_claim_ends(store: DedupStore) {
    assert_eq!(store.inspect(&MESSAGE).await.unwrap(), Inspection::Absent);
    let token = claim_noting(&store, "documents/one").await;
    assert_eq!(store.inspect(&MESSAGE).await.unwrap(), Inspection::InFlight);
    assert_eq!(token.noted_object(), Some("documents/one"));
    assert_eq!(pending(&store, Duration::ZERO).await, ["documents/one"]);
    assert!(
        pending(&store, Duration::from_secs(60)).await.is_empty(),
        "only entries at least that old are listed"
    );
    // Published: the done record names the object, the registry forgets it.
    let published = PublishAttempt {
        object: Some("documents/one".to_owned()),
        ..attempt()
    };
    assert!(store.arm(&token, &published).await.unwrap());
    store.complete(token, &receipt()).await.unwrap();
    assert_eq!(
        store.inspect(&MESSAGE).await.unwrap(),
        Inspection::Done {
            object: Some("documents/one".to_owned())
        }
    );
    assert!(pending(&store, Duration::ZERO).await.is_empty());

    // Certainly not published (its object deleted by the caller): released and forgotten.
    let other = MessageKey {
        message_id: "<2@partner>",
        ..MESSAGE
    };
    let Claim::Claimed(mut token) = store.claim(&other).await.unwrap() else {
        panic!("claim")
    };
    assert!(
        store
            .note_object(&mut token, &other, "documents/two")
            .await
            .unwrap()
    );
    store.release(token).await.unwrap();
    assert_eq!(store.inspect(&other).await.unwrap(), Inspection::Absent);
    assert!(
        store
            .pending_objects(Duration::ZERO, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_dead_holders_noted_object_is_handed_to_the_resend(store: DedupStore) {
    // A holder notes its object, completes the upload and dies before arming.
    drop(claim_noting(&store, "documents/first").await);
    // Longer than ten leases: a noted claim is kept like an armed one.
    tokio::time::sleep(LEASE * 11).await;
    let Claim::Claimed(mut second) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("a dead holder's claim is taken over")
    };
    assert!(second.earlier().is_none(), "it never armed");
    assert_eq!(
        second.take_stale_object().as_deref(),
        Some("documents/first")
    );
    assert_eq!(second.take_stale_object(), None, "taken once");
    // Its registry entry stays until the sweep (or the new holder) settles it.
    assert_eq!(pending(&store, Duration::ZERO).await, ["documents/first"]);

    // The second holder arms its own attempt and dies; a third holder that finds it
    // absent notes another object and dies before arming too.
    let second_attempt = PublishAttempt {
        object: Some("documents/second".to_owned()),
        ..attempt()
    };
    assert!(
        store
            .note_object(&mut second, &MESSAGE, "documents/second")
            .await
            .unwrap()
    );
    assert!(store.arm(&second, &second_attempt).await.unwrap());
    store.abandon(second).await.unwrap();
    let Claim::Claimed(mut third) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("an abandoned claim is free")
    };
    assert_eq!(
        third.take_stale_object(),
        None,
        "arming settled the noted object"
    );
    assert_eq!(
        third.earlier().map(|earlier| &earlier.attempt),
        Some(&second_attempt)
    );
    assert!(
        store
            .note_object(&mut third, &MESSAGE, "documents/third")
            .await
            .unwrap()
    );
    store.abandon(third).await.unwrap();
    let Claim::Claimed(mut fourth) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("an abandoned claim is free")
    };
    // The armed attempt and the object noted after it come back apart.
    assert_eq!(
        fourth.earlier().map(|earlier| &earlier.attempt),
        Some(&second_attempt)
    );
    assert_eq!(
        fourth.take_stale_object().as_deref(),
        Some("documents/third")
    );
}

async fn a_done_claim_names_the_object_its_record_references(store: DedupStore) {
    // The first holder's record is in Kafka; the holder died before storing the receipt.
    let first = claim_noting(&store, "documents/first").await;
    let published = PublishAttempt {
        object: Some("documents/first".to_owned()),
        ..attempt()
    };
    assert!(store.arm(&first, &published).await.unwrap());
    store.abandon(first).await.unwrap();
    // The resend found that record and answers for it: the done record names its object.
    let Claim::Claimed(second) = store.claim(&MESSAGE).await.unwrap() else {
        panic!("an abandoned claim is free")
    };
    assert!(second.earlier().is_some());
    store.complete(second, &receipt()).await.unwrap();
    let done = Inspection::Done {
        object: Some("documents/first".to_owned()),
    };
    assert_eq!(store.inspect(&MESSAGE).await.unwrap(), done);
    // An updated receipt keeps it.
    store.update_receipt(&MESSAGE, &receipt()).await.unwrap();
    assert_eq!(store.inspect(&MESSAGE).await.unwrap(), done);
}
