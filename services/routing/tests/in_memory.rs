//! The routing service on in-memory state (the Redis URL `memory://`), started
//! without any Redis: it serves the registry over gRPC, and its state belongs to
//! the one process (the behaviours shared with Redis run in `registry.rs`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use as2_common::config::RedisConfig;
use as2_routing::RoutingConfig;
use as2_rpc::routing::v1::PartnershipEventKind;
use as2_rpc::tonic::Code;
use support::{
    Replica, assert_status, create, get, http_get, next_event, partnership, resolve, watch,
};

fn memory_config() -> RoutingConfig {
    let mut config = RoutingConfig::local("redis://unused.invalid/", "unused");
    config.redis = RedisConfig::new("memory://", "t");
    config
}

#[tokio::test]
async fn a_server_on_memory_state_serves_create_resolve_and_watch() {
    let replica = Replica::start_with(memory_config()).await;
    let mut client = replica.client().await;
    let mut events = watch(&mut client).await;

    let created = create(&mut client, partnership("ACME Corp", "OUR-GATEWAY", "acme"))
        .await
        .unwrap();
    assert_eq!(created.revision, 1);
    let resolved = resolve(&mut client, "ACME Corp", "OUR-GATEWAY")
        .await
        .unwrap();
    assert_eq!(resolved, created);
    assert_status(
        resolve(&mut client, "ACME Corp", "someone else").await,
        Code::NotFound,
        "no partnership for AS2-From",
    );

    let event = next_event(&mut events).await;
    assert_eq!(event.kind(), PartnershipEventKind::Upserted);
    assert_eq!(event.id, created.id);

    let (status, metrics) = http_get(replica.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|line| line == "as2_routing_event_subscription_up 1"),
        "{metrics}"
    );
    replica.stop().await;
}

#[tokio::test]
async fn memory_state_is_per_process_and_ends_with_it() {
    let first = Replica::start_with(memory_config()).await;
    let second = Replica::start_with(memory_config()).await;
    let created = create(
        &mut first.client().await,
        partnership("partner", "us", "topic"),
    )
    .await
    .unwrap();
    // Same URL and prefix, another process's memory: nothing is shared.
    assert_status(
        get(&mut second.client().await, &created.id).await,
        Code::NotFound,
        "not found",
    );
    create(
        &mut second.client().await,
        partnership("partner", "us", "topic"),
    )
    .await
    .unwrap();
    first.stop().await;

    let restarted = Replica::start_with(memory_config()).await;
    assert_status(
        get(&mut restarted.client().await, &created.id).await,
        Code::NotFound,
        "not found",
    );
    restarted.stop().await;
    second.stop().await;
}
