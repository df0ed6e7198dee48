//! Kafka: the flags every service reads, and the one idempotent producer they publish
//! documents, receipts and status events with.
//!
//! # Flags
//!
//! [`KafkaConfig`] is flattened into each service's configuration, so a setting has one
//! flag and one `AS2_KAFKA_*` variable everywhere. A service that needs a topic of its own
//! declares it next to it with the same prefix (`AS2_KAFKA_TRACKING_TOPIC`,
//! `AS2_KAFKA_OUTBOUND_TOPIC`, ...); names those settings had before keep working
//! ([`legacy`] resolves them).
//!
//! # The producer
//!
//! [`IdempotentProducer`] is librdkafka's idempotent producer (`enable.idempotence=true`,
//! `acks=all`): a record is acknowledged once all in-sync replicas have it, and retries
//! inside librdkafka never duplicate or reorder it. Its one weakness is its own state:
//! after some errors (a fatal error, a fenced or unknown producer id, an out-of-order
//! sequence, or a record that timed out, after which librdkafka needs an epoch bump that
//! not every broker supports) the producer refuses every further record. The producer
//! here then replaces itself with a fresh one (new producer id), once per broken
//! generation, so publishing recovers by itself when the cluster is back.
//!
//! Every error is classified by an explicit list ([`ErrorClass`]): retriable (the cluster
//! cannot take the record now; try again later), permanent (this record will never be
//! taken: too large, not authorised, no such topic) or fatal (the producer's state is
//! broken: replaced, and the record may be tried again). Codes on no list count as
//! retriable and are logged, so a new librdkafka code never makes a document look
//! permanently bad.

pub mod placement;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

/// How a service reaches Kafka; every field is optional so that each service keeps its
/// own default (see the accessors).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Comma-separated bootstrap brokers, `host:port`. Unset: the edge and the sender use
    /// `127.0.0.1:9092`; the MDN service publishes no status events.
    #[arg(long = "kafka-bootstrap-servers", env = "AS2_KAFKA_BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: Option<String>,

    /// How long a publish may take, in milliseconds, before it counts as failed
    /// (librdkafka's `message.timeout.ms`). The edge then answers 503. Unset: 10000 for
    /// the edge's documents, 15000 for the sender's receipts, 30000 for status events.
    #[arg(
        long = "kafka-publish-timeout-ms",
        env = "AS2_KAFKA_PUBLISH_TIMEOUT_MS"
    )]
    pub publish_timeout_ms: Option<u64>,

    /// The longest a broker may hold a produce request it has received before appending
    /// it, in milliseconds. The edge's and the sender's exactly-once bookkeeping counts a
    /// record as possibly landing until the publish timeout, the 1 s from arming to
    /// producing, and this have passed; a broker that appends a request later than that
    /// can duplicate a document. Unset: 10000, longer than KRaft's default broker session
    /// timeout (9 s), past which a paused partition leader is fenced (with a replication
    /// factor of at least 2, `acks=all` and `min.insync.replicas` of at least 2, what it
    /// appends after that is never committed). A single broker has no such bound: set the
    /// longest pause it may have.
    #[arg(long = "kafka-broker-pause-ms", env = "AS2_KAFKA_BROKER_PAUSE_MS")]
    pub broker_pause_ms: Option<u64>,

    /// Largest record a producer sends, in bytes (librdkafka's `message.max.bytes`);
    /// brokers and topics must accept records this large. Unset: 16777216 (16 MiB).
    #[arg(long = "kafka-max-record-bytes", env = "AS2_KAFKA_MAX_RECORD_BYTES")]
    pub max_record_bytes: Option<usize>,

    /// Extra librdkafka properties, `key=value`, repeatable (or comma-separated in the
    /// environment variable): TLS and SASL settings such as `security.protocol=SASL_SSL`.
    /// They apply to every producer and consumer of the service.
    #[arg(
        long = "kafka-option",
        env = "AS2_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_parser = crate::config::parse_key_value
    )]
    pub options: Vec<(String, String)>,
}

/// The brokers used when none are configured (the edge and the sender).
pub const DEFAULT_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";
/// The broker pause covered when none is configured ([`KafkaConfig::broker_pause_ms`]).
pub const DEFAULT_BROKER_PAUSE: Duration = Duration::from_secs(10);
/// The largest record sent when no limit is configured.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

