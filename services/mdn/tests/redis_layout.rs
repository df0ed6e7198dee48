//! The upgrade of a deployment whose MDN delivery keys were written before the hash
//! tags: delivered records and a delivery waiting for its retry are found under the new
//! names, and the waiting one is delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_common::config::RedisConfig;
use as2_common::redis::{KeyGroup, layout};
use as2_rpc::mdn::v1::{DeliveryState, ListDeliveriesRequest};
use support::{
    Receiver, RunningMdn, enqueue, enqueue_request, fast_config, status, wait_for_state,
    wait_for_status,
};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_written_in_the_old_layout_are_delivered_after_the_upgrade() {
    let redis_server = as2_testkit::RedisServer::start();
    let receiver = Receiver::start().await;
    let mut config = fast_config(&redis_server.url(), "as2");
    config.delivery.max_attempts = 100;

    // What a version before hash tags leaves: one delivered MDN and one waiting for
    // the retry of a receiver that is down.
    let before = RunningMdn::start(config.clone()).await;
    let mut client = before.client().await;
    let delivered = enqueue(&mut client, enqueue_request("delivered", &receiver.url())).await;
    wait_for_state(&mut client, &delivered, DeliveryState::Delivered, WAIT).await;
    let later_port = as2_testkit::free_port();
    let later_url = format!("http://127.0.0.1:{later_port}/mdn");
    let waiting = enqueue(&mut client, enqueue_request("waiting", &later_url)).await;
    wait_for_status(&mut client, &waiting, WAIT, |current| {
        current.attempts >= 2 && current.state == DeliveryState::RetryScheduled as i32
    })
    .await;
    before.stop().await;
    let redis = as2_common::redis::connect(&RedisConfig::new(redis_server.url(), "as2"))
        .await
        .unwrap();
    let renamed = layout::rename_to_legacy_layout(&redis, KeyGroup::MdnDelivery)
        .await
        .unwrap();
    assert!(
        renamed >= 5,
        "deliveries, jobs, retries, index, queued: {renamed}"
    );
    let mut connection = redis.connection.clone();
    let old_keys: Vec<String> = redis::cmd("KEYS")
        .arg("as2:mdn:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(
        old_keys.contains(&"as2:mdn:retries".to_owned()),
        "{old_keys:?}"
    );
    assert!(
        old_keys.contains(&"as2:mdn:jobs".to_owned()),
        "{old_keys:?}"
    );

    // Two replicas of the new version start at once; the receiver comes up.
    let (first, second) = tokio::join!(
        RunningMdn::start(config.clone()),
        RunningMdn::start(config.clone())
    );
    let later = Receiver::start_on_port(later_port).await;
    let mut client = first.client().await;
    let done = wait_for_state(&mut client, &waiting, DeliveryState::Delivered, WAIT).await;
    assert!(done.attempts >= 3, "{done:?}");
    let mut other = second.client().await;
    let earlier = status(&mut other, &delivered).await;
    assert_eq!(earlier.state, DeliveryState::Delivered as i32);
    assert_eq!(earlier.attempts, 1);
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(later.accepted().len(), 1);
    let listed = other
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.deliveries.len(), 2);
    let old_keys: Vec<String> = redis::cmd("KEYS")
        .arg("as2:mdn:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(old_keys.is_empty(), "{old_keys:?}");
    first.stop().await;
    second.stop().await;
}
