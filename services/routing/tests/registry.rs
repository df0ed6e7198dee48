//! The routing service against a real Redis, a real three-master Redis Cluster and on
//! in-memory state (the Redis URL `memory://`): CRUD, resolve, validation, watch events,
//! races, health;
//! and, with Redis only, what needs a shared or restarted Redis: events across
//! replicas, restarts.

#![allow(clippy::unwrap_used)] // scenarios run by the generated #[test] functions

mod support;

use std::collections::HashSet;
use std::time::Duration;

use as2_rpc::routing::v1::{
    ListPartnershipsRequest, MdnMode, OutboundSettings, PartnershipEventKind, SecurityPolicy,
    SigningDigest,
};
use as2_rpc::tonic::Code;
use as2_testkit::RedisServer;
use as2_testkit::certificates::{TestCertificate, certificate_der, certificate_pem};
use support::{
    Replica, assert_status, certificate, create, delete, get, http_get, list_page, next_event,
    partnership, resolve, update, watch,
};

/// Runs each scenario (an `async fn(url: &str)`) once against a fresh Redis, once
/// against a fresh Redis Cluster and once on in-memory state (the Redis URL
/// `memory://`).
macro_rules! on_every_backend {
    ($($scenario:ident),+ $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let redis = as2_testkit::RedisServer::start();
                    super::$scenario(&redis.url()).await;
                }
            )+
        }
        mod on_redis_cluster {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let cluster = as2_testkit::RedisCluster::start();
                    super::$scenario(&cluster.url()).await;
                }
            )+
        }
        mod in_memory {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(as2_common::redis::IN_MEMORY_URL).await;
                }
            )+
        }
    };
}

on_every_backend!(
    partnership_crud_round_trip,
    resolve_by_exact_pair,
    validation_errors_name_the_field,
    updates_refuse_a_pair_that_is_taken,
    listing_pages_through_every_partnership,
    watch_events_reach_a_second_client,
    concurrent_creation_of_one_pair_succeeds_once,
    concurrent_updates_with_revisions_lose_no_write,
    health_readiness_metrics_and_shutdown,
);

/// Two replicas sharing one Redis, or a single replica on in-memory state, which
/// replicas cannot share.
async fn replicas_sharing_state(url: &str, prefix: &str) -> Vec<Replica> {
    let mut replicas = vec![Replica::start(url, prefix).await];
    if url != as2_common::redis::IN_MEMORY_URL {
        replicas.push(Replica::start(url, prefix).await);
    }
    replicas
}

async fn partnership_crud_round_trip(url: &str) {
    let replica = Replica::start(url, "crud").await;
    let mut client = replica.client().await;

    let mut input = partnership("ACME Corp", "OUR-GATEWAY", "edi.inbound.acme");
    input.display_name = "Acme orders".to_owned();
    input.partner_certificates = vec![certificate(certificate_pem(&TestCertificate::valid(
        "acme as2",
    )))];
    input.decryption_key_id = "gateway-2025".to_owned();
    input.security_policy = Some(SecurityPolicy {
        require_signature: true,
        require_encryption: true,
        allowed_signing_digests: vec![SigningDigest::Sha256 as i32],
        refuse_rsa_pkcs1v15_key_transport: true,
        ..SecurityPolicy::default()
    });
    let created = create(&mut client, input).await.unwrap();
    assert_eq!(created.id.len(), 20, "generated id {:?}", created.id);
    assert_eq!(created.revision, 1);
    assert!(created.created_at.is_some());
    let stored_certificate = &created.partner_certificates[0];
    assert_eq!(stored_certificate.subject, "CN=acme as2, O=Test Partner");
    assert!(stored_certificate.not_before.is_some() && stored_certificate.not_after.is_some());

    let fetched = get(&mut client, &created.id).await.unwrap();
    assert_eq!(fetched, created);

    let mut changed = fetched.clone();
    changed.kafka_topic = "edi.inbound.acme.v2".to_owned();
    let updated = update(&mut client, changed.clone(), 1).await.unwrap();
    assert_eq!(updated.revision, 2);
    assert_eq!(updated.kafka_topic, "edi.inbound.acme.v2");
    assert_eq!(updated.created_at, created.created_at);

    let stale = update(&mut client, changed, 1).await;
    assert_status(stale, Code::Aborted, "at revision 2, not the expected 1");

    let listed = list_page(&mut client).await;
    assert_eq!(listed.partnerships, vec![updated.clone()]);
    assert!(listed.next_page_token.is_empty());

    let deleted = delete(&mut client, &created.id, 2).await.unwrap();
    assert_eq!(deleted, updated);
    let gone = get(&mut client, &created.id).await;
    assert_status(gone, Code::NotFound, &created.id);
    let gone = delete(&mut client, &created.id, 0).await;
    assert_status(gone, Code::NotFound, "not found");

    // The pair is free again once deleted.
    create(
        &mut client,
        partnership("ACME Corp", "OUR-GATEWAY", "edi.inbound.acme"),
    )
    .await
    .unwrap();
    replica.stop().await;
}

