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
//! librdkafka's partitioner would pick) together with an offset at or below the one the
//! record will get, so that the claim can say where the record of an attempt would be
//! (see [`crate::dedup`]); [`DocumentSink::find`] reads a partition from an offset to its
//! current end, looking for a message's record by its AS2 headers. Both are the shared
//! [`as2_common::kafka::placement`]: the offset is the partition's high watermark as
//! last seen, raised by every acknowledgement and read again when older than
//! [`WATERMARK_MAX_AGE`].

use std::time::Duration;

pub use as2_common::kafka::placement::{Placement, Search, WATERMARK_MAX_AGE};
use as2_common::kafka::placement::{PlacingProducer, header_value};
use as2_common::kafka::{IdempotentProducer, ProducerSettings, Record};
pub use as2_common::kafka::{KafkaConfig, PublishError, StoredRecord};
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;

use crate::dedup::MessageKey;

/// The publish timeout of documents unless configured: a partner waits for the answer.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// One Kafka record: the document (value), the partnership id (key, so one partner's
/// documents stay in order) and the headers of docs/kafka-records.md.
pub type OutgoingRecord<'a> = Record<'a>;

/// The producer that publishes received documents. Cheap to clone.
#[derive(Clone)]
pub struct DocumentPublisher {
    producer: PlacingProducer,
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
            &[("group.id", "as2-edge-search")],
        );
        Ok(Self {
            producer: PlacingProducer::new(producer, consumer_config),
        })
    }

    /// Publishes one record and waits for the acknowledgement of all in-sync replicas.
    pub async fn publish(&self, record: OutgoingRecord<'_>) -> Result<StoredRecord, PublishError> {
        self.producer.publish(record).await
    }

    /// The publish timeout in force (librdkafka's `message.timeout.ms`).
    pub fn publish_timeout(&self) -> Duration {
        self.producer.producer().publish_timeout()
    }

    /// How long after arming a record can still land
    /// ([`as2_common::kafka::placement::publish_window`]).
    pub fn publish_window(&self) -> Duration {
        self.producer.producer().publish_window()
    }

    /// How many times the producer has been replaced after its state broke.
    pub fn generation(&self) -> u64 {
        self.producer.producer().generation()
    }

    /// Waits until everything queued has been delivered (or the timeout passes). Blocks.
    pub fn flush(&self, timeout: Duration) {
        self.producer.producer().flush(timeout);
    }

    /// Where a record of `topic` with `key` goes (see the module docs).
    pub async fn place(&self, topic: &str, key: &str) -> Result<Placement, PublishError> {
        self.producer.place(topic, key).await
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
        let digest = message.digest();
        let matches = Box::new(move |record: &rdkafka::message::BorrowedMessage<'_>| {
            record_digest(record).as_deref() == Some(digest.as_str())
        });
        self.producer.find(topic, partition, from, matches).await
    }
}

/// The message key digest of a document record, from its AS2 headers.
fn record_digest(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<String> {
    Some(
        MessageKey {
            as2_from: header_value(message, crate::record::HEADER_AS2_FROM)?,
            as2_to: header_value(message, crate::record::HEADER_AS2_TO)?,
            message_id: header_value(message, crate::record::HEADER_MESSAGE_ID)?,
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
