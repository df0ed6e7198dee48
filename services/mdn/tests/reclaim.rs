//! A replica killed with SIGKILL while it holds jobs: another replica takes them over
//! after the reclaim timeout and delivers every one of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use as2_rpc::mdn::v1::DeliveryState;
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use support::{Receiver, RunningMdn, enqueue_request, fast_config, status, wait_for_state};

const JOBS: usize = 10;
const KILLED_REPLICA_WORKERS: usize = 4;

/// The real `as2-mdn` binary, killed on drop.
struct MdnProcess {
    child: Child,
    grpc_addr: SocketAddr,
}

impl MdnProcess {
    fn spawn(redis_url: &str, prefix: &str) -> Self {
        let grpc_port = as2_testkit::free_port();
        let admin_port = as2_testkit::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_as2-mdn"))
            .env("AS2_REDIS_URL", redis_url)
            .env("AS2_GRPC_INSECURE_PLAINTEXT", "true")
            .env("AS2_REDIS_KEY_PREFIX", prefix)
            .env("AS2_GRPC_LISTEN", format!("127.0.0.1:{grpc_port}"))
            .env("AS2_HTTP_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env("AS2_MDN_WORKERS", KILLED_REPLICA_WORKERS.to_string())
            .env("AS2_MDN_ATTEMPT_TIMEOUT_MS", "60000")
            .env("AS2_MDN_RECLAIM_IDLE_MS", "120000")
            .env("AS2_MDN_CONSUMER_NAME", "doomed-replica")
            .env("AS2_LOG_FILTER", "warn")
            .env_remove("AS2_KAFKA_BOOTSTRAP_SERVERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let grpc_addr = SocketAddr::from(([127, 0, 0, 1], grpc_port));
        assert!(
            as2_testkit::wait_for_port(grpc_addr, Duration::from_secs(20)),
            "as2-mdn did not start"
        );
        Self { child, grpc_addr }
    }

    /// SIGKILL: no drain, no acknowledgement, nothing written on the way out.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for MdnProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `XPENDING` summary: pending entries in total and per consumer.
type PendingReply = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

async fn pending_summary(
    connection: &mut redis::aio::MultiplexedConnection,
) -> (u64, Vec<(String, String)>) {
    let reply: PendingReply = redis::cmd("XPENDING")
        .arg("reclaim:{mdn}:jobs")
        .arg("mdn-delivery")
        .query_async(connection)
        .await
        .unwrap();
    (reply.0, reply.3.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_replica_are_delivered_by_another() {
    let redis = as2_testkit::RedisServer::start();
    let receiver = Receiver::start().await;
    receiver.hold(true);
    let mut doomed = MdnProcess::spawn(&redis.url(), "reclaim");
    let mut client = MdnDeliveryServiceClient::connect(format!("http://{}", doomed.grpc_addr))
        .await
        .unwrap();

    let mut ids = Vec::new();
    for index in 0..JOBS {
        let request = enqueue_request(&format!("held-{index}"), &receiver.url());
        ids.push(support::enqueue(&mut client, request).await);
    }
    // The doomed replica has POSTed as many MDNs as it has workers and waits for answers.
    receiver
        .wait_until(Duration::from_secs(20), |receiver| {
            receiver.requests_seen() >= KILLED_REPLICA_WORKERS
        })
        .await;
    let mut redis_connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pending = pending_summary(&mut redis_connection).await;
    assert_eq!(
        pending.0, KILLED_REPLICA_WORKERS as u64,
        "jobs held by the replica"
    );
    assert_eq!(
        pending.1,
        vec![(
            "doomed-replica".to_owned(),
            KILLED_REPLICA_WORKERS.to_string()
        )]
    );

    doomed.kill();
    receiver.hold(false);

    let mut config = fast_config(&redis.url(), "reclaim");
    config.delivery.attempt_timeout_ms = 1_000;
    config.delivery.reclaim_idle_ms = 2_000;
    let survivor = RunningMdn::start(config).await;
    let mut client = survivor.client().await;
    let mut reclaimed = 0;
    for id in &ids {
        let delivered = wait_for_state(
            &mut client,
            id,
            DeliveryState::Delivered,
            Duration::from_secs(30),
        )
        .await;
        if delivered.attempts == 2 {
            reclaimed += 1;
        }
    }
    assert_eq!(
        reclaimed, KILLED_REPLICA_WORKERS,
        "the held jobs were attempted again"
    );

    let delivered_ids: BTreeSet<String> = receiver
        .accepted()
        .iter()
        .map(|mdn| mdn.header("message-id").unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = (0..JOBS)
        .map(|index| format!("<mdn-held-{index}@gateway>"))
        .collect();
    assert_eq!(delivered_ids, expected, "every MDN arrived");
    let still_pending = pending_summary(&mut redis_connection).await;
    assert_eq!(still_pending.0, 0);
    assert_eq!(
        status(&mut client, &ids[0]).await.state,
        DeliveryState::Delivered as i32
    );
    survivor.stop().await;
}
