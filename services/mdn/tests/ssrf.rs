//! Server-side request forgery: asynchronous MDN URLs come from partners' messages, so
//! the service delivers only to targets the partnership allows. Each refused URL is
//! recorded as failed with its reason, and no connection is attempted.
//!
//! Nothing here leaves the machine: the service resolves names through a test resolver
//! and connects through a dialer that records every attempt and connects to loopback
//! only; the loopback receivers show that nothing arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_rpc::mdn::v1::{DeliveryState, EnqueueMdnDeliveryRequest};
use as2_rpc::routing::v1::AsyncMdnPolicy;
use support::{
    MEMORY_URL, Receiver, RecordingNetwork, RunningMdn, enqueue, enqueue_request, fast_config,
    in_redis_and_in_memory, wait_for_state,
};

const WAIT: Duration = Duration::from_secs(30);

in_redis_and_in_memory!(
    urls_to_internal_targets_are_recorded_failed_without_a_connection,
    a_redirect_is_a_recorded_failure_and_is_not_followed,
    an_allowed_loopback_target_is_delivered_through_the_checked_connector,
    deliveries_past_the_quota_are_recorded_failed,
);

fn with_policy(
    message_id: &str,
    url: &str,
    policy: Option<AsyncMdnPolicy>,
) -> EnqueueMdnDeliveryRequest {
    let mut request = enqueue_request(message_id, url);
    request.policy = policy;
    request
}

/// Default policy (public addresses only) and a narrowed one: none of these URLs is
/// delivered, each failure says why, and nothing is dialed or arrives.
async fn urls_to_internal_targets_are_recorded_failed_without_a_connection(redis_url: &str) {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let network = RecordingNetwork::default();
    network.add_name("loopback.test", "127.0.0.1");
    network.add_name("mixed.test", "8.8.8.8");
    network.add_name("mixed.test", "10.0.0.1");
    let mdn =
        RunningMdn::start_with_network(fast_config(redis_url, "ssrf"), network.network()).await;
    let mut client = mdn.client().await;

    let allowlist = Some(AsyncMdnPolicy {
        allowed_url_patterns: vec!["https://as2.partner.example/mdn".to_owned()],
        allow_private_targets: true,
        max_queued: None,
        https: None,
    });
    let cases: Vec<(String, Option<AsyncMdnPolicy>, &str)> = vec![
        (
            format!("http://127.0.0.1:{port}/mdn"),
            None,
            "127.0.0.1 is a loopback address",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            None,
            "169.254.169.254 is a link-local address",
        ),
        (
            "http://10.1.2.3/mdn".to_owned(),
            None,
            "10.1.2.3 is a private address",
        ),
        (
            format!("http://[::1]:{port}/mdn"),
            None,
            "is a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/mdn"),
            None,
            "is a loopback address",
        ),
        (
            format!("http://2130706433:{port}/mdn"),
            None,
            "127.0.0.1 is a loopback address",
        ),
        (
            format!("http://loopback.test:{port}/mdn"),
            None,
            "loopback.test resolves to 127.0.0.1, which is a loopback address",
        ),
        (
            "https://mixed.test/mdn".to_owned(),
            None,
            "mixed.test resolves to 10.0.0.1, which is a private address",
        ),
        (
            format!("http://127.0.0.1:{port}/mdn"),
            allowlist,
            "matches none of the partnership's allowed asynchronous MDN URL patterns",
        ),
        (
            format!("http://127.0.0.1:{port}/mdn"),
            Some(AsyncMdnPolicy {
                max_queued: Some(0),
                ..AsyncMdnPolicy::default()
            }),
            "policy is not valid: max_queued",
        ),
    ];
    for (number, (url, policy, reason)) in cases.into_iter().enumerate() {
        let id = enqueue(
            &mut client,
            with_policy(&format!("refused-{number}"), &url, policy),
        )
        .await;
        let failed = wait_for_state(&mut client, &id, DeliveryState::Failed, WAIT).await;
        assert!(
            failed.last_error.contains(reason),
            "{url}: {:?} does not say {reason:?}",
            failed.last_error
        );
        assert!(failed.last_error.starts_with("not delivered: "), "{url}");
        assert_eq!(failed.last_http_status, 0, "{url}");
    }
    // Give a worker the time it would need to (wrongly) connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(network.dials(), [], "no connection was attempted");
    assert_eq!(receiver.requests_seen(), 0, "nothing arrived");
    // Only the names were resolved (addresses never are).
    let mut lookups = network.lookups();
    lookups.sort();
    lookups.dedup();
    assert_eq!(lookups, ["loopback.test", "mixed.test"]);
    mdn.stop().await;
}

