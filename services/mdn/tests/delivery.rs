//! The MDN service against real Redis and against its in-memory state (`memory://`),
//! with a real Kafka-protocol broker for the status events: delivery, idempotent
//! enqueue, retries until the receiver is up or accepts, recorded failures, unsupported
//! URLs, status queries and listings.
//!
//! Each scenario takes the Redis URL and runs twice: `in_redis::…` with a Redis
//! started for the test, `in_memory::…` with `memory://`; those that exercise every
//! script and transaction of the store run a third time, `in_redis_cluster::…`, on a
//! three-master Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use as2_rpc::mdn::v1::{DeliveryState, GetDeliveryStatusRequest, ListDeliveriesRequest};
use as2_rpc::tonic::Code;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use support::{
    MEMORY_URL, Receiver, RunningMdn, enqueue_request, fast_config, in_redis_and_in_memory,
    in_redis_cluster, status, wait_for_state, wait_for_status,
};

const WAIT: Duration = Duration::from_secs(30);

in_redis_and_in_memory!(
    an_mdn_is_delivered_once_and_its_events_are_published,
    a_receiver_that_is_down_for_a_while_gets_the_mdn_when_it_is_up,
    a_503_is_retried_until_the_receiver_accepts,
    a_receiver_that_always_fails_ends_in_a_recorded_failure,
    mailto_is_recorded_as_unsupported_and_malformed_requests_are_refused,
    deliveries_are_listed_newest_first_with_filters_and_pages,
);

in_redis_cluster!(
    an_mdn_is_delivered_once_and_its_events_are_published,
    a_503_is_retried_until_the_receiver_accepts,
    a_receiver_that_always_fails_ends_in_a_recorded_failure,
    deliveries_are_listed_newest_first_with_filters_and_pages,
);

async fn an_mdn_is_delivered_once_and_its_events_are_published(redis_url: &str) {
    let broker = as2_testkit::KafkaBroker::start();
    let receiver = Receiver::start().await;
    let mut config = fast_config(redis_url, "deliver");
    config.kafka = as2_common::kafka::KafkaConfig::new(broker.bootstrap_servers());
    config.tracking = as2_mdn::config::TrackingConfig::new("mdn-events");
    let mdn = RunningMdn::start(config).await;
    let mut client = mdn.client().await;

    let request = enqueue_request("first", &receiver.url());
    let first = client
        .enqueue_mdn_delivery(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.already_enqueued);
    let delivered = wait_for_state(
        &mut client,
        &first.delivery_id,
        DeliveryState::Delivered,
        WAIT,
    )
    .await;
    assert_eq!(delivered.attempts, 1);
    assert_eq!(delivered.last_http_status, 200);
    assert!(delivered.delivered_at.is_some());
    assert_eq!(delivered.original_message_id, "<first@partner.example>");

    // Enqueued again (the edge retrying its hand-over): same id, nothing sent twice.
    let again = client
        .enqueue_mdn_delivery(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_enqueued);
    assert_eq!(again.delivery_id, first.delivery_id);

    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "one delivery only");
    let Some(as2_rpc::mdn::v1::enqueue_mdn_delivery_request::Mdn::Prepared(prepared)) =
        &request.mdn
    else {
        unreachable!()
    };
    assert_eq!(accepted[0].body, prepared.body, "the body is sent as is");
    for field in &prepared.headers {
        assert_eq!(
            accepted[0].header(&field.name),
            Some(field.value.as_str()),
            "{}",
            field.name
        );
    }

    // queued and delivered, as JSON keyed by the partnership.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "mdn-events-test")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["mdn-events"]).unwrap();
    let mut events = Vec::new();
    while events.len() < 2 {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .expect("status events arrive")
            .unwrap();
        assert_eq!(message.key(), Some(&b"partner-a"[..]));
        let event: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(event["delivery_id"], first.delivery_id.as_str());
        events.push((
            event["event"].as_str().unwrap().to_owned(),
            event["attempts"].as_u64().unwrap(),
            event["http_status"].as_u64().unwrap(),
        ));
    }
    // The queued event is published after the enqueue is stored, and a worker may deliver
    // (and publish) in between: the events carry the attempt count that orders them.
    events.sort_by_key(|(_, attempts, _)| *attempts);
    assert_eq!(
        events,
        [
            ("queued".to_owned(), 0, 0),
            ("delivered".to_owned(), 1, 200)
        ]
    );
    mdn.stop().await;
}