impl KafkaConfig {
    /// A configuration for the given brokers with every other setting at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: Some(bootstrap_servers.into()),
            ..Self::default()
        }
    }

    /// The configured brokers, unless unset or blank.
    pub fn configured_bootstrap_servers(&self) -> Option<&str> {
        self.bootstrap_servers
            .as_deref()
            .map(str::trim)
            .filter(|servers| !servers.is_empty())
    }

    /// The configured brokers, or [`DEFAULT_BOOTSTRAP_SERVERS`].
    pub fn bootstrap_servers_or_default(&self) -> &str {
        self.configured_bootstrap_servers()
            .unwrap_or(DEFAULT_BOOTSTRAP_SERVERS)
    }

    /// The configured publish timeout, or `default`.
    pub fn publish_timeout_or(&self, default: Duration) -> Duration {
        self.publish_timeout_ms
            .map_or(default, Duration::from_millis)
    }

    /// The configured broker pause, or [`DEFAULT_BROKER_PAUSE`].
    pub fn broker_pause(&self) -> Duration {
        self.broker_pause_ms
            .map_or(DEFAULT_BROKER_PAUSE, Duration::from_millis)
    }

    /// The configured record size limit, or [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES)
    }

    /// A librdkafka client configuration for `bootstrap_servers` and `client_id` with the
    /// service's `properties`, and the extra properties applied last (so that an operator
    /// can override anything set here).
    pub fn client_config(
        &self,
        bootstrap_servers: &str,
        client_id: &str,
        properties: &[(&str, &str)],
    ) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap_servers)
            .set("client.id", client_id);
        for (key, value) in properties {
            config.set(*key, *value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }
}

/// Resolving a setting that also answers to a name it had before.
pub mod legacy {
    /// The value under the current name, else under the old one, else `default`.
    pub fn resolve<T: Clone>(current: Option<&T>, old: Option<&T>, default: T) -> T {
        current.or(old).cloned().unwrap_or(default)
    }
}

/// What a producer is for: its client id and its defaults.
#[derive(Clone, Copy, Debug)]
pub struct ProducerSettings {
    /// librdkafka's `client.id`, e.g. `as2-edge`.
    pub client_id: &'static str,
    /// The publish timeout when none is configured.
    pub default_publish_timeout: Duration,
    /// How long records wait to be batched (`linger.ms`).
    pub linger: Duration,
}

/// One record to publish.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Record key (the partnership id, so one partnership's records stay in order).
    pub key: &'a str,
    /// The partition to write to; `None` lets librdkafka's partitioner choose from the key
    /// (`consistent_random`: CRC-32 of the key modulo the partition count, the same as
    /// [`partition_for_key`]).
    pub partition: Option<i32>,
    /// Record headers, in order.
    pub headers: Vec<(&'a str, String)>,
    /// Record value.
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
    /// changes, or the producer had to be replaced). Sending it again later can succeed.
    #[error("kafka unavailable: {0}")]
    Unavailable(#[source] KafkaError),
    /// The cluster will not take this record (too large, not authorised, bad topic).
    #[error("kafka rejected the record: {0}")]
    Rejected(#[source] KafkaError),
}

/// How an error code is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later: the cluster or the network is not there right now.
    Retriable,
    /// This record will never be accepted.
    Permanent,
    /// The producer's idempotence state is broken: replace the producer; the record may
    /// be tried again on the new one.
    Fatal,
}

/// `error` as a [`PublishError`] by its class (fatal counts as unavailable).
fn classified(error: KafkaError) -> PublishError {
    match error
        .rdkafka_error_code()
        .map_or(ErrorClass::Retriable, classify)
    {
        ErrorClass::Permanent => PublishError::Rejected(error),
        ErrorClass::Retriable | ErrorClass::Fatal => PublishError::Unavailable(error),
    }
}

/// The class of `code`; codes on no list are retriable (see the module docs).
pub fn classify(code: RDKafkaErrorCode) -> ErrorClass {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageTimedOut
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::UnknownProducerId
        | C::OutOfOrderSequenceNumber
        | C::InvalidProducerIdMapping
        | C::Fatal => ErrorClass::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidRecord
        | C::InvalidTopic
        | C::UnknownTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::UnsupportedCompressionType
        | C::UnsupportedForMessageFormat
        | C::InvalidRequiredAcks
        | C::PolicyViolation => ErrorClass::Permanent,
        C::QueueFull
        | C::BrokerTransportFailure
        | C::AllBrokersDown
        | C::Resolve
        | C::NetworkException
        | C::RequestTimedOut
        | C::OperationTimedOut
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::NotLeaderForPartition
        | C::LeaderNotAvailable
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::NotController
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::CoordinatorLoadInProgress
        | C::KafkaStorageError
        | C::FencedLeaderEpoch
        | C::UnknownLeaderEpoch
        | C::OffsetNotAvailable
        | C::PreferredLeaderNotAvailable
        | C::ThrottlingQuotaExceeded
        | C::UnknownTopicOrPartition
        | C::UnknownPartition
        | C::WaitCache
        | C::InProgress
        | C::PreviousInProgress
        | C::Retry => ErrorClass::Retriable,
        other => {
            tracing::warn!(code = ?other, "kafka error code on no list, treated as retriable");
            ErrorClass::Retriable
        }
    }
}

