//! Publishing received documents to Kafka.
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

use std::time::Duration;

use as2_common::kafka::{IdempotentProducer, ProducerSettings, Record};
pub use as2_common::kafka::{KafkaConfig, PublishError, StoredRecord};
use futures::future::BoxFuture;
use rdkafka::error::KafkaError;

/// The publish timeout of documents unless configured: a partner waits for the answer.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// One Kafka record: the document (value), the partnership id (key, so one partner's
/// documents stay in order) and the headers of docs/kafka-records.md.
pub type OutgoingRecord<'a> = Record<'a>;

/// The producer that publishes received documents. Cheap to clone.
#[derive(Clone)]
pub struct DocumentPublisher {
    producer: IdempotentProducer,
}

impl DocumentPublisher {
    /// Creates the producer (brokers `127.0.0.1:9092` unless configured). Connecting to
    /// the brokers happens in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        let producer = IdempotentProducer::new(
            &config,
            config.bootstrap_servers_or_default(),
            ProducerSettings {
                client_id: "as2-edge",
                default_publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
                linger: Duration::from_millis(2),
            },
        )?;
        Ok(Self { producer })
    }

    /// Publishes one record and waits for the acknowledgement of all in-sync replicas.
    pub async fn publish(&self, record: OutgoingRecord<'_>) -> Result<StoredRecord, PublishError> {
        self.producer.send(record).await
    }

    /// How many times the producer has been replaced after its state broke.
    pub fn generation(&self) -> u64 {
        self.producer.generation()
    }

    /// Waits until everything queued has been delivered (or the timeout passes). Blocks.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}

/// Where the inbound path publishes documents: Kafka through [`DocumentPublisher`], or a
/// stand-in in tests.
pub trait DocumentSink: Send + Sync {
    /// Publishes one record and resolves once it is stored (acknowledged).
    fn publish<'a>(
        &'a self,
        record: OutgoingRecord<'a>,
    ) -> BoxFuture<'a, Result<StoredRecord, PublishError>>;
}

impl DocumentSink for DocumentPublisher {
    fn publish<'a>(
        &'a self,
        record: OutgoingRecord<'a>,
    ) -> BoxFuture<'a, Result<StoredRecord, PublishError>> {
        Box::pin(DocumentPublisher::publish(self, record))
    }
}
