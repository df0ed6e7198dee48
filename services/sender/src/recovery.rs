//! After Redis lost the sender's state: every document taken from the outbound topic
//! gets a receipt, an `unknown` one when nothing tells what became of it.
//!
//! The sender commits a record's offset once its outcome is in Redis: `delivered` or
//! `failed` in the receipt outbox, or `awaiting-mdn` in the deadline index. Should Redis
//! then lose those (a restart without persistence, a failover to a replica that lagged,
//! a flush), the record would never be read again and its receipt never written:
//! silence. Two things make that loss visible:
//!
//! - A replica that is working on a message keeps its record in memory and writes it
//!   again when a Redis call finds it missing (`OutboundSender::process`): those
//!   messages keep their real outcome.
//! - Redis holds an **epoch** (`{prefix}:{sender}:epoch`, [`MessageStore::epoch`]),
//!   created with a fresh id whenever it is missing. Every sweep looks at it; an epoch
//!   that is not marked recovered starts a recovery (one replica at a time, under a
//!   lock in Redis).
//!
//! The recovery reads, for each partition of the outbound topic, the records from the
//! start of the window (the async MDN timeout plus an hour, by record timestamp) up to
//! the consumer group's committed offset, the records whose outcome had been recorded.
//! It reads the receipts topic over the same window. A record that has neither a
//! record in Redis nor a receipt gets a record in state `unknown` (so a late MDN or a
//! second recovery leaves it alone) and an `unknown` receipt, through the outbox like
//! any other. Records after the committed offset need nothing: the consumer reads them
//! again, and sends them (again, under the same Message-ID) as it would after a crash.
//!
//! A new deployment's first epoch runs the same recovery; it finds nothing to do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::SenderKafkaConfig;
use crate::consumer::document_of;
use crate::outbound::{OutboundSender, now_ms};
use crate::store::{MessageRecord, MessageState, StoreError};

/// How long a Kafka metadata or offset request may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the recovery lock is held (a recovery that takes longer is taken over).
const LOCK_TTL: Duration = Duration::from_secs(15 * 60);

/// Why a recovery did not finish; the next sweep tries again.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The blocking Kafka reads did not finish.
    #[error("the kafka scan task failed: {0}")]
    Task(String),
}

/// A record whose outcome had been recorded (its offset is committed).
#[derive(Clone, Debug)]
struct Committed {
    record: MessageRecord,
}

/// What the Kafka side of a recovery found.
#[derive(Debug, Default)]
struct Scan {
    /// Records before the committed offsets, in the window.
    committed: Vec<Committed>,
    /// Message-IDs that have a receipt in the window.
    receipts: HashSet<String>,
}

/// Watches the epoch of the sender's state and recovers after Redis lost it.
pub struct StateRecovery {
    kafka: SenderKafkaConfig,
    window: Duration,
    holder: String,
}

impl StateRecovery {
    /// A recovery over `kafka`'s topics looking back `async_mdn_timeout` plus an hour.
    pub fn new(kafka: SenderKafkaConfig, async_mdn_timeout: Duration) -> Self {
        Self {
            kafka,
            window: async_mdn_timeout + Duration::from_secs(3600),
            holder: random_id(),
        }
    }

    /// One look at the epoch: when it is not recovered and no other replica is at it,
    /// runs the recovery. Returns the number of `unknown` receipts it wrote, if it ran.
    pub async fn check(&self, sender: &OutboundSender) -> Result<Option<usize>, RecoveryError> {
        let epoch = sender.store.epoch(&random_id()).await?;
        if epoch.recovered {
            return Ok(None);
        }
        let ttl = u64::try_from(LOCK_TTL.as_millis()).unwrap_or(u64::MAX);
        if !sender.store.lock_recovery(&self.holder, ttl).await? {
            return Ok(None);
        }
        tracing::warn!(
            epoch = epoch.id,
            "the sender's state in redis is new: looking for documents whose receipt it lost"
        );
        let result = self.recover(sender).await;
        if let Err(error) = sender.store.unlock_recovery(&self.holder).await {
            tracing::warn!(%error, "cannot release the recovery lock, it expires");
        }
        match result {
            Ok(unknown) => {
                sender.store.mark_recovered(&epoch.id).await?;
                sender.metrics.recovery("done");
                tracing::info!(epoch = epoch.id, unknown, "recovery done");
                Ok(Some(unknown))
            }
            Err(error) => {
                sender.metrics.recovery("failed");
                Err(error)
            }
        }
    }

    async fn recover(&self, sender: &OutboundSender) -> Result<usize, RecoveryError> {
        let since_ms =
            now_ms().saturating_sub(i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX));
        let (kafka, domain) = (
            self.kafka.clone(),
            sender.settings.message_id_domain.clone(),
        );
        let scan = tokio::task::spawn_blocking(move || scan(&kafka, since_ms, &domain))
            .await
            .map_err(|error| RecoveryError::Task(error.to_string()))??;
        let mut partners: HashMap<String, Option<(String, String)>> = HashMap::new();
        let mut unknown = 0;
        for Committed { mut record } in scan.committed {
            if scan.receipts.contains(&record.message_id)
                || sender.store.exists(&record.message_id).await?
            {
                continue;
            }
            if !partners.contains_key(&record.partnership_id) {
                let ids = sender
                    .routing
                    .partnership(&record.partnership_id)
                    .await
                    .ok()
                    .flatten()
                    .map(|partnership| (partnership.as2_to, partnership.as2_from));
                partners.insert(record.partnership_id.clone(), ids);
            }
            if let Some(Some((ours, theirs))) = partners.get(&record.partnership_id) {
                record.as2_from.clone_from(ours);
                record.as2_to.clone_from(theirs);
            }
            record.finished_at_ms = now_ms();
            if sender.store.restore(&record).await?.is_some() {
                // A replica wrote it meanwhile: it has its own outcome.
                continue;
            }
            unknown += 1;
            sender.metrics.state_lost("unknown");
            tracing::warn!(
                message_id = record.message_id,
                partnership = record.partnership_id,
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                "redis lost this document's state: publishing an outcome-unknown receipt"
            );
            sender.publish_receipt(&record.message_id).await;
        }
        Ok(unknown)
    }
}

