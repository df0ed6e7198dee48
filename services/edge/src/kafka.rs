//! Publishing received documents to Kafka, and finding a record an earlier attempt may
//! have written.
//!
//! The producer is the shared idempotent one ([`as2_common::kafka::IdempotentProducer`]:
//! `enable.idempotence=true`, `acks=all`, replaced by a fresh one when its idempotence
//! state breaks). [`DocumentPublisher::publish`] returns only once the broker has
//! acknowledged the record (or the publish timeout has passed), because the edge must not
//! answer a partner with a "processed" MDN for a document that is not stored.
//!
//! Errors are split into two kinds: [`PublishError::Unavailable`] (the cluster cannot take
//! the record right now: the partner should resend, so the edge answers 503) and
//! [`PublishError::Rejected`] (the cluster will never take this record, such as a record
//! over the size limit or a topic we may not write).
//!
//! # Placement and search
//!
//! The edge picks each record's partition itself ([`DocumentSink::place`]: the partition
//! librdkafka's partitioner would pick, [`partition_for_key`]) together with an offset at
//! or below the one the record will get, so that the claim can say where the record of
//! an attempt would be (see [`crate::dedup`]). That offset is the partition's high
//! watermark as last seen: raised by every acknowledgement, and read from the broker
//! again when it is older than [`WATERMARK_MAX_AGE`], so a search covers at most a few
//! seconds of the partition's traffic. [`DocumentSink::find`] reads a partition from an
//! offset to its current end, looking for a message's record by its AS2 headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use as2_common::kafka::{IdempotentProducer, ProducerSettings, Record, partition_for_key};
pub use as2_common::kafka::{KafkaConfig, PublishError, StoredRecord};
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::dedup::MessageKey;

/// The publish timeout of documents unless configured: a partner waits for the answer.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How old a partition's known high watermark may be before placing a record reads it
/// from the broker again.
pub const WATERMARK_MAX_AGE: Duration = Duration::from_secs(2);

/// How long a topic's partition count is trusted before it is read again.
const PARTITION_COUNT_MAX_AGE: Duration = Duration::from_secs(60);

/// How long a metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a search may take before it counts as failed (the partner resends).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// One Kafka record: the document (value), the partnership id (key, so one partner's
/// documents stay in order) and the headers of docs/kafka-records.md.
pub type OutgoingRecord<'a> = Record<'a>;

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
    /// The message's record.
    Found(StoredRecord),
    /// No record of the message up to `end`, the partition's high watermark when the
    /// search ended: a later search can start there.
    Absent {
        /// Offset of the next record of the partition.
        end: i64,
    },
}

/// The producer that publishes received documents. Cheap to clone.
#[derive(Clone)]
pub struct DocumentPublisher {
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

impl DocumentPublisher {
    /// Creates the producer (brokers `127.0.0.1:9092` unless configured). Connecting to
    /// the brokers happens in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        let bootstrap_servers = config.bootstrap_servers_or_default();
        let producer = IdempotentProducer::new(
            &config,
            bootstrap_servers,
            ProducerSettings {
                client_id: "as2-edge",
                default_publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                linger: Duration::from_millis(2),
            },
        )?;
        let consumer_config = config.client_config(
            bootstrap_servers,
            "as2-edge-search",
            &[
                ("group.id", "as2-edge-search"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_uncommitted"),
            ],
        );
        Ok(Self {
            producer,
            consumer_config,
            cache: Arc::default(),
        })
    }

    /// Publishes one record and waits for the acknowledgement of all in-sync replicas.
    pub async fn publish(&self, record: OutgoingRecord<'_>) -> Result<StoredRecord, PublishError> {
        let topic = record.topic.to_owned();
        let stored = self.producer.send(record).await?;
        self.cache()
            .raise_watermark(&topic, stored.partition, stored.offset + 1);
        Ok(stored)
    }

    /// The publish timeout in force (librdkafka's `message.timeout.ms`).
    pub fn publish_timeout(&self) -> Duration {
        self.producer.publish_timeout()
    }

    /// How many times the producer has been replaced after its state broke.
    pub fn generation(&self) -> u64 {
        self.producer.generation()
    }

    /// Waits until everything queued has been delivered (or the timeout passes). Blocks.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
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

    /// Reads `partition` of `topic` from `from` to its current end for the record of
    /// `message` (matched by its `as2-from`, `as2-to` and `as2-message-id` headers).
    pub async fn find(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        message: &MessageKey<'_>,
    ) -> Result<Search, PublishError> {
        let config = self.consumer_config.clone();
        let topic = topic.to_owned();
        let digest = message.digest();
        blocking(move || {
            search_partition(&config, &topic, partition, from, &digest)
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
/// whose AS2 headers give `digest`.
fn search_partition(
    config: &ClientConfig,
    topic: &str,
    partition: i32,
    from: i64,
    digest: &str,
) -> Result<Search, KafkaError> {
    let consumer: BaseConsumer = config.create()?;
    let (low, high) = match consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT) {
        Ok(watermarks) => watermarks,
        // No such partition (a broker that lost its data, a deleted topic): no record of
        // the message can be in it.
        Err(error) if no_such_partition(&error) => return Ok(Search::Absent { end: 0 }),
        Err(error) => return Err(error),
    };
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
                if record_digest(&message).as_deref() == Some(digest) {
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

/// The message key digest of a document record, from its AS2 headers.
fn record_digest(message: &impl Message) -> Option<String> {
    let headers = message.headers()?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| std::str::from_utf8(header.value?).ok())
    };
    Some(
        MessageKey {
            as2_from: header(crate::record::HEADER_AS2_FROM)?,
            as2_to: header(crate::record::HEADER_AS2_TO)?,
            message_id: header(crate::record::HEADER_MESSAGE_ID)?,
        }
        .digest(),
    )
}

/// Where the inbound path publishes documents: Kafka through [`DocumentPublisher`], or a
/// stand-in in tests.
pub trait DocumentSink: Send + Sync {
    /// Publishes one record and resolves once it is stored (acknowledged).
    fn publish<'a>(
        &'a self,
        record: OutgoingRecord<'a>,
    ) -> BoxFuture<'a, Result<StoredRecord, PublishError>>;

    /// Where a record of `topic` with `key` goes.
    fn place<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Placement, PublishError>>;

    /// Searches `partition` of `topic` from `from` to its end for the record of `message`.
    fn find<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        from: i64,
        message: &'a MessageKey<'a>,
    ) -> BoxFuture<'a, Result<Search, PublishError>>;
}

impl DocumentSink for DocumentPublisher {
    fn publish<'a>(
        &'a self,
        record: OutgoingRecord<'a>,
    ) -> BoxFuture<'a, Result<StoredRecord, PublishError>> {
        Box::pin(DocumentPublisher::publish(self, record))
    }

    fn place<'a>(
        &'a self,
        topic: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Placement, PublishError>> {
        Box::pin(DocumentPublisher::place(self, topic, key))
    }

    fn find<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
        from: i64,
        message: &'a MessageKey<'a>,
    ) -> BoxFuture<'a, Result<Search, PublishError>> {
        Box::pin(DocumentPublisher::find(
            self, topic, partition, from, message,
        ))
    }
}
