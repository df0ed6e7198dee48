//! Publishing documents to a real Kafka-protocol broker.

#![allow(clippy::unwrap_used, clippy::print_stderr)] // test helpers outside #[test] functions

use std::time::Duration;

use as2_edge::kafka::{DocumentPublisher, KafkaConfig, OutgoingRecord, PublishError};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

fn record(payload: &[u8]) -> OutgoingRecord<'_> {
    OutgoingRecord {
        topic: "documents",
        key: "acme",
        partition: None,
        headers: vec![
            ("as2-from", "acme".to_owned()),
            ("as2-message-id", "<1@acme>".to_owned()),
        ],
        payload,
    }
}

#[tokio::test]
async fn a_published_document_is_acknowledged_and_readable_with_its_headers() {
    let broker = as2_testkit::KafkaBroker::start();
    let publisher = DocumentPublisher::new(KafkaConfig::new(broker.bootstrap_servers())).unwrap();
    let large = vec![7_u8; 2 * 1024 * 1024];
    let first = publisher.publish(record(b"UNB+UNOA:1")).await.unwrap();
    let second = publisher.publish(record(&large)).await.unwrap();
    assert_eq!(second.partition, first.partition, "one key, one partition");
    assert_eq!(second.offset, first.offset + 1);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", "publish-test")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&["documents"]).unwrap();
    let mut received = Vec::new();
    while received.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let headers = message.headers().unwrap();
        let header = headers.get(1);
        assert_eq!(header.key, "as2-message-id");
        assert_eq!(header.value, Some(&b"<1@acme>"[..]));
        assert_eq!(message.key(), Some(&b"acme"[..]));
        received.push(message.payload().unwrap().to_vec());
    }
    assert_eq!(received, vec![b"UNB+UNOA:1".to_vec(), large]);
    consumer.unsubscribe();
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_after_the_timeout() {
    let port = as2_testkit::free_port();
    let mut config = KafkaConfig::new(format!("127.0.0.1:{port}"));
    config.publish_timeout_ms = Some(1_000);
    let publisher = DocumentPublisher::new(config).unwrap();
    let result = publisher.publish(record(b"x")).await;
    assert!(
        matches!(result, Err(PublishError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn publishing_resumes_after_the_broker_comes_back() {
    let mut broker = as2_testkit::KafkaBroker::start();
    let mut config = KafkaConfig::new(broker.bootstrap_servers());
    config.publish_timeout_ms = Some(2_000);
    let publisher = DocumentPublisher::new(config).unwrap();
    publisher.publish(record(b"before")).await.unwrap();
    broker.stop();
    assert!(matches!(
        publisher.publish(record(b"while down")).await,
        Err(PublishError::Unavailable(_))
    ));
    broker.restart();
    let mut last = None;
    for _ in 0..10 {
        match publisher.publish(record(b"after")).await {
            Ok(stored) => {
                last = Some(stored);
                break;
            }
            Err(error) => {
                last = None;
                eprintln!("retrying after: {error}");
            }
        }
    }
    assert!(
        last.is_some(),
        "publishing did not resume after the broker restarted"
    );
    // The record that timed out while the broker was down left the idempotent producer
    // needing an epoch bump; it was replaced instead.
    assert!(
        publisher.generation() >= 1,
        "the producer was not replaced after a timed-out record"
    );
}
