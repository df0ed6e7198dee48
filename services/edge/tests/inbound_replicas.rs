//! Two edge replicas behind one address (a round-robin TCP balancer on loopback) serve
//! the same partnerships and share duplicate detection.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use serde_json::json;
use support::{PARTNER_ID, RunningEdge, Stack, consume, edge_config, message_parts, post, python};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_one_address_serve_the_same_partnerships() {
    use base64::Engine as _;
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "replicas"))
        .await;
    let second = RunningEdge::start(edge_config(
        &stack.redis.url(),
        "e2e",
        &stack.broker.bootstrap_servers(),
        &stack.routing.url,
        stack.keys_dir.path(),
    ))
    .await;
    let balancer = as2_testkit::balancer::Balancer::start(vec![stack.edge.addr, second.addr]).await;

    let requests: Vec<_> = (0..9)
        .map(|index| {
            let mut request = stack.pyas2lib_request(PARTNER_ID);
            let fields = request.as_object_mut().unwrap();
            let payload = format!("UNB+UNOA:2+P+G+261122:1200+{index}'\r\n");
            fields.insert(
                "payload_b64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(payload)),
            );
            fields.insert("sign".into(), json!(true));
            fields.insert("encrypt".into(), json!(true));
            fields.insert("mdn_mode".into(), json!("SYNC"));
            fields.insert("mdn_digest_alg".into(), json!("sha256"));
            request
        })
        .collect();
    let built = python("pyas2lib_sender.py", "build", &json!(requests));
    let messages: Vec<_> = built
        .as_array()
        .unwrap()
        .iter()
        .map(message_parts)
        .collect();

    let url = format!("http://{}/as2", balancer.addr());
    for (headers, body) in &messages[..8] {
        let response = post(&url, headers, body.clone()).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            response.text().contains("; processed\r\n"),
            "{}",
            response.text()
        );
    }
    for (index, served) in balancer.served().into_iter().enumerate() {
        assert!(served >= 4, "replica {index} served too little");
    }

    // One replica processes, the other recognises the resend.
    let (headers, body) = &messages[8];
    let first = post(&stack.edge.url(), headers, body.clone()).await;
    let resend = post(&second.url(), headers, body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        resend.body, first.body,
        "the other replica answers with the stored MDN"
    );

    let records = consume(
        &stack.broker.bootstrap_servers(),
        "replicas",
        9,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(records.len(), 9);
    second.stop().await;
    stack.edge.stop().await;
    stack.routing.stop().await;
}
