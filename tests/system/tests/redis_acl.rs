//! The per-service Redis ACL users (`as2ctl redis acl`, from
//! `as2_common::redis::acl`) on a real `redis-server`: each service runs under its own
//! user, and a user cannot touch another service's keys nor run dangerous commands.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use as2_common::config::RedisConfig;
use as2_common::redis::acl::SERVICE_USERS;
use as2_common::redis::{KeyGroup, KeyNamespace, Redis};
use as2_common::runtime::ServiceHandle;
use as2_edge::dedup::{
    Claim, DedupStore, DedupTimes, Inspection, MessageKey, PublishAttempt, StoredReceipt,
};
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::mdn::v1::{
    DeliveryState, EnqueueMdnDeliveryRequest, GetDeliveryStatusRequest, HeaderField, PreparedMdn,
    enqueue_mdn_delivery_request,
};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    AsyncMdnPolicy, CreatePartnershipRequest, DeletePartnershipRequest, Partnership,
    PartnershipEventKind, UpdatePartnershipRequest, WatchPartnershipsRequest,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;

const PREFIX: &str = "as2";

fn password(service: &str) -> String {
    format!("{service}-secret-for-the-test")
}

/// The server with every service user created as `as2ctl redis acl` prints them.
async fn server_with_users() -> as2_testkit::RedisServer {
    let server = as2_testkit::RedisServer::start();
    let admin = as2_common::redis::connect(&RedisConfig::new(server.url(), PREFIX))
        .await
        .unwrap();
    let namespace = KeyNamespace::new(PREFIX).unwrap();
    for user in SERVICE_USERS {
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER");
        for argument in user.setuser_arguments(&namespace, &password(user.service)) {
            setuser.arg(argument);
        }
        let () = setuser
            .query_async(&mut admin.connection.clone())
            .await
            .unwrap();
    }
    server
}

fn url_of(server: &as2_testkit::RedisServer, service: &str) -> String {
    format!(
        "redis://{PREFIX}-{service}:{}@127.0.0.1:{}/",
        password(service),
        server.port()
    )
}

async fn connect_as(server: &as2_testkit::RedisServer, service: &str) -> Redis {
    as2_common::redis::connect(&RedisConfig::new(url_of(server, service), PREFIX))
        .await
        .unwrap()
}

async fn stop(service: ServiceHandle) {
    tokio::time::timeout(Duration::from_secs(15), service.stop())
        .await
        .unwrap()
        .unwrap();
}

/// Runs `command` and returns the error code Redis answered (`None`: it succeeded).
async fn refusal(redis: &Redis, command: &[&str]) -> Option<String> {
    let mut cmd = redis::cmd(command[0]);
    for argument in &command[1..] {
        cmd.arg(*argument);
    }
    cmd.query_async::<redis::Value>(&mut redis.connection.clone())
        .await
        .err()
        .map(|error| error.code().unwrap_or("(no code)").to_owned())
}

