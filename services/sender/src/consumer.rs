//! Consuming the outbound topic: records are worked on concurrently (up to a limit),
//! and a partition's offset is committed only up to the first record whose outcome is
//! not recorded yet, so a crash or a rebalance hands every unfinished record to the
//! next consumer (at least once, under the same Message-ID).

use std::collections::{BTreeSet, HashMap, VecDeque};
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

/// How many records the consumer works on at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// Records of all partnerships.
    pub max_in_flight: usize,
    /// Records of one partnership: a partner that is down, whose records wait between
    /// retries, holds no more than this many of `max_in_flight`.
    pub per_partnership: usize,
}

impl Concurrency {
    /// `per_partnership` 0 means a quarter of `max_in_flight` (at least 1).
    pub fn new(max_in_flight: usize, per_partnership: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        let per_partnership = match per_partnership {
            0 => (max_in_flight / 4).max(1),
            n => n.min(max_in_flight),
        };
        Self {
            max_in_flight,
            per_partnership,
        }
    }
}

/// A record read while its partnership had all its slots taken.
struct Parked {
    source: RecordSource,
    document: OutboundDocument,
}

/// Records waiting for their partnership, and which partitions are paused for them.
#[derive(Default)]
struct Waiting {
    /// Records being worked on, per partnership.
    active: HashMap<String, usize>,
    /// Parked records, per partnership, in the order read.
    parked: HashMap<String, VecDeque<Parked>>,
    /// Parked records per paused partition.
    paused: HashMap<(String, i32), usize>,
}

impl Waiting {
    fn has_room(&self, partnership: &str, limit: usize) -> bool {
        self.active.get(partnership).copied().unwrap_or_default() < limit
    }

    /// A parked record whose partnership has room now, with the partition to resume
    /// when it was the last one parked from there.
    fn next_ready(&mut self, limit: usize) -> Option<(Parked, Option<(String, i32)>)> {
        let partnership = self
            .parked
            .iter()
            .find(|(partnership, queue)| !queue.is_empty() && self.has_room(partnership, limit))
            .map(|(partnership, _)| partnership.clone())?;
        let queue = self.parked.get_mut(&partnership)?;
        let parked = queue.pop_front()?;
        if queue.is_empty() {
            self.parked.remove(&partnership);
        }
        let key = (parked.source.topic.clone(), parked.source.partition);
        let resume = match self.paused.get_mut(&key) {
            Some(count) if *count > 1 => {
                *count -= 1;
                None
            }
            Some(_) => {
                self.paused.remove(&key);
                Some(key)
            }
            None => None,
        };
        Some((parked, resume))
    }

    fn park(&mut self, parked: Parked) -> Option<(String, i32)> {
        let key = (parked.source.topic.clone(), parked.source.partition);
        self.parked
            .entry(parked.document.partnership_id.clone())
            .or_default()
            .push_back(parked);
        let count = self.paused.entry(key.clone()).or_default();
        *count += 1;
        (*count == 1).then_some(key)
    }

    fn finished(&mut self, partnership: &str) {
        if let Some(count) = self.active.get_mut(partnership) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.active.remove(partnership);
            }
        }
    }
}