async fn resolve_by_exact_pair(url: &str) {
    let replica = Replica::start(url, "resolve").await;
    let mut client = replica.client().await;

    let mut wanted = partnership("Partner With Spaces", "us", "topic-a");
    wanted.id = "spaces".to_owned();
    create(&mut client, wanted).await.unwrap();
    create(
        &mut client,
        partnership("Partner With Spaces", "US", "topic-b"),
    )
    .await
    .unwrap();

    let found = resolve(&mut client, "Partner With Spaces", "us")
        .await
        .unwrap();
    assert_eq!(found.id, "spaces");
    assert_eq!(found.kafka_topic, "topic-a");

    let other_case = resolve(&mut client, "Partner With Spaces", "US")
        .await
        .unwrap();
    assert_eq!(other_case.kafka_topic, "topic-b");

    let missing = resolve(&mut client, "partner with spaces", "us").await;
    assert_status(missing, Code::NotFound, "no partnership for AS2-From");

    // Moving the pair on update moves the index.
    let mut moved = found;
    moved.as2_to = "us-new".to_owned();
    update(&mut client, moved, 0).await.unwrap();
    assert_status(
        resolve(&mut client, "Partner With Spaces", "us").await,
        Code::NotFound,
        "no partnership",
    );
    let found = resolve(&mut client, "Partner With Spaces", "us-new")
        .await
        .unwrap();
    assert_eq!(found.id, "spaces");
    replica.stop().await;
}

