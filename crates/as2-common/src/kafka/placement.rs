//! Records whose partition and a lower bound of their offset are known before they are
//! produced, so that whoever takes over an attempt with an unknown outcome can read the
//! partition from there and find the record instead of producing it again.
//!
//! [`PlacingProducer::place`] picks the partition librdkafka's partitioner would pick
//! ([`partition_for_key`]) and an offset at or below the one the record will get: the
//! partition's high watermark as last seen, raised by every acknowledgement and read
//! from the broker again when older than [`WATERMARK_MAX_AGE`], so a search covers at
//! most a few seconds of the partition's traffic. [`PlacingProducer::find`] reads a
//! partition from an offset to its end for a record a predicate recognises. The edge
//! (documents) and the sender (receipts) build their exactly-once writes on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{IdempotentProducer, PublishError, Record, StoredRecord, partition_for_key};

/// How old a partition's known high watermark may be before placing a record reads it
/// from the broker again.
pub const WATERMARK_MAX_AGE: Duration = Duration::from_secs(2);

/// The longest time from arming an attempt to handing its record to the producer: a
/// writer that took longer does not produce (it answers as for a failure whose outcome
/// is unknown).
pub const PRODUCE_DEADLINE: Duration = Duration::from_secs(1);

/// How long after an attempt was armed its record can still land: the record is handed
/// to the producer within [`PRODUCE_DEADLINE`], librdkafka sends it (or sends it again)
/// until its delivery timeout (`publish_timeout`, `message.timeout.ms`), and the broker
/// may hold a request it has received for up to `broker_pause` before appending it
/// ([`super::KafkaConfig::broker_pause_ms`]). A search that finds nothing after this
/// proves the record absent.
pub fn publish_window(publish_timeout: Duration, broker_pause: Duration) -> Duration {
    PRODUCE_DEADLINE + publish_timeout + broker_pause
}

/// How long a topic's partition count is trusted before it is read again.
const PARTITION_COUNT_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a search may take before it counts as failed.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a record will go: its partition and an offset at or below the one it will get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The partition.
    pub partition: i32,
    /// Where a search for the record starts.
    pub scan_from: i64,
}

/// What a search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// The record.
    Found(StoredRecord),
    /// No such record up to `end`, the partition's high watermark when the search
    /// ended: a later search can start there.
    Absent {
        /// Offset of the next record of the partition.
        end: i64,
    },
}

/// Recognises the record a search looks for.
pub type Matcher = Box<dyn Fn(&BorrowedMessage<'_>) -> bool + Send>;

/// The shared idempotent producer with placement and search. Cheap to clone.
#[derive(Clone)]
pub struct PlacingProducer {
    producer: IdempotentProducer,
    /// What a search's consumer is configured from.
    consumer_config: ClientConfig,
    cache: Arc<Mutex<PlacementCache>>,
}

#[derive(Default)]
struct PlacementCache {
    partitions: HashMap<String, (i32, Instant)>,
    watermarks: HashMap<(String, i32), (i64, Instant)>,
}

impl PlacingProducer {
    /// Wraps `producer`; searches read with a consumer made from `consumer_config`
    /// (brokers and client settings; no group is joined).
    pub fn new(producer: IdempotentProducer, mut consumer_config: ClientConfig) -> Self {
        for (key, value) in [
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_uncommitted"),
        ] {
            consumer_config.set(key, value);
        }
        Self {
            producer,
            consumer_config,
            cache: Arc::default(),
        }
    }

    /// The producer.
    pub fn producer(&self) -> &IdempotentProducer {
        &self.producer
    }

    /// Publishes one record and waits for the acknowledgement of all in-sync replicas.
    pub async fn publish(&self, record: Record<'_>) -> Result<StoredRecord, PublishError> {
        let topic = record.topic.to_owned();
        let stored = self.producer.send(record).await?;
        self.cache()
            .raise_watermark(&topic, stored.partition, stored.offset + 1);
        Ok(stored)
    }

    /// Where a record of `topic` with `key` goes (see the module docs).
    pub async fn place(&self, topic: &str, key: &str) -> Result<Placement, PublishError> {
        let now = Instant::now();
        let known = self.cache().partitions.get(topic).copied();
        let partitions = match known {
            Some((count, at)) if now.duration_since(at) < PARTITION_COUNT_MAX_AGE => count,
            _ => {
                let producer = self.producer.clone();
                let name = topic.to_owned();
                let count =
                    blocking(move || producer.partition_count(&name, METADATA_TIMEOUT)).await?;
                self.cache()
                    .partitions
                    .insert(topic.to_owned(), (count, Instant::now()));
                count
            }
        };
        let partition = partition_for_key(key.as_bytes(), partitions);
        let slot = (topic.to_owned(), partition);
        let known = self.cache().watermarks.get(&slot).copied();
        let scan_from = match known {
            Some((offset, at)) if now.duration_since(at) < WATERMARK_MAX_AGE => offset,
            _ => {
                let producer = self.producer.clone();
                let name = topic.to_owned();
                let watermarks =
                    blocking(move || producer.watermarks(&name, partition, METADATA_TIMEOUT)).await;
                let high = match watermarks {
                    Ok((_, high)) => high,
                    // Not created yet (the first record creates it) or lost: it is empty.
                    Err(PublishError::Unavailable(error) | PublishError::Rejected(error))
                        if no_such_partition(&error) =>
                    {
                        0
                    }
                    Err(error) => return Err(error),
                };
                // What the broker says replaces what the acknowledgements said (a broker
                // that lost data starts lower).
                self.cache().watermarks.insert(slot, (high, Instant::now()));
                high
            }
        };
        Ok(Placement {
            partition,
            scan_from,
        })
    }

    /// Reads `partition` of `topic` from `from` to its current end for a record that
    /// `matches`.
    pub async fn find(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        matches: Matcher,
    ) -> Result<Search, PublishError> {
        let config = self.consumer_config.clone();
        let topic = topic.to_owned();
        blocking(move || {
            search_partition(&config, &topic, partition, from, &*matches)
                .map_err(PublishError::Unavailable)
        })
        .await
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PlacementCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PlacementCache {
    /// Records that `partition` of `topic` reaches at least `offset` now.
    fn raise_watermark(&mut self, topic: &str, partition: i32, offset: i64) {
        let now = Instant::now();
        let entry = self
            .watermarks
            .entry((topic.to_owned(), partition))
            .or_insert((offset, now));
        *entry = (entry.0.max(offset), now);
    }
}

/// Runs blocking librdkafka calls off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PublishError> + Send + 'static,
) -> Result<T, PublishError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Err(PublishError::Unavailable(KafkaError::Canceled)))
}

