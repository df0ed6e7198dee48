//! `as2ctl mdn ...` end to end: the real binary against an MDN service (started
//! in-process through its library) on a real Redis.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use as2_common::runtime::ServiceHandle;
use as2_mdn::{MdnConfig, MdnServer};
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::mdn::v1::{
    EnqueueMdnDeliveryRequest, HeaderField, PreparedMdn, enqueue_mdn_delivery_request,
};
use serde_json::Value;

async fn as2ctl(mdn_url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_as2ctl"))
        .env_remove("AS2_MDN_URL")
        .arg("--grpc-insecure-plaintext")
        .arg("--mdn-url")
        .arg(mdn_url)
        .args(args)
        .output()
        .await
        .unwrap()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "as2ctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn request(message_id: &str, url: &str, partnership: &str) -> EnqueueMdnDeliveryRequest {
    EnqueueMdnDeliveryRequest {
        original_message_id: format!("<{message_id}@partner>"),
        partnership_id: partnership.to_owned(),
        as2_from: "gateway".to_owned(),
        as2_to: "partner".to_owned(),
        delivery_url: url.to_owned(),
        traceparent: String::new(),
        // The test's URLs are on loopback: the partnership opts in.
        policy: Some(as2_rpc::routing::v1::AsyncMdnPolicy {
            allow_private_targets: true,
            ..Default::default()
        }),
        mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(PreparedMdn {
            headers: vec![HeaderField {
                name: "Content-Type".to_owned(),
                value: "text/plain".to_owned(),
            }],
            body: b"mdn".to_vec(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdn_status_and_list_show_deliveries() {
    let redis = as2_testkit::RedisServer::start();
    let mut config = MdnConfig::local(redis.url(), "ctl");
    config.delivery.initial_backoff_ms = 600_000;
    config.delivery.attempt_timeout_ms = 1_000;
    config.delivery.reclaim_idle_ms = 5_000;
    let server = MdnServer::bind(config).await.unwrap();
    let url = format!("http://{}", server.grpc_addr().unwrap());
    let service = ServiceHandle::spawn("mdn", |stop| server.serve(stop));
    let mut client = MdnDeliveryServiceClient::connect(url.clone())
        .await
        .unwrap();

    let closed_port = as2_testkit::free_port();
    let retrying = client
        .enqueue_mdn_delivery(request(
            "retrying",
            &format!("http://127.0.0.1:{closed_port}/"),
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .delivery_id;
    let mailto = client
        .enqueue_mdn_delivery(request("mailed", "mailto:as2@partner", "p2"))
        .await
        .unwrap()
        .into_inner()
        .delivery_id;

    // The first attempt fails against the closed port; the next is an hour away.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let shown = loop {
        let shown = json(&as2ctl(&url, &["--json", "mdn", "status", &retrying]).await);
        if shown["state"] == "retry-scheduled" {
            break shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(shown["attempts"], 1);
    assert_eq!(shown["partnership_id"], "p1");
    assert!(shown["next_attempt_at"].is_string());
    assert!(!shown["last_error"].as_str().unwrap().is_empty());

    let failed = json(&as2ctl(&url, &["mdn", "list", "--state", "failed", "--json"]).await);
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["delivery_id"], mailto.as_str());
    assert!(failed[0]["last_error"].as_str().unwrap().contains("mailto"));

    let by_partnership =
        json(&as2ctl(&url, &["mdn", "list", "--partnership", "p1", "--json"]).await);
    assert_eq!(by_partnership.as_array().unwrap().len(), 1);

    let table = as2ctl(&url, &["mdn", "list"]).await;
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with(&mailto),
        "newest first: {table}"
    );
    assert!(table.contains("retry-scheduled"), "{table}");

    let detail = as2ctl(&url, &["mdn", "status", &mailto]).await;
    let detail = String::from_utf8(detail.stdout).unwrap();
    assert!(
        detail.contains(&format!("{:<22}failed", "state:")),
        "{detail}"
    );

    let missing = as2ctl(&url, &["mdn", "status", "0123456789abcdef0123456789abcdef"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    service.stop().await.unwrap();
}