#[tokio::test]
async fn the_edge_user_keeps_its_dedup_records_and_cannot_write_a_partnership() {
    let server = server_with_users().await;
    let edge = connect_as(&server, "edge").await;
    let namespace = edge.namespace.clone();
    let store = DedupStore::new(
        edge.connection.clone(),
        namespace.clone(),
        DedupTimes {
            lease: Duration::from_secs(30),
            publish_window: Duration::from_secs(12),
            retention: Duration::from_secs(60),
        },
    );
    let message = MessageKey {
        as2_from: "acme",
        as2_to: "us",
        message_id: "<acl@acme.example>",
    };
    let Claim::Claimed(mut token) = store.claim(&message).await.unwrap() else {
        panic!("a new message is claimed");
    };
    // Every script of the claim protocol runs under the edge's user, and so does the
    // registry of pending objects the orphan sweep reads.
    assert!(
        store
            .note_object(&mut token, &message, "documents/acl")
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .pending_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let attempt = PublishAttempt {
        topic: "documents".to_owned(),
        partition: 0,
        scan_from: 0,
        object: Some("documents/acl".to_owned()),
    };
    assert!(store.arm(&token, &attempt).await.unwrap());
    store.abandon(token).await.unwrap();
    let Claim::Claimed(token) = store.claim(&message).await.unwrap() else {
        panic!("an abandoned claim is taken over");
    };
    assert_eq!(
        token.earlier().map(|earlier| &earlier.attempt),
        Some(&attempt)
    );
    let receipt = StoredReceipt {
        status: 200,
        headers: vec![],
        body: b"mdn".to_vec(),
        pending_async_mdn: None,
    };
    store.complete(token, &receipt).await.unwrap();
    assert!(
        matches!(store.claim(&message).await.unwrap(), Claim::Done(stored) if stored == receipt)
    );
    assert_eq!(
        store.inspect(&message).await.unwrap(),
        Inspection::Done {
            object: Some("documents/acl".to_owned())
        }
    );
    store
        .forget_object(&message, "documents/acl")
        .await
        .unwrap();
    assert!(
        store
            .pending_objects(Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let partnership = KeyGroup::Partnerships.key(&namespace, ":acme");
    let script_writing_a_partnership = "return redis.call('HSET', KEYS[1], 'doc', 'x')";
    for command in [
        vec!["HSET", partnership.as_str(), "doc", "forged"],
        vec!["HSET", "as2:partnership:acme", "doc", "forged"],
        vec!["HGET", partnership.as_str(), "doc"],
        vec![
            "EVAL",
            script_writing_a_partnership,
            "1",
            partnership.as_str(),
        ],
        vec!["XADD", "as2:{mdn}:jobs", "*", "id", "forged"],
        vec!["PUBLISH", "as2:partnership-events", "forged"],
        vec!["FLUSHALL"],
        vec!["KEYS", "*"],
        vec!["CONFIG", "GET", "maxmemory-policy"],
        vec!["ACL", "LIST"],
        vec!["SHUTDOWN", "NOSAVE"],
    ] {
        assert_eq!(
            refusal(&edge, &command).await.as_deref(),
            Some("NOPERM"),
            "{command:?}"
        );
    }
    // What it may do, it may do only on its own keys.
    assert_eq!(refusal(&edge, &["SET", "as2:dedup:x", "1"]).await, None);
    assert_eq!(refusal(&edge, &["WAIT", "0", "10"]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_runs_under_its_user_with_audit_and_change_events() {
    let server = server_with_users().await;
    let config = as2_routing::RoutingConfig::local(url_of(&server, "routing"), PREFIX);
    let routing = as2_routing::RoutingServer::bind(config).await.unwrap();
    let (grpc, admin) = (routing.grpc_addr().unwrap(), routing.admin_addr().unwrap());
    let service = ServiceHandle::spawn("routing", |stop| routing.serve(stop));
    as2_testkit::admin::wait_until_ready("routing", admin).await;
    let mut client = RoutingServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let mut events = client
        .watch_partnerships(WatchPartnershipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.kind, PartnershipEventKind::Reset as i32);

    let created = client
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(Partnership {
                as2_from: "acme".to_owned(),
                as2_to: "us".to_owned(),
                kafka_topic: "acme.in".to_owned(),
                ..Partnership::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .partnership
        .unwrap();
    let event = events.next().await.unwrap().unwrap();
    assert_eq!(event.kind, PartnershipEventKind::Upserted as i32);
    let mut changed = created.clone();
    changed.kafka_topic = "acme.changed".to_owned();
    client
        .update_partnership(UpdatePartnershipRequest {
            partnership: Some(changed),
            expected_revision: 1,
        })
        .await
        .unwrap();
    client
        .delete_partnership(DeletePartnershipRequest {
            id: created.id.clone(),
            expected_revision: 2,
        })
        .await
        .unwrap();
    let routing_user = connect_as(&server, "routing").await;
    let store = as2_routing::store::PartnershipStore::new(
        routing_user.connection.clone(),
        routing_user.namespace.clone(),
    );
    let actions: Vec<String> = store
        .audit_log(10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.action)
        .collect();
    assert_eq!(actions, ["delete", "update", "create"]);
    assert_eq!(
        refusal(&routing_user, &["SET", "as2:dedup:x", "forged"])
            .await
            .as_deref(),
        Some("NOPERM")
    );
    stop(service).await;
}

/// A receiver that answers every request with 200.
async fn receiver() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mdn", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = vec![0_u8; 64 * 1024];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdn_delivers_under_its_user() {
    let server = server_with_users().await;
    let (url, receiving) = receiver().await;
    let mut config = as2_mdn::MdnConfig::local(url_of(&server, "mdn"), PREFIX);
    config.delivery.poll_interval_ms = 50;
    let mdn = as2_mdn::MdnServer::bind(config).await.unwrap();
    let (grpc, admin) = (mdn.grpc_addr().unwrap(), mdn.admin_addr().unwrap());
    let service = ServiceHandle::spawn("mdn", |stop| mdn.serve(stop));
    as2_testkit::admin::wait_until_ready("mdn", admin).await;
    let mut client = MdnDeliveryServiceClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let header = |name: &str, value: &str| HeaderField {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let id = client
        .enqueue_mdn_delivery(EnqueueMdnDeliveryRequest {
            original_message_id: "<acl@partner.example>".to_owned(),
            partnership_id: "partner-a".to_owned(),
            as2_from: "gateway".to_owned(),
            as2_to: "partner".to_owned(),
            delivery_url: url,
            policy: Some(AsyncMdnPolicy {
                allow_private_targets: true,
                ..AsyncMdnPolicy::default()
            }),
            mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(PreparedMdn {
                headers: vec![
                    header("AS2-From", "gateway"),
                    header("AS2-To", "partner"),
                    header("Content-Type", "multipart/report; boundary=\"b\""),
                ],
                body: b"--b\r\n\r\nMDN\r\n--b--\r\n".to_vec(),
            })),
            ..EnqueueMdnDeliveryRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .delivery_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = client
            .get_delivery_status(GetDeliveryStatusRequest {
                delivery_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.state == DeliveryState::Delivered as i32 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mdn_user = connect_as(&server, "mdn").await;
    assert_eq!(
        refusal(
            &mdn_user,
            &["HSET", "as2:{sender}:message:x", "state", "failed"]
        )
        .await
        .as_deref(),
        Some("NOPERM")
    );
    stop(service).await;
    receiving.abort();
}

#[tokio::test]
async fn the_sender_user_keeps_its_outbox_and_nothing_else() {
    let server = server_with_users().await;
    let sender = connect_as(&server, "sender").await;
    as2_sender::store::layout_migration(&sender.namespace)
        .run(&sender)
        .await
        .unwrap();
    let store = as2_sender::store::MessageStore::new(
        sender.connection.clone(),
        sender.namespace.clone(),
        3_600,
    );
    let source = as2_sender::message::RecordSource {
        topic: "out".to_owned(),
        partition: 0,
        offset: 1,
    };
    let message_id = "<acl@gateway.example>";
    let new = as2_sender::store::NewMessage {
        message_id,
        partnership_id: "acme",
        source: &source,
        filename: None,
        traceparent: "",
    };
    assert_eq!(store.begin(&new, 1_000).await.unwrap(), None);
    store.await_mdn(message_id, 2_000, 202).await.unwrap();
    let outcome = as2_sender::store::Outcome {
        delivered: true,
        ..as2_sender::store::Outcome::default()
    };
    assert!(store.finish(message_id, &outcome, 1_500).await.unwrap());
    assert_eq!(store.unpublished(2_000, 10).await.unwrap().len(), 1);
    store.receipt_published(message_id).await.unwrap();
    for command in [
        vec!["HSET", "as2:{partnership}:acme", "doc", "forged"],
        vec!["SET", "as2:dedup:x", "forged"],
        vec!["FLUSHDB"],
    ] {
        assert_eq!(
            refusal(&sender, &command).await.as_deref(),
            Some("NOPERM"),
            "{command:?}"
        );
    }
}
