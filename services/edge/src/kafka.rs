//! Publishing received documents to Kafka.
//!
//! One idempotent producer (`enable.idempotence=true`, `acks=all`) per edge process.
//! [`DocumentPublisher::publish`] returns only once the broker has acknowledged the record
//! (or the publish timeout has passed), because the edge must not answer a partner with a
//! "processed" MDN for a document that is not stored.
//!
//! Errors are split into two kinds: [`PublishError::Unavailable`] (the cluster cannot take
//! the record right now: the partner should resend, so the edge answers 503) and
//! [`PublishError::Rejected`] (the cluster will never take this record, such as a record
//! over the size limit or a topic we may not write).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// How the edge reaches Kafka.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers, `host:port`.
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "AS2_KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// How long a publish may take, in milliseconds, before the message is answered
    /// with 503 (librdkafka's `message.timeout.ms`).
    #[arg(
        long = "kafka-publish-timeout-ms",
        env = "AS2_KAFKA_PUBLISH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub kafka_publish_timeout_ms: u64,

    /// Largest record the producer sends, in bytes (librdkafka's `message.max.bytes`).
    /// The brokers' and topics' `max.message.bytes` must be at least as large.
    #[arg(
        long = "kafka-max-record-bytes",
        env = "AS2_KAFKA_MAX_RECORD_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub kafka_max_record_bytes: usize,

    /// Extra librdkafka properties, `key=value`, repeatable (or comma-separated in the
    /// environment variable): TLS and SASL settings such as `security.protocol=SASL_SSL`.
    #[arg(
        long = "kafka-option",
        env = "AS2_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_parser = as2_common::config::parse_key_value
    )]
    pub kafka_options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A configuration for the given brokers with default settings.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            kafka_bootstrap_servers: bootstrap_servers.into(),
            kafka_publish_timeout_ms: 10_000,
            kafka_max_record_bytes: 16 * 1024 * 1024,
            kafka_options: Vec::new(),
        }
    }

    /// The publish timeout as a duration.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_publish_timeout_ms)
    }

    fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_bootstrap_servers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "none")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                self.kafka_publish_timeout_ms.to_string(),
            )
            .set("message.max.bytes", self.kafka_max_record_bytes.to_string())
            .set("client.id", "as2-edge");
        for (key, value) in &self.kafka_options {
            config.set(key, value);
        }
        config
    }
}

/// One Kafka record: the document and its headers.
#[derive(Clone, Debug)]
pub struct OutgoingRecord<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Record key (the partnership id, so one partner's documents stay in order).
    pub key: &'a str,
    /// Record headers, in order.
    pub headers: Vec<(&'static str, String)>,
    /// Record value (the document).
    pub payload: &'a [u8],
}

/// Where an acknowledged record was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Partition of the topic.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// Why a record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The cluster cannot take the record now (brokers down, timeout, queue full, leader
    /// changes). The partner should send the message again later.
    #[error("kafka unavailable: {0}")]
    Unavailable(#[source] KafkaError),
    /// The cluster will not take this record (too large, not authorised, bad topic).
    #[error("kafka rejected the record: {0}")]
    Rejected(#[source] KafkaError),
}

/// The producer that publishes received documents.
///
/// Cheap to clone. A producer whose idempotence state may be broken (fatal error, fenced,
/// sequence or epoch errors, or a record that timed out, after which librdkafka needs an
/// epoch bump that not every broker supports) is replaced by a fresh one, so publishing
/// recovers by itself once the cluster is back.
#[derive(Clone)]
pub struct DocumentPublisher {
    config: Arc<KafkaConfig>,
    current: Arc<RwLock<CurrentProducer>>,
}

#[derive(Clone)]
struct CurrentProducer {
    generation: u64,
    producer: FutureProducer,
}

impl DocumentPublisher {
    /// Creates the producer. Connecting to the brokers happens in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, KafkaError> {
        let producer = config.producer_config().create()?;
        Ok(Self {
            config: Arc::new(config),
            current: Arc::new(RwLock::new(CurrentProducer {
                generation: 0,
                producer,
            })),
        })
    }

    /// Publishes one record and waits for the acknowledgement of all in-sync replicas.
    pub async fn publish(&self, record: OutgoingRecord<'_>) -> Result<StoredRecord, PublishError> {
        let current = self.current_producer();
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        );
        let future_record = FutureRecord::to(record.topic)
            .key(record.key)
            .payload(record.payload)
            .headers(headers);
        let enqueue_timeout = Timeout::After(self.config.publish_timeout());
        match current.producer.send(future_record, enqueue_timeout).await {
            Ok(delivery) => Ok(StoredRecord {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _record)) => {
                let producer_broken = current.producer.client().fatal_error().is_some()
                    || error
                        .rdkafka_error_code()
                        .is_some_and(breaks_producer_state);
                if producer_broken {
                    self.replace_producer(current.generation, &error);
                }
                Err(classify(error))
            }
        }
    }

    /// Waits until everything queued has been delivered (or the timeout passes).
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self
            .current_producer()
            .producer
            .flush(Timeout::After(timeout))
        {
            tracing::warn!(%error, "kafka producer flush did not complete");
        }
    }

    fn current_producer(&self) -> CurrentProducer {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer of `generation`, unless another request already did.
    fn replace_producer(&self, generation: u64, cause: &KafkaError) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.generation != generation {
            return;
        }
        match self.config.producer_config().create() {
            Ok(producer) => {
                tracing::warn!(%cause, generation = generation + 1, "replaced the kafka producer");
                *current = CurrentProducer {
                    generation: generation + 1,
                    producer,
                };
            }
            Err(error) => tracing::error!(%error, "cannot create a new kafka producer"),
        }
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

fn classify(error: KafkaError) -> PublishError {
    match error.rdkafka_error_code() {
        Some(code) if is_permanent(code) => PublishError::Rejected(error),
        _ => PublishError::Unavailable(error),
    }
}

/// Errors after which the idempotent producer's state (producer id, epoch, sequence
/// numbers) cannot be trusted any more.
fn breaks_producer_state(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerIdMapping
            | RDKafkaErrorCode::Fatal
    )
}

/// Errors after which sending the same record again cannot succeed.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_and_authorisation_errors_are_permanent() {
        assert!(is_permanent(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(is_permanent(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!is_permanent(RDKafkaErrorCode::MessageTimedOut));
        assert!(!is_permanent(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(!is_permanent(RDKafkaErrorCode::NotEnoughReplicas));
    }
}
