//! The in-process backend of [`DeliveryStore`](super::DeliveryStore) (the Redis URL
//! `memory://`): the Redis structures kept under one lock, with the same semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use as2_rpc::mdn::v1::DeliveryState;
use tokio::sync::Notify;

use super::{
    AttemptRecord, DeliveryRecord, Enqueued, JobEntry, ListCursor, ListFilter, StoredJob,
    quota_reason,
};
use crate::job::{NewDelivery, PreparedMdn};

/// Longest time between two sweeps of expired records (they are also dropped whenever
/// a lookup or a listing meets them).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Deliveries, jobs and schedule in this process.
pub(super) struct MemoryStore {
    state: Mutex<MemoryState>,
    /// Woken when jobs become ready, for readers waiting in `read_new`.
    jobs_ready: Notify,
    status_ttl: Duration,
    /// How far tests have moved the clock forward.
    #[cfg(test)]
    clock_offset: Mutex<Duration>,
}

/// What the Redis keys hold, in one place.
struct MemoryState {
    /// The delivery records by id (the delivery hashes).
    deliveries: HashMap<String, StoredDelivery>,
    /// (enqueue time ms, id) of every delivery, for listing newest first.
    index: BTreeSet<(i64, String)>,
    /// Jobs not yet read: (entry number, delivery id), oldest first.
    ready: VecDeque<(u64, String)>,
    /// Jobs read but not yet acknowledged, by entry number.
    pending: BTreeMap<u64, PendingJob>,
    /// (due time ms, id) of the scheduled retries.
    retries: BTreeSet<(i64, String)>,
    /// The due time of each scheduled retry, so a delivery is scheduled once.
    retry_due: HashMap<String, i64>,
    /// The number of the next job entry.
    next_entry: u64,
    /// When expired records are swept out next.
    next_sweep: Instant,
}

/// One delivery record.
struct StoredDelivery {
    record: DeliveryRecord,
    /// The MDN until the delivery has ended.
    mdn: Option<PreparedMdn>,
    /// When the record expires; renewed on every change.
    expires_at: Instant,
}

/// A job handed out by `read_new` or `reclaim` and not yet acknowledged.
struct PendingJob {
    delivery_id: String,
    /// When it was last handed out (its idle time counts from here).
    handed_out_at: Instant,
}

impl MemoryStore {
    /// An empty store whose records live `status_ttl_secs` (at least one second).
    pub(super) fn new(status_ttl_secs: u64) -> Self {
        Self {
            state: Mutex::new(MemoryState {
                deliveries: HashMap::new(),
                index: BTreeSet::new(),
                ready: VecDeque::new(),
                pending: BTreeMap::new(),
                retries: BTreeSet::new(),
                retry_due: HashMap::new(),
                next_entry: 1,
                next_sweep: Instant::now() + SWEEP_INTERVAL,
            }),
            jobs_ready: Notify::new(),
            status_ttl: Duration::from_secs(status_ttl_secs.max(1)),
            #[cfg(test)]
            clock_offset: Mutex::new(Duration::ZERO),
        }
    }

    pub(super) fn enqueue(
        &self,
        delivery: &NewDelivery,
        unsupported: Option<&str>,
        now_ms: i64,
    ) -> Enqueued {
        let now = self.now();
        let mut state = self.lock();
        state.sweep_if_due(now);
        if state.live(&delivery.delivery_id, now).is_some() {
            return Enqueued::Duplicate;
        }
        let over_quota = unsupported.is_none() && {
            let queued = state
                .deliveries
                .values()
                .filter(|stored| {
                    stored.expires_at > now
                        && stored.record.partnership_id == delivery.partnership_id
                        && !matches!(
                            stored.record.state,
                            DeliveryState::Delivered | DeliveryState::Failed
                        )
                })
                .count();
            queued >= delivery.max_queued() as usize
        };
        let quota = over_quota.then(|| quota_reason(delivery.max_queued()));
        let unsupported = unsupported.or(quota.as_deref());
        let record = DeliveryRecord::enqueued(delivery, unsupported, now_ms);
        state.index.insert((now_ms, delivery.delivery_id.clone()));
        state.deliveries.insert(
            delivery.delivery_id.clone(),
            StoredDelivery {
                record,
                mdn: unsupported.is_none().then(|| delivery.mdn.clone()),
                expires_at: now + self.status_ttl,
            },
        );
        match unsupported {
            Some(reason) => Enqueued::Failed(reason.to_owned()),
            None => {
                state.push_ready(delivery.delivery_id.clone());
                drop(state);
                self.jobs_ready.notify_waiters();
                Enqueued::Queued
            }
        }
    }