async fn a_receiver_that_is_down_for_a_while_gets_the_mdn_when_it_is_up(redis_url: &str) {
    let mut config = fast_config(redis_url, "down");
    config.delivery.max_attempts = 50;
    let mdn = RunningMdn::start(config).await;
    let mut client = mdn.client().await;

    let port = as2_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}/mdn");
    let id = support::enqueue(&mut client, enqueue_request("later", &url)).await;
    // Let a few attempts fail against the closed port; the third one has finished (a
    // retry is scheduled) before the receiver starts, or it could be the one to deliver.
    let failing = wait_for_status(&mut client, &id, WAIT, |current| {
        current.attempts >= 3 && current.state == DeliveryState::RetryScheduled as i32
    })
    .await;
    assert_eq!(failing.last_http_status, 0);
    assert!(!failing.last_error.is_empty());
    let receiver = Receiver::start_on_port(port).await;
    let delivered = wait_for_state(&mut client, &id, DeliveryState::Delivered, WAIT).await;
    assert!(delivered.attempts >= 4, "{delivered:?}");
    assert!(delivered.last_error.is_empty());
    assert_eq!(receiver.accepted().len(), 1);
    mdn.stop().await;
}

async fn a_503_is_retried_until_the_receiver_accepts(redis_url: &str) {
    let receiver = Receiver::start().await;
    receiver.answer_with(503);
    let mut config = fast_config(redis_url, "unavailable");
    config.delivery.max_attempts = 50;
    let mdn = RunningMdn::start(config).await;
    let mut client = mdn.client().await;

    let request = enqueue_request("busy", &receiver.url());
    let id = support::enqueue(&mut client, request.clone()).await;
    let refused = wait_for_status(&mut client, &id, WAIT, |current| {
        current.last_http_status == 503
    })
    .await;
    assert!(
        refused.state == DeliveryState::RetryScheduled as i32
            || refused.state == DeliveryState::InFlight as i32,
        "a retry follows: {refused:?}"
    );
    assert!(refused.last_error.contains("503"), "{refused:?}");
    assert!(receiver.accepted().is_empty());

    receiver.answer_with(200);
    let delivered = wait_for_state(&mut client, &id, DeliveryState::Delivered, WAIT).await;
    assert!(delivered.attempts >= 2, "{delivered:?}");
    assert_eq!(delivered.last_http_status, 200);
    assert!(delivered.last_error.is_empty());
    assert!(delivered.next_attempt_at.is_none());
    assert!(receiver.requests_seen() >= 2);
    assert_eq!(receiver.accepted().len(), 1);

    let again = client
        .enqueue_mdn_delivery(request)
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_enqueued);
    assert_eq!(again.delivery_id, id);
    let unchanged = status(&mut client, &id).await;
    assert_eq!(unchanged.state, DeliveryState::Delivered as i32);
    assert_eq!(unchanged.attempts, delivered.attempts);
    mdn.stop().await;
}

async fn a_receiver_that_always_fails_ends_in_a_recorded_failure(redis_url: &str) {
    let receiver = Receiver::start().await;
    receiver.answer_with(500);
    let config = fast_config(redis_url, "failing");
    let max_attempts = config.delivery.max_attempts;
    let mdn = RunningMdn::start(config).await;
    let mut client = mdn.client().await;

    let id = support::enqueue(&mut client, enqueue_request("doomed", &receiver.url())).await;
    let failed = wait_for_state(&mut client, &id, DeliveryState::Failed, WAIT).await;
    assert_eq!(failed.attempts, max_attempts);
    assert_eq!(failed.last_http_status, 500);
    assert!(failed.last_error.contains("500"), "{failed:?}");
    assert!(failed.next_attempt_at.is_none());
    // No attempt after the failure was recorded.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.requests_seen(), max_attempts as usize);
    assert!(receiver.accepted().is_empty());
    mdn.stop().await;
}