/// A partnership that allows loopback targets: its receiver answers 302 towards a
/// second receiver. The delivery fails for good with the reason; the second receiver
/// gets nothing.
async fn a_redirect_is_a_recorded_failure_and_is_not_followed(redis_url: &str) {
    let redirecting = Receiver::start().await;
    let target = Receiver::start().await;
    redirecting.redirect_to(302, &target.url());
    let network = RecordingNetwork::default();
    let mdn =
        RunningMdn::start_with_network(fast_config(redis_url, "redirect"), network.network()).await;
    let mut client = mdn.client().await;

    let id = enqueue(
        &mut client,
        enqueue_request("redirected", &redirecting.url()),
    )
    .await;
    let failed = wait_for_state(&mut client, &id, DeliveryState::Failed, WAIT).await;
    assert_eq!(failed.attempts, 1, "a redirect is not retried");
    assert_eq!(failed.last_http_status, 302);
    assert!(
        failed.last_error.contains("redirects are not followed"),
        "{}",
        failed.last_error
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redirecting.requests_seen(), 1);
    assert_eq!(target.requests_seen(), 0, "the redirect was not followed");
    assert_eq!(network.dials(), [redirecting.addr]);
    mdn.stop().await;
}

/// What the partnership allows is delivered, and the connection goes through the
/// checked connector to the address the name resolved to.
async fn an_allowed_loopback_target_is_delivered_through_the_checked_connector(redis_url: &str) {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    let network = RecordingNetwork::default();
    network.add_name("partner.test", "127.0.0.1");
    let mdn =
        RunningMdn::start_with_network(fast_config(redis_url, "allowed"), network.network()).await;
    let mut client = mdn.client().await;

    let policy = Some(AsyncMdnPolicy {
        allowed_url_patterns: vec![format!("http://partner.test:{port}/mdn")],
        allow_private_targets: true,
        max_queued: None,
        https: None,
    });
    let url = format!("http://partner.test:{port}/mdn/receipts");
    let id = enqueue(&mut client, with_policy("allowed", &url, policy)).await;
    let delivered = wait_for_state(&mut client, &id, DeliveryState::Delivered, WAIT).await;
    assert_eq!(delivered.attempts, 1);
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(network.lookups(), ["partner.test"], "resolved once");
    assert_eq!(network.dials(), [receiver.addr]);
    mdn.stop().await;
}

/// A partnership's queued deliveries are bounded: one more is recorded as failed.
async fn deliveries_past_the_quota_are_recorded_failed(redis_url: &str) {
    let receiver = Receiver::start().await;
    receiver.hold(true);
    let mdn = RunningMdn::start_with_network(
        fast_config(redis_url, "quota"),
        RecordingNetwork::default().network(),
    )
    .await;
    let mut client = mdn.client().await;
    let policy = Some(AsyncMdnPolicy {
        allow_private_targets: true,
        max_queued: Some(2),
        ..AsyncMdnPolicy::default()
    });
    let mut queued = Vec::new();
    for number in 0..2 {
        let request = with_policy(&format!("quota-{number}"), &receiver.url(), policy.clone());
        queued.push(enqueue(&mut client, request).await);
    }
    let over = enqueue(
        &mut client,
        with_policy("quota-over", &receiver.url(), policy.clone()),
    )
    .await;
    let failed = wait_for_state(&mut client, &over, DeliveryState::Failed, WAIT).await;
    assert!(failed.last_error.contains("quota"), "{}", failed.last_error);
    assert_eq!(failed.attempts, 0);
    receiver.hold(false);
    for id in &queued {
        wait_for_state(&mut client, id, DeliveryState::Delivered, WAIT).await;
    }
    assert_eq!(
        receiver.accepted().len(),
        2,
        "the one over the quota was not sent"
    );
    mdn.stop().await;
}