    pub(super) fn status(&self, delivery_id: &str) -> Option<DeliveryRecord> {
        let now = self.now();
        let mut state = self.lock();
        state
            .live(delivery_id, now)
            .map(|stored| stored.record.clone())
    }

    pub(super) fn job(&self, delivery_id: &str) -> Option<StoredJob> {
        let now = self.now();
        let mut state = self.lock();
        state.live(delivery_id, now).map(|stored| StoredJob {
            record: stored.record.clone(),
            mdn: stored.mdn.clone(),
        })
    }

    /// Takes up to `count` ready jobs, waiting up to `block_ms` (0: without end) for
    /// one to be enqueued or promoted.
    pub(super) async fn read_new(&self, count: usize, block_ms: u64) -> Vec<JobEntry> {
        let deadline =
            (block_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(block_ms));
        loop {
            // Registered before looking, so a job made ready in between still wakes us.
            let mut woken = std::pin::pin!(self.jobs_ready.notified());
            woken.as_mut().enable();
            let now = self.now();
            let taken = self.lock().take_ready(count.max(1), now);
            if !taken.is_empty() {
                return taken;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, woken).await.is_err() {
                        return Vec::new();
                    }
                }
                None => woken.await,
            }
        }
    }

    /// Hands out again up to `count` pending jobs idle for `min_idle_ms` at least,
    /// oldest entries first, and restarts their idle time.
    pub(super) fn reclaim(&self, min_idle_ms: u64, count: usize) -> Vec<JobEntry> {
        let min_idle = Duration::from_millis(min_idle_ms);
        let now = self.now();
        let mut state = self.lock();
        state
            .pending
            .iter_mut()
            .filter(|(_, job)| now.saturating_duration_since(job.handed_out_at) >= min_idle)
            .take(count.max(1))
            .map(|(entry, job)| {
                job.handed_out_at = now;
                JobEntry {
                    entry_id: entry.to_string(),
                    delivery_id: Some(job.delivery_id.clone()),
                }
            })
            .collect()
    }

    pub(super) fn begin_attempt(&self, delivery_id: &str, attempt: u32, now_ms: i64) {
        let now = self.now();
        let expires_at = now + self.status_ttl;
        let mut state = self.lock();
        if let Some(stored) = state.live(delivery_id, now) {
            let record = &mut stored.record;
            record.state = DeliveryState::InFlight;
            record.attempts = attempt;
            record.last_attempt_at_ms = now_ms;
            record.next_attempt_at_ms = 0;
            stored.expires_at = expires_at;
        }
    }

    pub(super) fn finish_attempt(
        &self,
        entry_id: &str,
        delivery_id: &str,
        outcome: &AttemptRecord,
    ) {
        let now = self.now();
        let expires_at = now + self.status_ttl;
        let mut state = self.lock();
        if let AttemptRecord::RetryScheduled {
            next_attempt_at_ms, ..
        } = outcome
        {
            state.schedule_retry(delivery_id, *next_attempt_at_ms);
        }
        if let Some(stored) = state.live(delivery_id, now) {
            stored.expires_at = expires_at;
            stored.record.apply_outcome(outcome);
            if !matches!(outcome, AttemptRecord::RetryScheduled { .. }) {
                // The delivery has ended: the MDN is not needed any more.
                stored.mdn = None;
            }
        }
        state.acknowledge(entry_id);
    }

    pub(super) fn discard_entry(&self, entry_id: &str) {
        self.lock().acknowledge(entry_id);
    }

    pub(super) fn promote_due_retries(&self, now_ms: i64, limit: usize) -> usize {
        let now = self.now();
        let mut state = self.lock();
        state.sweep_if_due(now);
        let due: Vec<(i64, String)> = state
            .retries
            .iter()
            .take_while(|(due_ms, _)| *due_ms <= now_ms)
            .take(limit.max(1))
            .cloned()
            .collect();
        for key in &due {
            state.retries.remove(key);
            state.retry_due.remove(&key.1);
        }
        let moved = due.len();
        for (_, delivery_id) in due {
            state.push_ready(delivery_id);
        }
        drop(state);
        if moved > 0 {
            self.jobs_ready.notify_waiters();
        }
        moved
    }

    pub(super) fn queue_depth(&self) -> (u64, u64) {
        let state = self.lock();
        let ready = state.ready.len() + state.pending.len();
        (
            u64::try_from(ready).unwrap_or(u64::MAX),
            u64::try_from(state.retries.len()).unwrap_or(u64::MAX),
        )
    }

    /// Lists as the Redis backend does: newest first, strictly after `after` in that
    /// order, expired records dropped on the way.
    pub(super) fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        after: Option<ListCursor>,
        scan_limit: usize,
    ) -> (Vec<DeliveryRecord>, Option<ListCursor>) {
        let now = self.now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let upper = after.map_or(Bound::Unbounded, |cursor| {
            Bound::Excluded((cursor.enqueued_at_ms, cursor.delivery_id))
        });
        let mut found = Vec::new();
        let mut expired = Vec::new();
        let mut next = None;
        let mut scanned = 0;
        for (enqueued_at_ms, delivery_id) in state.index.range((Bound::Unbounded, upper)).rev() {
            scanned += 1;
            match state.deliveries.get(delivery_id) {
                Some(stored) if stored.expires_at > now => {
                    if filter.matches(&stored.record) {
                        found.push(stored.record.clone());
                    }
                }
                _ => expired.push((*enqueued_at_ms, delivery_id.clone())),
            }
            if found.len() >= page_size.max(1) || scanned >= scan_limit.max(1) {
                next = Some(ListCursor {
                    enqueued_at_ms: *enqueued_at_ms,
                    delivery_id: delivery_id.clone(),
                });
                break;
            }
        }
        for (enqueued_at_ms, delivery_id) in expired {
            state.index.remove(&(enqueued_at_ms, delivery_id.clone()));
            state.deliveries.remove(&delivery_id);
        }
        (found, next)
    }

    fn lock(&self) -> MutexGuard<'_, MemoryState> {
        // Nothing panics while holding the lock; if something did, the state is still
        // consistent enough to go on with.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Instant {
        let now = Instant::now();
        #[cfg(test)]
        let now = now
            + *self
                .clock_offset
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
        now
    }

    /// Moves this store's clock forward (expiry and idle times), for tests.
    #[cfg(test)]
    pub(super) fn advance_clock(&self, by: Duration) {
        *self
            .clock_offset
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += by;
    }

    /// Records held, expired or not, for tests.
    #[cfg(test)]
    pub(super) fn records_held(&self) -> usize {
        self.lock().deliveries.len()
    }
}