/// The idempotent producer; cheap to clone, all clones share one librdkafka producer.
/// See the module docs for how it recovers.
#[derive(Clone)]
pub struct IdempotentProducer {
    inner: Arc<Inner>,
}

struct Inner {
    client: ClientConfig,
    client_id: &'static str,
    publish_timeout: Duration,
    broker_pause: Duration,
    current: RwLock<Generation>,
}

#[derive(Clone)]
struct Generation {
    number: u64,
    producer: FutureProducer,
}

impl IdempotentProducer {
    /// Creates the producer for `bootstrap_servers`; connecting happens in the background.
    pub fn new(
        config: &KafkaConfig,
        bootstrap_servers: &str,
        settings: ProducerSettings,
    ) -> Result<Self, KafkaError> {
        let publish_timeout = config.publish_timeout_or(settings.default_publish_timeout);
        let linger = settings.linger.as_millis().to_string();
        let message_timeout = publish_timeout.as_millis().to_string();
        let max_bytes = config.max_record_bytes().to_string();
        let client = config.client_config(
            bootstrap_servers,
            settings.client_id,
            &[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", &linger),
                ("message.timeout.ms", &message_timeout),
                ("message.max.bytes", &max_bytes),
            ],
        );
        let producer = client.create()?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                client_id: settings.client_id,
                publish_timeout,
                broker_pause: config.broker_pause(),
                current: RwLock::new(Generation {
                    number: 0,
                    producer,
                }),
            }),
        })
    }

    /// The publish timeout in force.
    pub fn publish_timeout(&self) -> Duration {
        self.inner.publish_timeout
    }

    /// How long after an attempt was armed its record may still land
    /// ([`placement::publish_window`] of this producer's timeout and broker pause).
    pub fn publish_window(&self) -> Duration {
        placement::publish_window(self.inner.publish_timeout, self.inner.broker_pause)
    }

    /// How many times the producer has been replaced.
    pub fn generation(&self) -> u64 {
        self.current().number
    }

    /// Publishes `record` and waits for the acknowledgement of all in-sync replicas (or
    /// the publish timeout). While librdkafka's queue is full it waits for room, within
    /// the same timeout.
    pub async fn send(&self, record: Record<'_>) -> Result<StoredRecord, PublishError> {
        let current = self.current();
        let headers = owned_headers(&record.headers);
        let future_record = future_record(&record, headers);
        let queue_timeout = Timeout::After(self.inner.publish_timeout);
        match current.producer.send(future_record, queue_timeout).await {
            Ok(delivery) => Ok(StoredRecord {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _record)) => Err(self.failed(&current, error)),
        }
    }

    /// Queues `record` at once (failing when librdkafka's queue is full) and returns the
    /// acknowledgement to await, which can be spawned: for records whose order of
    /// queueing matters more than waiting for each.
    pub fn enqueue(
        &self,
        record: Record<'_>,
    ) -> Result<
        impl Future<Output = Result<StoredRecord, PublishError>> + Send + 'static,
        PublishError,
    > {
        let current = self.current();
        let headers = owned_headers(&record.headers);
        let future_record = future_record(&record, headers);
        let acknowledgement = match current.producer.send_result(future_record) {
            Ok(acknowledgement) => acknowledgement,
            Err((error, _record)) => return Err(self.failed(&current, error)),
        };
        let this = self.clone();
        Ok(async move {
            match acknowledgement.await {
                Ok(Ok(delivery)) => Ok(StoredRecord {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }),
                Ok(Err((error, _message))) => Err(this.failed(&current, error)),
                Err(_cancelled) => Err(PublishError::Unavailable(KafkaError::Canceled)),
            }
        })
    }

    /// Waits until everything queued has been delivered (or the timeout passes). Blocks:
    /// call it from a blocking thread.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.current().producer.flush(Timeout::After(timeout)) {
            tracing::warn!(client_id = self.inner.client_id, %error, "kafka producer flush did not complete");
        }
    }

    /// How many partitions `topic` has, from the cluster's metadata. Blocks: call it from
    /// a blocking thread.
    pub fn partition_count(&self, topic: &str, timeout: Duration) -> Result<i32, PublishError> {
        let current = self.current();
        let metadata = current
            .producer
            .client()
            .fetch_metadata(Some(topic), Timeout::After(timeout))
            .map_err(classified)?;
        let Some(found) = metadata.topics().iter().find(|found| found.name() == topic) else {
            return Err(PublishError::Unavailable(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            )));
        };
        if let Some(error) = found.error() {
            return Err(classified(KafkaError::MetadataFetch(error.into())));
        }
        match i32::try_from(found.partitions().len()) {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(PublishError::Unavailable(KafkaError::MetadataFetch(
                RDKafkaErrorCode::LeaderNotAvailable,
            ))),
        }
    }

    /// The low and high watermarks (first offset, offset of the next record) of one
    /// partition. Blocks: call it from a blocking thread.
    pub fn watermarks(
        &self,
        topic: &str,
        partition: i32,
        timeout: Duration,
    ) -> Result<(i64, i64), PublishError> {
        self.current()
            .producer
            .client()
            .fetch_watermarks(topic, partition, Timeout::After(timeout))
            .map_err(classified)
    }

    fn current(&self) -> Generation {
        self.inner
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Classifies `error` of a record sent on `generation`, replacing that producer when
    /// its state is broken.
    fn failed(&self, generation: &Generation, error: KafkaError) -> PublishError {
        let class = error
            .rdkafka_error_code()
            .map_or(ErrorClass::Retriable, classify);
        let broken =
            class == ErrorClass::Fatal || generation.producer.client().fatal_error().is_some();
        if broken {
            self.replace(generation.number, &error);
        }
        classified(error)
    }

    /// Replaces the producer of generation `number`, unless another record already did.
    fn replace(&self, number: u64, cause: &KafkaError) {
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.number != number {
            return;
        }
        match self.inner.client.create() {
            Ok(producer) => {
                tracing::warn!(
                    client_id = self.inner.client_id,
                    %cause,
                    generation = number + 1,
                    "replaced the kafka producer"
                );
                *current = Generation {
                    number: number + 1,
                    producer,
                };
            }
            Err(error) => tracing::error!(
                client_id = self.inner.client_id,
                %error,
                "cannot create a new kafka producer"
            ),
        }
    }
}