async fn mailto_is_recorded_as_unsupported_and_malformed_requests_are_refused(redis_url: &str) {
    let mdn = RunningMdn::start(fast_config(redis_url, "refuse")).await;
    let mut client = mdn.client().await;

    let mailto = client
        .enqueue_mdn_delivery(enqueue_request("mail", "mailto:as2@partner.example"))
        .await
        .unwrap()
        .into_inner();
    let recorded = status(&mut client, &mailto.delivery_id).await;
    assert_eq!(recorded.state, DeliveryState::Failed as i32);
    assert_eq!(recorded.attempts, 0);
    assert!(recorded.last_error.contains("mailto"), "{recorded:?}");

    let mut ftp = enqueue_request("ftp", "ftp://partner.example/mdn");
    let refused = client.enqueue_mdn_delivery(ftp.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("delivery_url"), "{refused:?}");
    ftp.delivery_url = "http://partner.example/mdn".to_owned();
    ftp.mdn = None;
    let refused = client.enqueue_mdn_delivery(ftp).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let unknown = client
        .get_delivery_status(GetDeliveryStatusRequest {
            delivery_id: "0123456789abcdef0123456789abcdef".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    mdn.stop().await;
}

async fn deliveries_are_listed_newest_first_with_filters_and_pages(redis_url: &str) {
    let receiver = Receiver::start().await;
    let mdn = RunningMdn::start(fast_config(redis_url, "list")).await;
    let mut client = mdn.client().await;

    let mut ids = Vec::new();
    for index in 0..5 {
        let mut request = enqueue_request(&format!("listed-{index}"), &receiver.url());
        if index % 2 == 1 {
            request.partnership_id = "partner-b".to_owned();
        }
        ids.push(support::enqueue(&mut client, request).await);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let failed = support::enqueue(&mut client, enqueue_request("listed-mail", "mailto:x@y")).await;
    for id in &ids {
        wait_for_state(&mut client, id, DeliveryState::Delivered, WAIT).await;
    }

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_deliveries(ListDeliveriesRequest {
                page_size: 2,
                page_token,
                ..ListDeliveriesRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.deliveries.len() <= 2);
        listed.extend(page.deliveries.into_iter().map(|d| d.delivery_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    newest_first.insert(0, failed.clone());
    assert_eq!(listed, newest_first);

    let partner_b = client
        .list_deliveries(ListDeliveriesRequest {
            partnership_id: "partner-b".to_owned(),
            ..ListDeliveriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        partner_b
            .deliveries
            .iter()
            .map(|d| d.delivery_id.clone())
            .collect::<Vec<_>>(),
        vec![ids[3].clone(), ids[1].clone()]
    );
    let only_failed = client
        .list_deliveries(ListDeliveriesRequest {
            state: DeliveryState::Failed as i32,
            ..ListDeliveriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_failed.deliveries.len(), 1);
    assert_eq!(only_failed.deliveries[0].delivery_id, failed);

    let bad_token = client
        .list_deliveries(ListDeliveriesRequest {
            page_token: "nonsense".to_owned(),
            ..ListDeliveriesRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    mdn.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_resume_after_redis_restarts_empty() {
    let mut redis = as2_testkit::RedisServer::start();
    let receiver = Receiver::start().await;
    let mdn = RunningMdn::start(fast_config(&redis.url(), "restart")).await;
    let mut client = mdn.client().await;

    // Redis comes back without the stream and its consumer group.
    redis.restart();
    let deadline = tokio::time::Instant::now() + WAIT;
    let id = loop {
        match client
            .enqueue_mdn_delivery(enqueue_request("after-restart", &receiver.url()))
            .await
        {
            Ok(response) => break response.into_inner().delivery_id,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for_state(&mut client, &id, DeliveryState::Delivered, WAIT).await;
    assert_eq!(receiver.accepted().len(), 1);
    mdn.stop().await;
}
