//! Nothing is acknowledged that was not stored, nothing is published twice: duplicates,
//! concurrent resends, a stopped broker, a stopped Redis, a stopped routing service, and
//! partnership changes reaching the edge's cache.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use as2_rpc::routing::v1::UpdatePartnershipRequest;
use futures::StreamExt as _;
use serde_json::json;
use support::{HttpResponse, PARTNER_ID, Stack, consume, message_parts, post, python};

/// `count` signed + encrypted messages from the pyas2lib partner, with signed MDNs.
fn build_messages(stack: &Stack, as2_from: &str, count: usize) -> Vec<support::As2Request> {
    use base64::Engine as _;
    let requests: Vec<_> = (0..count)
        .map(|index| {
            let mut request = stack.pyas2lib_request(as2_from);
            let fields = request.as_object_mut().unwrap();
            let payload = format!("UNB+UNOA:2+P+G+261122:1200+{index}'\r\nUNZ+1+{index}'\r\n");
            fields.insert(
                "payload_b64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(payload)),
            );
            fields.insert("sign".into(), json!(true));
            fields.insert("encrypt".into(), json!(true));
            fields.insert("enc_alg".into(), json!("aes_256_cbc"));
            fields.insert("mdn_mode".into(), json!("SYNC"));
            fields.insert("mdn_digest_alg".into(), json!("sha256"));
            request
        })
        .collect();
    let built = python("pyas2lib_sender.py", "build", &json!(requests));
    built
        .as_array()
        .unwrap()
        .iter()
        .map(message_parts)
        .collect()
}

fn assert_unavailable(response: &HttpResponse) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response.header("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert!(
        !response.text().contains("Disposition:"),
        "a 503 must not carry an MDN"
    );
}

fn assert_processed(response: &HttpResponse) {
    assert_eq!(response.status, 200, "{}", response.text());
    let text = response.text();
    assert!(
        text.contains("Disposition: automatic-action/MDN-sent-automatically; processed\r\n"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_message_gets_the_same_mdn_and_is_published_once() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "dedup"))
        .await;
    let mut messages = build_messages(&stack, PARTNER_ID, 2);
    let url = stack.edge.url();

    let (headers, body) = messages.remove(0);
    let first = post(&url, &headers, body.clone()).await;
    assert_processed(&first);
    let second = post(&url, &headers, body.clone()).await;
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body, first.body,
        "a resend gets the stored MDN, byte for byte"
    );

    // Many copies of another message at once: one publish; the others get the stored
    // MDN or 503 (in flight), never a second publish.
    let (headers, body) = messages.remove(0);
    let responses: Vec<HttpResponse> =
        futures::stream::iter((0..12).map(|_| post(&url, &headers, body.clone())))
            .buffer_unordered(12)
            .collect()
            .await;
    let mdns: Vec<&HttpResponse> = responses
        .iter()
        .filter(|response| response.status == 200)
        .collect();
    assert!(!mdns.is_empty());
    for response in &responses {
        if response.status != 200 {
            assert_unavailable(response);
        }
    }
    assert!(
        mdns.iter().all(|response| response.body == mdns[0].body),
        "all MDNs are the stored one"
    );

    let records = consume(
        &stack.broker.bootstrap_servers(),
        "dedup",
        2,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(records.len(), 2, "two distinct messages, two records");
    stack.edge.stop().await;
    stack.routing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gets_503_and_the_resend_is_published_once() {
    let mut stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "broker-outage"))
        .await;
    let mut messages = build_messages(&stack, PARTNER_ID, 2);
    let url = stack.edge.url();
    let (headers, body) = messages.remove(0);
    assert_processed(&post(&url, &headers, body).await);

    stack.broker.stop();
    let (headers, body) = messages.remove(0);
    assert_unavailable(&post(&url, &headers, body.clone()).await);

    stack.broker.restart();
    // The producer may need one failed attempt to notice the new broker; the partner
    // resends until it gets an MDN.
    let mut answer = post(&url, &headers, body.clone()).await;
    for _ in 0..5 {
        if answer.status == 200 {
            break;
        }
        assert_unavailable(&answer);
        answer = post(&url, &headers, body.clone()).await;
    }
    assert_processed(&answer);
    assert_eq!(
        post(&url, &headers, body).await.body,
        answer.body,
        "a later resend is a duplicate"
    );

    // The broker lost its in-memory data when it stopped: the resent message is the
    // only record now, and it is there once.
    let records = consume(
        &stack.broker.bootstrap_servers(),
        "broker-outage",
        1,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(records.len(), 1);
    assert!(
        records[0]
            .payload
            .starts_with(b"UNB+UNOA:2+P+G+261122:1200+1'")
    );
    stack.edge.stop().await;
    stack.routing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_or_routing_service_gets_503() {
    let mut stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "outages"))
        .await;
    stack
        .create_partnership(stack.partnership("second partner", "outages"))
        .await;
    let mut messages = build_messages(&stack, PARTNER_ID, 2);
    let second_partner = build_messages(&stack, "second partner", 1);
    let url = stack.edge.url();
    let (headers, body) = messages.remove(0);
    assert_processed(&post(&url, &headers, body).await);

    // The first partner's route is cached; the dedup claim needs Redis.
    stack.redis.stop();
    let (headers, body) = messages.remove(0);
    assert_unavailable(&post(&url, &headers, body).await);
    stack.redis.restart();

    // The second partner's route is not cached and the routing service is gone.
    let (headers, body) = &second_partner[0];
    let stack = stop_routing(stack).await;
    assert_unavailable(&post(&url, headers, body.clone()).await);
    stack.edge.stop().await;
}

async fn stop_routing(stack: Stack) -> StackWithoutRouting {
    let Stack {
        redis,
        broker,
        routing,
        edge,
        keys_dir,
        ..
    } = stack;
    routing.stop().await;
    StackWithoutRouting {
        _redis: redis,
        _broker: broker,
        edge,
        _keys_dir: keys_dir,
    }
}

struct StackWithoutRouting {
    _redis: as2_testkit::RedisServer,
    _broker: as2_testkit::KafkaBroker,
    edge: support::RunningEdge,
    _keys_dir: tempfile::TempDir,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partnership_change_reaches_the_edge_without_waiting_for_the_cache_ttl() {
    let stack = Stack::start().await;
    let partnership = stack
        .create_partnership(stack.partnership(PARTNER_ID, "before-change"))
        .await;
    let mut messages = build_messages(&stack, PARTNER_ID, 2);
    let url = stack.edge.url();
    let (headers, body) = messages.remove(0);
    assert_processed(&post(&url, &headers, body).await);

    let mut changed = partnership.clone();
    changed.kafka_topic = "after-change".to_owned();
    stack
        .routing
        .client()
        .await
        .update_partnership(UpdatePartnershipRequest {
            partnership: Some(changed),
            expected_revision: partnership.revision,
        })
        .await
        .unwrap();
    // The cache TTL is 60 s; the watch event arrives within moments.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (headers, body) = messages.remove(0);
    assert_processed(&post(&url, &headers, body).await);
    let records = consume(
        &stack.broker.bootstrap_servers(),
        "after-change",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "the second message went to the new topic");
    stack.edge.stop().await;
    stack.routing.stop().await;
}