fn future_record<'a>(record: &Record<'a>, headers: OwnedHeaders) -> FutureRecord<'a, str, [u8]> {
    let future_record = FutureRecord::to(record.topic)
        .key(record.key)
        .payload(record.payload)
        .headers(headers);
    match record.partition {
        Some(partition) => future_record.partition(partition),
        None => future_record,
    }
}

/// The partition librdkafka's default partitioner (`consistent_random`) picks for a
/// record with `key` in a topic of `partitions` partitions: the CRC-32 of the key modulo
/// the partition count. Choosing it explicitly keeps a partnership's records where they
/// went before.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    let count = u32::try_from(partitions).unwrap_or(1).max(1);
    i32::try_from(crc32fast::hash(key) % count).unwrap_or(0)
}

fn owned_headers(headers: &[(&str, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |owned, (key, value)| {
            owned.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_explicit_lists() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::UnknownTopic,
        ] {
            assert_eq!(classify(code), ErrorClass::Permanent, "{code:?}");
        }
        for code in [
            C::MessageTimedOut,
            C::ProducerFenced,
            C::OutOfOrderSequenceNumber,
            C::Fatal,
        ] {
            assert_eq!(classify(code), ErrorClass::Fatal, "{code:?}");
        }
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotEnoughReplicas,
            C::QueueFull,
            C::RequestTimedOut,
        ] {
            assert_eq!(classify(code), ErrorClass::Retriable, "{code:?}");
        }
        // Not on any list: retriable, so a document is never called permanently bad by
        // a code this version does not know.
        assert_eq!(classify(C::SaslAuthenticationFailed), ErrorClass::Retriable);
    }

    #[test]
    fn unset_settings_take_each_service_s_default() {
        let config = KafkaConfig::default();
        assert_eq!(config.configured_bootstrap_servers(), None);
        assert_eq!(config.bootstrap_servers_or_default(), "127.0.0.1:9092");
        assert_eq!(
            config.publish_timeout_or(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(config.max_record_bytes(), 16 * 1024 * 1024);
        let config = KafkaConfig {
            bootstrap_servers: Some("  ".to_owned()),
            publish_timeout_ms: Some(500),
            ..KafkaConfig::default()
        };
        assert_eq!(config.configured_bootstrap_servers(), None);
        assert_eq!(
            config.publish_timeout_or(Duration::from_secs(30)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn the_current_name_wins_over_the_old_one() {
        let current = "as2.new".to_owned();
        let old = "as2.old".to_owned();
        assert_eq!(
            legacy::resolve(Some(&current), Some(&old), String::new()),
            "as2.new"
        );
        assert_eq!(legacy::resolve(None, Some(&old), String::new()), "as2.old");
        assert_eq!(
            legacy::resolve(None::<&String>, None, "as2.default".to_owned()),
            "as2.default"
        );
    }
}