impl MemoryState {
    /// The record of `delivery_id` unless it has expired; an expired one is dropped.
    fn live(&mut self, delivery_id: &str, now: Instant) -> Option<&mut StoredDelivery> {
        let expired = self
            .deliveries
            .get(delivery_id)
            .is_some_and(|stored| stored.expires_at <= now);
        if expired {
            self.remove_delivery(delivery_id);
            return None;
        }
        self.deliveries.get_mut(delivery_id)
    }

    fn remove_delivery(&mut self, delivery_id: &str) {
        if let Some(stored) = self.deliveries.remove(delivery_id) {
            self.index
                .remove(&(stored.record.enqueued_at_ms, delivery_id.to_owned()));
        }
    }

    /// Drops every expired record when the sweep is due. Jobs and retries of expired
    /// deliveries stay: a worker meets them and discards them, as with Redis.
    fn sweep_if_due(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, stored)| stored.expires_at <= now)
            .map(|(delivery_id, _)| delivery_id.clone())
            .collect();
        for delivery_id in expired {
            self.remove_delivery(&delivery_id);
        }
    }

    fn push_ready(&mut self, delivery_id: String) {
        let entry = self.next_entry;
        self.next_entry += 1;
        self.ready.push_back((entry, delivery_id));
    }

    fn take_ready(&mut self, count: usize, now: Instant) -> Vec<JobEntry> {
        let take = count.min(self.ready.len());
        let mut taken = Vec::with_capacity(take);
        for (entry, delivery_id) in self.ready.drain(..take) {
            taken.push(JobEntry {
                entry_id: entry.to_string(),
                delivery_id: Some(delivery_id.clone()),
            });
            self.pending.insert(
                entry,
                PendingJob {
                    delivery_id,
                    handed_out_at: now,
                },
            );
        }
        taken
    }

    /// Schedules `delivery_id` at `due_ms`, replacing an earlier schedule (`ZADD`).
    fn schedule_retry(&mut self, delivery_id: &str, due_ms: i64) {
        if let Some(previous) = self.retry_due.insert(delivery_id.to_owned(), due_ms) {
            self.retries.remove(&(previous, delivery_id.to_owned()));
        }
        self.retries.insert((due_ms, delivery_id.to_owned()));
    }

    /// Acknowledges and deletes a job entry, read or not (`XACK` and `XDEL`); an
    /// unknown entry is ignored.
    fn acknowledge(&mut self, entry_id: &str) {
        let Ok(entry) = entry_id.parse::<u64>() else {
            return;
        };
        if self.pending.remove(&entry).is_none() {
            self.ready.retain(|(ready, _)| *ready != entry);
        }
    }
}