async fn validation_errors_name_the_field(url: &str) {
    let replica = Replica::start(url, "validation").await;
    let mut client = replica.client().await;

    let cases = [
        (
            partnership("caf\u{e9}", "us", "topic"),
            "as2_from: AS2 ID must be printable ASCII",
        ),
        (
            partnership("partner", "", "topic"),
            "as2_to: AS2 ID must not be empty",
        ),
        (
            partnership(&"x".repeat(129), "us", "topic"),
            "as2_from: AS2 ID must be at most 128 characters",
        ),
        (
            partnership("partner", "line\nbreak", "topic"),
            "as2_to: AS2 ID must be printable ASCII",
        ),
        (
            partnership("partner", "us", ".."),
            "kafka_topic: Kafka topic cannot be \"..\"",
        ),
        (
            partnership("partner", "us", "orders/in"),
            "kafka_topic: Kafka topic may only contain",
        ),
        (
            partnership("partner", "us", &"t".repeat(250)),
            "kafka_topic: Kafka topic must be at most 249 characters",
        ),
        (
            partnership("partner", "us", ""),
            "kafka_topic: Kafka topic must not be empty",
        ),
    ];
    for (input, message) in cases {
        assert_status(
            create(&mut client, input).await,
            Code::InvalidArgument,
            message,
        );
    }

    let with_certificate = |pem: String| {
        let mut input = partnership("partner", "us", "topic");
        input.partner_certificates = vec![certificate(pem)];
        input
    };
    assert_status(
        create(
            &mut client,
            with_certificate(certificate_pem(&TestCertificate::expired("old"))),
        )
        .await,
        Code::InvalidArgument,
        "partner_certificates[0]: certificate expired at",
    );
    assert_status(
        create(
            &mut client,
            with_certificate(
                "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
                    .to_owned(),
            ),
        )
        .await,
        Code::InvalidArgument,
        "partner_certificates[0]: certificate cannot be parsed",
    );
    let der_as_text =
        String::from_utf8_lossy(&certificate_der(&TestCertificate::valid("der"))).into_owned();
    assert_status(
        create(&mut client, with_certificate(der_as_text)).await,
        Code::InvalidArgument,
        "partner_certificates[0]: no PEM certificate found",
    );

    let mut bad_key = partnership("partner", "us", "topic");
    bad_key.decryption_key_id = "../../etc/key".to_owned();
    assert_status(
        create(&mut client, bad_key).await,
        Code::InvalidArgument,
        "decryption_key_id: key id must start with a letter or digit",
    );

    let mut bad_url = partnership("partner", "us", "topic");
    bad_url.outbound = Some(OutboundSettings {
        url: "ftp://partner.example/".to_owned(),
        ..OutboundSettings::default()
    });
    assert_status(
        create(&mut client, bad_url).await,
        Code::InvalidArgument,
        "outbound.url: URL must start with http:// or https://",
    );

    let mut async_without_url = partnership("partner", "us", "topic");
    async_without_url.outbound = Some(OutboundSettings {
        mdn_mode: MdnMode::Async as i32,
        ..OutboundSettings::default()
    });
    assert_status(
        create(&mut client, async_without_url).await,
        Code::InvalidArgument,
        "outbound.async_mdn_url: required when outbound.mdn_mode is ASYNC",
    );

    // Duplicate pair and duplicate id.
    let mut first = partnership("partner", "us", "topic");
    first.id = "first".to_owned();
    create(&mut client, first.clone()).await.unwrap();
    assert_status(
        create(&mut client, partnership("partner", "us", "other-topic")).await,
        Code::AlreadyExists,
        "partnership \"first\" already has AS2-From \"partner\" and AS2-To \"us\"",
    );
    first.as2_to = "someone else".to_owned();
    assert_status(
        create(&mut client, first).await,
        Code::AlreadyExists,
        "a partnership with id \"first\" exists already",
    );

    // Nothing invalid was stored.
    let listed = list_page(&mut client).await;
    assert_eq!(listed.partnerships.len(), 1);
    replica.stop().await;
}

async fn updates_refuse_a_pair_that_is_taken(url: &str) {
    let replica = Replica::start(url, "pairs").await;
    let mut client = replica.client().await;
    create(&mut client, partnership("a", "us", "topic"))
        .await
        .unwrap();
    let second = create(&mut client, partnership("b", "us", "topic"))
        .await
        .unwrap();
    let mut clash = second.clone();
    clash.as2_from = "a".to_owned();
    let result = update(&mut client, clash, 0).await;
    assert_status(result, Code::AlreadyExists, "already has AS2-From \"a\"");
    let unchanged = get(&mut client, &second.id.clone()).await.unwrap();
    assert_eq!(unchanged, second);
    replica.stop().await;
}