/// The record of a committed document whose state was lost.
fn unknown_record(
    document: &crate::message::OutboundDocument,
    message_id: String,
    created_at_ms: i64,
) -> MessageRecord {
    MessageRecord {
        message_id,
        partnership_id: document.partnership_id.clone(),
        topic: document.source.topic.clone(),
        partition: document.source.partition,
        offset: document.source.offset,
        filename: document.filename.clone().unwrap_or_default(),
        state: MessageState::Unknown.as_str().to_owned(),
        reason: "Redis lost the sender's state after this document was taken from the \
                 outbound topic: whether the partner received it is not known; ask the \
                 partner before sending it again"
            .to_owned(),
        traceparent: document.traceparent.clone(),
        created_at_ms,
        ..MessageRecord::default()
    }
}

/// Reads the committed records of the window and the receipts. Blocks.
fn scan(config: &SenderKafkaConfig, since_ms: i64, domain: &str) -> Result<Scan, RecoveryError> {
    let group = config.consumer_group();
    let consumer: BaseConsumer = config
        .client
        .client_config(
            config.bootstrap_servers(),
            "as2-sender-recovery",
            &[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "false"),
            ],
        )
        .create()?;
    let outbound = config.outbound_topic();
    let mut result = Scan::default();
    let partitions = partitions(&consumer, &outbound)?;
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(&outbound, partition);
    }
    let committed = consumer.committed_offsets(list, KAFKA_TIMEOUT)?;
    for &partition in &partitions {
        let end = match committed
            .find_partition(&outbound, partition)
            .map(|element| element.offset())
        {
            Some(Offset::Offset(end)) if end > 0 => end,
            _ => continue,
        };
        let start = window_start(&consumer, &outbound, partition, since_ms)?;
        read(&consumer, &outbound, partition, start, end, |message| {
            let (_, document) = document_of(message);
            let Ok(document) = document else { return };
            let Ok(message_id) = document.message_id(domain) else {
                return;
            };
            let taken_at = message.timestamp().to_millis().unwrap_or_else(now_ms);
            let record = unknown_record(&document, message_id.original().to_owned(), taken_at);
            result.committed.push(Committed { record });
        })?;
    }
    let receipts = config.receipts_topic();
    for partition in self::partitions(&consumer, &receipts)? {
        let start = window_start(&consumer, &receipts, partition, since_ms)?;
        let (_, end) = consumer.fetch_watermarks(&receipts, partition, KAFKA_TIMEOUT)?;
        read(&consumer, &receipts, partition, start, end, |message| {
            let id = message.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|header| header.key == "as2-message-id")
                    .and_then(|header| header.value)
                    .and_then(|value| std::str::from_utf8(value).ok())
                    .map(str::to_owned)
            });
            if let Some(id) = id {
                result.receipts.insert(id);
            }
        })?;
    }
    Ok(result)
}

/// The partitions of `topic` (none when it does not exist).
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|found| found.name() == topic && found.error().is_none())
        .flat_map(|found| found.partitions().iter().map(|partition| partition.id()))
        .collect())
}

/// The first offset of `partition` with a timestamp at or after `since_ms`; the low
/// watermark when the broker cannot say.
fn window_start(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    since_ms: i64,
) -> Result<i64, KafkaError> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(since_ms))?;
    let found = consumer
        .offsets_for_times(list, KAFKA_TIMEOUT)
        .ok()
        .and_then(|found| {
            found
                .find_partition(topic, partition)
                .map(|element| element.offset())
        });
    Ok(match found {
        Some(Offset::Offset(offset)) if offset >= low => offset,
        Some(Offset::End) => high,
        _ => low,
    })
}

/// Calls `each` for the records of `partition` in `[start, end)`. Blocks.
fn read(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    if start >= end {
        return Ok(());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&list)?;
    let mut last_progress = std::time::Instant::now();
    let mut next = start;
    while next < end {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if message.offset() >= end {
                    break;
                }
                next = message.offset() + 1;
                last_progress = std::time::Instant::now();
                each(&message);
            }
            Some(Err(error)) => return Err(error),
            None if last_progress.elapsed() > KAFKA_TIMEOUT => {
                // Nothing comes: retention deleted the rest meanwhile, or the broker
                // stalls; the caller's next sweep reads again.
                tracing::warn!(
                    topic,
                    partition,
                    next,
                    end,
                    "no records came, ending the scan of this partition"
                );
                break;
            }
            None => {}
        }
    }
    consumer.unassign()?;
    Ok(())
}

/// 128 random bits, hex.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        bytes = now_ms()
            .to_be_bytes()
            .repeat(2)
            .try_into()
            .unwrap_or_default();
    }
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Runs [`StateRecovery::check`] once, logging what it did.
pub async fn check_and_log(recovery: &StateRecovery, sender: &Arc<OutboundSender>) {
    if let Err(error) = recovery.check(sender).await {
        tracing::warn!(%error, "recovery of the sender's state failed, trying again at the next sweep");
    }
}
