//! Placement and search against a real Kafka-protocol broker (Tansu): a record is found
//! from the offset its placement gave, a record that is not there is absent up to the
//! partition's end, and only a partition the cluster's metadata does not list counts as
//! empty without reading it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::time::Duration;

use as2_common::kafka::placement::{Matcher, PlacingProducer, Search};
use as2_common::kafka::{IdempotentProducer, KafkaConfig, ProducerSettings, Record};
use rdkafka::message::{Headers as _, Message as _};

const TOPIC: &str = "placement-test";

fn producer(bootstrap_servers: &str) -> PlacingProducer {
    let config = KafkaConfig::new(bootstrap_servers);
    let producer = IdempotentProducer::new(
        &config,
        bootstrap_servers,
        ProducerSettings {
            client_id: "placement-test",
            default_publish_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(2),
        },
    )
    .unwrap();
    let consumer = config.client_config(
        bootstrap_servers,
        "placement-test-search",
        &[("group.id", "placement-test-search")],
    );
    PlacingProducer::new(producer, consumer)
}

/// Recognises the record whose `id` header is `id`.
fn with_id(id: &'static str) -> Matcher {
    Box::new(move |message| {
        message.headers().is_some_and(|headers| {
            headers
                .iter()
                .any(|header| header.key == "id" && header.value == Some(id.as_bytes()))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_record_is_found_from_its_placement_and_a_missing_one_is_absent_to_the_end() {
    let broker = as2_testkit::KafkaBroker::start();
    let producer = producer(&broker.bootstrap_servers());
    let mut placements = Vec::new();
    for id in ["first", "second", "third"] {
        let placement = producer.place(TOPIC, "partnership").await.unwrap();
        let stored = producer
            .publish(Record {
                topic: TOPIC,
                key: "partnership",
                partition: Some(placement.partition),
                headers: vec![("id", id.to_owned())],
                payload: id.as_bytes(),
            })
            .await
            .unwrap();
        assert_eq!(stored.partition, placement.partition);
        assert!(
            stored.offset >= placement.scan_from,
            "{stored:?} {placement:?}"
        );
        placements.push((placement, stored));
    }
    let (second, stored_second) = placements[1];
    match producer
        .find(TOPIC, second.partition, second.scan_from, with_id("second"))
        .await
        .unwrap()
    {
        Search::Found(found) => assert_eq!(found, stored_second),
        absent => panic!("the second record is there: {absent:?}"),
    }
    let end = placements[2].1.offset + 1;
    assert_eq!(
        producer
            .find(TOPIC, second.partition, 0, with_id("never sent"))
            .await
            .unwrap(),
        Search::Absent { end }
    );
    // A search that starts past the record does not see it.
    assert_eq!(
        producer
            .find(TOPIC, second.partition, end, with_id("first"))
            .await
            .unwrap(),
        Search::Absent { end }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_metadata_does_not_list_is_empty() {
    let broker = as2_testkit::KafkaBroker::start();
    let producer = producer(&broker.bootstrap_servers());
    let placement = producer.place(TOPIC, "partnership").await.unwrap();
    producer
        .publish(Record {
            topic: TOPIC,
            key: "partnership",
            partition: Some(placement.partition),
            headers: vec![("id", "only".to_owned())],
            payload: b"only",
        })
        .await
        .unwrap();
    // A partition beyond the topic's count, and a topic nobody created.
    for (topic, partition) in [(TOPIC, 999), ("placement-test-never-created", 0)] {
        assert_eq!(
            producer
                .find(topic, partition, 0, with_id("only"))
                .await
                .unwrap(),
            Search::Absent { end: 0 },
            "{topic}/{partition}"
        );
    }
}