async fn listing_pages_through_every_partnership(url: &str) {
    let replica = Replica::start(url, "paging").await;
    let mut client = replica.client().await;
    for index in 0..5 {
        let mut input = partnership(&format!("partner {index}"), "us", "topic");
        input.id = format!("p{index}");
        create(&mut client, input).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_partnerships(ListPartnershipsRequest {
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(
            page.partnerships
                .into_iter()
                .map(|partnership| partnership.id),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);
    assert_status(
        client
            .list_partnerships(ListPartnershipsRequest {
                page_size: 2,
                page_token: "Not A Token".to_owned(),
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    replica.stop().await;
}

async fn watch_events_reach_a_second_client(url: &str) {
    let replica = Replica::start(url, "watch").await;
    let mut watcher = replica.client().await;
    let mut writer = replica.client().await;
    let mut events = watch(&mut watcher).await;

    let created = create(&mut writer, partnership("partner", "us", "topic"))
        .await
        .unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event.kind(), PartnershipEventKind::Upserted);
    assert_eq!(
        (event.id.as_str(), event.revision),
        (created.id.as_str(), 1)
    );
    assert_eq!(
        (event.as2_from.as_str(), event.as2_to.as_str()),
        ("partner", "us")
    );

    let mut moved = created.clone();
    moved.as2_from = "partner renamed".to_owned();
    update(&mut writer, moved, 1).await.unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event.kind(), PartnershipEventKind::Upserted);
    assert_eq!(event.revision, 2);
    assert_eq!(event.as2_from, "partner renamed");
    assert_eq!(event.previous_as2_from, "partner");

    delete(&mut writer, &created.id, 0).await.unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event.kind(), PartnershipEventKind::Deleted);
    assert_eq!(
        (event.id.as_str(), event.revision),
        (created.id.as_str(), 2)
    );

    // A refused write publishes nothing: the next event is the next change.
    assert!(
        create(&mut writer, partnership("", "us", "topic"))
            .await
            .is_err()
    );
    create(&mut writer, partnership("next", "us", "topic"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut events).await.as2_from, "next");
    replica.stop().await;
}

#[tokio::test]
async fn two_replicas_share_data_and_events() {
    let redis = RedisServer::start();
    let replica_a = Replica::start(&redis.url(), "shared").await;
    let replica_b = Replica::start(&redis.url(), "shared").await;
    let mut client_a = replica_a.client().await;
    let mut client_b = replica_b.client().await;
    let mut events_b = watch(&mut client_b).await;

    let created = create(&mut client_a, partnership("partner", "us", "topic"))
        .await
        .unwrap();
    let event = next_event(&mut events_b).await;
    assert_eq!(event.kind(), PartnershipEventKind::Upserted);
    assert_eq!(event.id, created.id);

    let via_b = resolve(&mut client_b, "partner", "us").await.unwrap();
    assert_eq!(via_b, created);

    delete(&mut client_b, &created.id, 1).await.unwrap();
    assert_eq!(
        next_event(&mut events_b).await.kind(),
        PartnershipEventKind::Deleted
    );
    assert_status(
        get(&mut client_a, &created.id).await,
        Code::NotFound,
        "not found",
    );

    // Another key prefix on the same Redis is another registry.
    let other = Replica::start(&redis.url(), "other-gateway").await;
    let listed = list_page(&mut other.client().await).await;
    assert!(listed.partnerships.is_empty());

    other.stop().await;
    replica_a.stop().await;
    replica_b.stop().await;
}

#[tokio::test]
async fn data_survives_a_routing_restart() {
    let redis = RedisServer::start();
    let replica = Replica::start(&redis.url(), "restart").await;
    let created = create(
        &mut replica.client().await,
        partnership("partner", "us", "topic"),
    )
    .await
    .unwrap();
    replica.stop().await;

    let restarted = Replica::start(&redis.url(), "restart").await;
    let fetched = get(&mut restarted.client().await, &created.id)
        .await
        .unwrap();
    assert_eq!(fetched, created);
    restarted.stop().await;
}

async fn concurrent_creation_of_one_pair_succeeds_once(url: &str) {
    let replicas = replicas_sharing_state(url, "race").await;
    let clients = [
        replicas[0].client().await,
        replicas[replicas.len() - 1].client().await,
    ];

    let attempts = (0..24).map(|attempt| {
        let mut client = clients[attempt % 2].clone();
        tokio::spawn(async move {
            create(&mut client, partnership("racing partner", "us", "topic")).await
        })
    });
    let mut successes = 0;
    let mut already_exists = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.unwrap() {
            Ok(_) => successes += 1,
            Err(status) if status.code() == Code::AlreadyExists => already_exists += 1,
            Err(status) => panic!("unexpected failure: {status:?}"),
        }
    }
    assert_eq!((successes, already_exists), (1, 23));

    let listed = list_page(&mut clients[0].clone()).await;
    assert_eq!(listed.partnerships.len(), 1);
    for replica in replicas {
        replica.stop().await;
    }
}

async fn concurrent_updates_with_revisions_lose_no_write(url: &str) {
    let replica = Replica::start(url, "updates").await;
    let mut client = replica.client().await;
    let created = create(&mut client, partnership("partner", "us", "topic"))
        .await
        .unwrap();

    // Every writer tries the same expected revision: exactly one wins.
    let writers = (0..8).map(|writer| {
        let mut client = client.clone();
        let mut change = created.clone();
        change.display_name = format!("writer {writer}");
        tokio::spawn(async move { update(&mut client, change, 1).await })
    });
    let mut codes = Vec::new();
    for writer in writers.collect::<Vec<_>>() {
        codes.push(
            writer
                .await
                .unwrap()
                .map(|_| ())
                .map_err(|status| status.code()),
        );
    }
    assert_eq!(
        codes.iter().filter(|code| code.is_ok()).count(),
        1,
        "{codes:?}"
    );
    assert!(
        codes
            .iter()
            .all(|code| matches!(code, Ok(()) | Err(Code::Aborted)))
    );
    replica.stop().await;
}

#[tokio::test]
async fn watchers_get_a_reset_when_redis_restarts() {
    let mut redis = RedisServer::start();
    let replica = Replica::start(&redis.url(), "redis-restart").await;
    let mut client = replica.client().await;
    let mut events = watch(&mut client).await;

    redis.restart();
    let event = next_event(&mut events).await;
    assert_eq!(event.kind(), PartnershipEventKind::Reset);

    // The shared connection recovers too.
    let mut created = None;
    for _ in 0..50 {
        match create(&mut client, partnership("after restart", "us", "topic")).await {
            Ok(partnership) => {
                created = Some(partnership);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let created = created.expect("creation works again after the redis restart");
    assert_eq!(next_event(&mut events).await.id, created.id);
    replica.stop().await;
}

async fn health_readiness_metrics_and_shutdown(url: &str) {
    let replica = Replica::start(url, "health").await;

    let channel =
        as2_rpc::tonic::transport::Endpoint::from_shared(format!("http://{}", replica.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "as2.routing.v1.RoutingService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }

    assert_eq!(http_get(replica.admin_addr, "/healthz").await.0, 200);
    assert_eq!(http_get(replica.admin_addr, "/readyz").await.0, 200);
    let mut client = replica.client().await;
    create(&mut client, partnership("partner", "us", "topic"))
        .await
        .unwrap();
    let _ = create(&mut client, partnership("partner", "us", "topic")).await;
    let (status, metrics) = http_get(replica.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    let lines: HashSet<&str> = metrics.lines().collect();
    assert!(
        lines.contains(r#"as2_routing_requests_total{method="CreatePartnership",code="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        lines.contains(
            r#"as2_routing_requests_total{method="CreatePartnership",code="already_exists"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        lines.contains("as2_routing_event_subscription_up 1"),
        "{metrics}"
    );

    // An open watch stream does not hold shutdown up: it ends when the
    // service drains.
    let mut events = watch(&mut client).await;
    replica.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("the watch stream ends on shutdown");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn shutdown_reports_not_ready_before_it_stops_serving() {
    let redis = RedisServer::start();
    let mut config = as2_routing::RoutingConfig::local(redis.url(), "drain");
    config.shutdown.shutdown_delay_secs = 2;
    let replica = Replica::start_with(config).await;
    let mut client = replica.client().await;
    let channel =
        as2_rpc::tonic::transport::Endpoint::from_shared(format!("http://{}", replica.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    assert_eq!(http_get(replica.admin_addr, "/readyz").await.0, 200);

    replica.request_stop();
    let mut not_ready = false;
    for _ in 0..50 {
        if http_get(replica.admin_addr, "/readyz").await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        not_ready,
        "/readyz still reports ready after the stop request"
    );
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    // Still serving during the delay, so requests routed before the load
    // balancer noticed do not fail.
    create(&mut client, partnership("late", "us", "topic"))
        .await
        .unwrap();
    assert_eq!(http_get(replica.admin_addr, "/healthz").await.0, 200);

    replica.stop().await;
    // The listener is closed: a request on the old channel fails.
    assert!(
        create(&mut client, partnership("too late", "us", "topic"))
            .await
            .is_err()
    );
}