/// Reads records until `stop` fires, sends each through `sender`, commits offsets of
/// recorded outcomes. On stop: takes no new record, gives records in progress
/// `grace_period` (waits between retries end at once), commits what is done.
///
/// A record whose partnership already has `per_partnership` records in progress is
/// parked and its partition paused (other partitions go on being read); it starts when
/// one of its partnership's records ends, and the partition resumes.
pub async fn run_consumer(
    consumer: StreamConsumer,
    sender: Arc<OutboundSender>,
    concurrency: Concurrency,
    stop: CancellationToken,
    grace_period: Duration,
) {
    let consumer = Arc::new(consumer);
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let permits = Arc::new(Semaphore::new(concurrency.max_in_flight));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let mut waiting = Waiting::default();
    let mut tasks = JoinSet::new();
    let start = |tasks: &mut JoinSet<()>,
                 waiting: &mut Waiting,
                 permit: tokio::sync::OwnedSemaphorePermit,
                 source: RecordSource,
                 document: Result<OutboundDocument, crate::message::RecordError>| {
        let partnership = document
            .as_ref()
            .ok()
            .map(|document| document.partnership_id.clone());
        if let Some(partnership) = &partnership {
            *waiting.active.entry(partnership.clone()).or_default() += 1;
        }
        let (sender, consumer, tracker, stop, done) = (
            sender.clone(),
            consumer.clone(),
            tracker.clone(),
            stop.clone(),
            done_tx.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            sender.metrics.in_flight.inc();
            let finished = match document {
                Ok(document) => sender.process(&document, &stop).await.is_ok(),
                Err(error) => {
                    tracing::warn!(topic = source.topic, partition = source.partition, offset = source.offset, %error, "skipping an outbound record that cannot be sent");
                    sender.metrics.record("invalid");
                    true
                }
            };
            sender.metrics.in_flight.dec();
            let _ = done.send(partnership);
            if !finished {
                return;
            }
            let next = lock(&tracker).finished(&source.topic, source.partition, source.offset);
            if let Some(next) = next {
                commit(&consumer, &[(source.topic, source.partition, next)], CommitMode::Async);
            }
        });
    };
    'reading: loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            Some(partnership) = done_rx.recv() => {
                if let Some(partnership) = partnership {
                    waiting.finished(&partnership);
                }
                continue;
            }
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        // A permit in hand: a parked record whose partnership has room goes first.
        let received = loop {
            if let Some((parked, resume)) = waiting.next_ready(concurrency.per_partnership) {
                if let Some((topic, partition)) = resume {
                    pause_or_resume(&consumer, &topic, partition, false);
                }
                start(
                    &mut tasks,
                    &mut waiting,
                    permit,
                    parked.source,
                    Ok(parked.document),
                );
                continue 'reading;
            }
            tokio::select! {
                () = stop.cancelled() => break 'reading,
                Some(partnership) = done_rx.recv() => {
                    if let Some(partnership) = partnership {
                        waiting.finished(&partnership);
                    }
                }
                received = consumer.recv() => break received,
            }
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
        drop(message);
        lock(&tracker).started(&source.topic, source.partition, source.offset);
        match document {
            Ok(document)
                if !waiting.has_room(&document.partnership_id, concurrency.per_partnership) =>
            {
                tracing::debug!(
                    partnership = document.partnership_id,
                    partition = source.partition,
                    offset = source.offset,
                    "the partnership has all its slots taken, parking the record"
                );
                sender.metrics.parked.inc();
                if let Some((topic, partition)) = waiting.park(Parked { source, document }) {
                    pause_or_resume(&consumer, &topic, partition, true);
                }
                // The permit goes back: another partnership may use it.
                drop(permit);
            }
            document => start(&mut tasks, &mut waiting, permit, source, document),
        }
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

/// Pauses (`true`) or resumes one partition; a partition this consumer no longer has
/// is left alone.
fn pause_or_resume(consumer: &StreamConsumer, topic: &str, partition: i32, pause: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(error) = result {
        tracing::debug!(topic, partition, pause, %error, "cannot pause or resume a partition");
    }
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

    fn parked(partnership: &str, partition: i32, offset: i64) -> Parked {
        let source = RecordSource {
            topic: "t".to_owned(),
            partition,
            offset,
        };
        let headers = [(
            "as2-partnership-id".to_owned(),
            partnership.as_bytes().to_vec(),
        )];
        Parked {
            document: OutboundDocument::from_record(source.clone(), &headers, b"x").unwrap(),
            source,
        }
    }

    #[test]
    fn parked_records_start_in_order_when_their_partnership_has_room() {
        let mut waiting = Waiting::default();
        waiting.active.insert("down".to_owned(), 1);
        assert!(!waiting.has_room("down", 1));
        assert!(waiting.has_room("up", 1));
        assert_eq!(
            waiting.park(parked("down", 0, 5)),
            Some(("t".to_owned(), 0))
        );
        assert_eq!(waiting.park(parked("down", 0, 6)), None, "paused once");
        assert!(waiting.next_ready(1).is_none(), "no room yet");
        waiting.finished("down");
        let (first, resume) = waiting.next_ready(1).unwrap();
        assert_eq!((first.source.offset, resume), (5, None));
        let (second, resume) = waiting.next_ready(1).unwrap();
        assert_eq!(second.source.offset, 6);
        assert_eq!(resume, Some(("t".to_owned(), 0)), "the last one resumes");
        assert!(waiting.next_ready(1).is_none());
    }

    #[test]
    fn a_partnership_gets_a_quarter_of_the_slots_unless_configured() {
        assert_eq!(Concurrency::new(16, 0).per_partnership, 4);
        assert_eq!(Concurrency::new(2, 0).per_partnership, 1);
        assert_eq!(Concurrency::new(8, 20).per_partnership, 8);
        assert_eq!(Concurrency::new(0, 0).max_in_flight, 1);
    }

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
