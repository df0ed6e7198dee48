//! Consuming the outbound topic: records are worked on concurrently (up to a limit),
//! and a partition's offset is committed only up to the first record whose outcome is
//! not recorded yet, so a crash or a rebalance hands every unfinished record to the
//! next consumer (at least once, under the same Message-ID).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::SenderKafkaConfig;
use crate::message::{OutboundDocument, RecordSource};
use crate::outbound::OutboundSender;

/// Creates the consumer of the outbound topic (manual commits, earliest on a new group).
pub fn create_consumer(
    config: &SenderKafkaConfig,
) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let group = config.consumer_group();
    let client = config.client.client_config(
        config.bootstrap_servers(),
        "as2-sender",
        &[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ],
    );
    let consumer: StreamConsumer = client.create()?;
    consumer.subscribe(&[config.outbound_topic().as_str()])?;
    Ok(consumer)
}

/// Which offsets of each partition are done, and what may be committed.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionProgress>,
}

#[derive(Debug, Default)]
struct PartitionProgress {
    pending: BTreeSet<i64>,
    highest_done: Option<i64>,
    committed: i64,
}

impl OffsetTracker {
    /// A record is being worked on.
    pub fn started(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_owned(), partition))
            .or_default()
            .pending
            .insert(offset);
    }

    /// A record's outcome is recorded; returns the offset to commit (the next one to
    /// read) when it moved forward.
    pub fn finished(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let progress = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        progress.pending.remove(&offset);
        progress.highest_done = progress.highest_done.max(Some(offset));
        let next = match progress.pending.first() {
            Some(&first_pending) => first_pending,
            None => progress.highest_done? + 1,
        };
        (next > progress.committed).then(|| {
            progress.committed = next;
            next
        })
    }

    /// Every partition's committable position.
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.partitions
            .iter()
            .filter(|(_, progress)| progress.committed > 0)
            .map(|((topic, partition), progress)| (topic.clone(), *partition, progress.committed))
            .collect()
    }
}

/// Reads records until `stop` fires, sends each through `sender`, commits offsets of
/// recorded outcomes. On stop: takes no new record, gives records in progress
/// `grace_period` (waits between retries end at once), commits what is done.
pub async fn run_consumer(
    consumer: StreamConsumer,
    sender: Arc<OutboundSender>,
    max_in_flight: usize,
    stop: CancellationToken,
    grace_period: Duration,
) {
    let consumer = Arc::new(consumer);
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let received = tokio::select! {
            () = stop.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "reading the outbound topic failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (source, document) = document_of(&message);
        lock(&tracker).started(&source.topic, source.partition, source.offset);
        let (sender, consumer, tracker, stop) = (
            sender.clone(),
            consumer.clone(),
            tracker.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            sender.metrics.in_flight.inc();
            let done = match document {
                Ok(document) => sender.process(&document, &stop).await.is_ok(),
                Err(error) => {
                    tracing::warn!(topic = source.topic, partition = source.partition, offset = source.offset, %error, "skipping an outbound record that cannot be sent");
                    sender.metrics.record("invalid");
                    true
                }
            };
            sender.metrics.in_flight.dec();
            if !done {
                return;
            }
            let next = lock(&tracker).finished(&source.topic, source.partition, source.offset);
            if let Some(next) = next {
                commit(&consumer, &[(source.topic, source.partition, next)], CommitMode::Async);
            }
        });
    }
    if tokio::time::timeout(grace_period, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "records in progress outlived the grace period, they are sent again after a restart"
        );
        tasks.abort_all();
    }
    let positions = lock(&tracker).positions();
    commit(&consumer, &positions, CommitMode::Sync);
    // Dropping a consumer that still holds fetched records can hang in librdkafka's
    // destructor (rust-rdkafka issue 509); leaving the group first releases them.
    consumer.unsubscribe();
}

/// Where a record is, and the document it carries.
pub(crate) fn document_of<M: rdkafka::message::Message>(
    message: &M,
) -> (
    RecordSource,
    Result<OutboundDocument, crate::message::RecordError>,
) {
    let source = RecordSource {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.unwrap_or_default().to_vec(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let document = OutboundDocument::from_record(
        source.clone(),
        &headers,
        message.payload().unwrap_or_default(),
    );
    (source, document)
}

fn lock(tracker: &Mutex<OffsetTracker>) -> std::sync::MutexGuard<'_, OffsetTracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn commit(consumer: &StreamConsumer, positions: &[(String, i32, i64)], mode: CommitMode) {
    if positions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition, next) in positions {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(%error, "cannot prepare an offset commit");
            return;
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::warn!(%error, "offset commit failed, records may be read again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_unfinished_record() {
        let mut tracker = OffsetTracker::default();
        for offset in 0..4 {
            tracker.started("t", 0, offset);
        }
        assert_eq!(tracker.finished("t", 0, 2), None);
        assert_eq!(tracker.finished("t", 0, 1), None);
        assert_eq!(tracker.finished("t", 0, 0), Some(3));
        assert_eq!(tracker.finished("t", 0, 3), Some(4));
        assert_eq!(tracker.positions(), vec![("t".to_owned(), 0, 4)]);
        tracker.started("t", 1, 7);
        assert_eq!(tracker.finished("t", 1, 7), Some(8));
    }
}
