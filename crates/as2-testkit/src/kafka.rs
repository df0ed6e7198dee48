//! Reading what a service published to a Kafka topic (feature `kafka`).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

/// One consumed record.
#[derive(Debug)]
pub struct ConsumedRecord {
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's headers (values as text, lossily).
    pub headers: Vec<(String, String)>,
    /// The record's value.
    pub payload: Vec<u8>,
    /// The partition the record was read from.
    pub partition: i32,
    /// The record's offset in its partition.
    pub offset: i64,
    /// The record's timestamp (milliseconds since the epoch; the producer's create time
    /// unless the topic stamps append times), if it has one.
    pub timestamp: Option<i64>,
}

impl ConsumedRecord {
    /// The value of the header named exactly `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `count` records from `topic` from the beginning (within 60 s plus 1 ms per
/// record), then waits `quiet` for any extra record (which is returned too, so callers
/// can assert exact counts). Each record is returned once: one that the consumer reads
/// again (after a rebalance of its group it starts over from the beginning) is left out
/// by its partition and offset, so two records with the same content are two records in
/// the topic.
///
/// # Panics
///
/// When the consumer fails or fewer than `count` records arrive.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    count: usize,
    quiet: Duration,
) -> Vec<ConsumedRecord> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("testkit-{}", crate::random_u32()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("a kafka consumer");
    consumer
        .subscribe(&[topic])
        .expect("subscribe to the topic");
    let mut records = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(60)
        + Duration::from_millis(u64::try_from(count).unwrap_or(u64::MAX));
    loop {
        let wait = if records.len() >= count {
            quiet
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) if !seen.insert((message.partition(), message.offset())) => {}
            Ok(Ok(message)) => records.push(ConsumedRecord {
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                headers: message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                (
                                    header.key.to_owned(),
                                    String::from_utf8_lossy(header.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                payload: message.payload().unwrap_or_default().to_vec(),
            }),
            Ok(Err(error)) => panic!("consuming {topic} failed: {error}"),
            Err(_elapsed) => break,
        }
    }
    consumer.unsubscribe();
    assert!(
        records.len() >= count,
        "expected {count} records in {topic}, got {}",
        records.len()
    );
    records
}