/// Reads one partition from `from` to the high watermark read at the start, for a record
/// that `matches`.
fn search_partition(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    from: i64,
    matches: &(dyn Fn(&BorrowedMessage<'_>) -> bool + Send),
) -> Result<Search, KafkaError> {
    let consumer: BaseConsumer = config.create()?;
    let (low, high) = match consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
        Ok(watermarks) => watermarks,
        // No such partition (a broker that lost its data, a deleted topic): no record can
        // be in it. Only the cluster's metadata shows that: an error alone proves nothing
        // (a client that has no metadata yet, a broker that has just come back).
        Err(error) if no_such_partition(&error) => {
            if partition_exists(&consumer, topic, partition)? {
                return Err(error);
            }
            tracing::warn!(
                topic,
                partition,
                "the partition a record was placed in does not exist: nothing can be found in it"
            );
            return Ok(Search::Absent { end: 0 });
        }
        Err(error) => return Err(error),
    };
    if low > from {
        tracing::warn!(
            topic,
            partition,
            from,
            low,
            "the partition no longer holds the offsets a search starts from"
        );
    }
    let start = from.max(low);
    if start >= high {
        return Ok(Search::Absent { end: high });
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + SEARCH_TIMEOUT;
    let mut position = start;
    let mut found = None;
    while position < high && found.is_none() {
        if Instant::now() >= deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(error)) => return Err(error),
            Some(Ok(message)) => {
                position = message.offset() + 1;
                if matches(&message) {
                    found = Some(StoredRecord {
                        partition,
                        offset: message.offset(),
                    });
                }
            }
        }
    }
    // Unassigned before it is dropped, so that no fetch is left pending.
    let _ = consumer.unassign();
    Ok(found.map_or(Search::Absent { end: high }, Search::Found))
}

/// Whether the cluster's metadata lists `partition` of `topic`; an error when the
/// metadata cannot be read.
fn partition_exists(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<bool, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
    let Some(found) = metadata.topics().iter().find(|found| found.name() == topic) else {
        return Ok(false);
    };
    match found.error() {
        None => Ok(found
            .partitions()
            .iter()
            .any(|listed| listed.id() == partition)),
        Some(error) if no_such_partition(&KafkaError::MetadataFetch(error.into())) => Ok(false),
        Some(error) => Err(KafkaError::MetadataFetch(error.into())),
    }
}

/// Whether `error` says the partition does not exist.
fn no_such_partition(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
        )
    )
}

/// The UTF-8 value of header `name` of `message`.
pub fn header_value<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers as _;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| std::str::from_utf8(header.value?).ok())
}
