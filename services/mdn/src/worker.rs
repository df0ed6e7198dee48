//! The delivery workers of one replica.
//!
//! Two loops share a semaphore of `workers` permits and take only as many jobs as
//! permits are free, so a replica holds few more jobs than it attempts at once:
//!
//! - the reader takes new jobs from the stream (`XREADGROUP ... >`, or the ready queue
//!   of a memory store) as workers free up;
//! - the maintenance loop moves due retries from the retry set to the stream, takes
//!   over jobs that another replica read but has not finished within the reclaim
//!   timeout (`XAUTOCLAIM`), samples the queue depth, and forgets long-gone consumers;
//! - each job runs as a task: load, record the attempt, POST, record the outcome and
//!   acknowledge the stream entry in one transaction.
//!
//! Delivery is at least once: a replica that dies after the partner accepted an MDN
//! but before the outcome was recorded leaves the job to be delivered again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use as2_partner::https::HttpsSettings;
use as2_rpc::mdn::v1::DeliveryState;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::metrics::{AttemptLabels, MdnMetrics, QueueLabels, StateLabels};
use crate::retry::{NextStep, RetryPolicy, random_jitter};
use crate::store::{AttemptRecord, DeliveryStore, JobEntry, StoreError};
use crate::tracking::{StatusEvent, StatusEvents};
use crate::transport::{AttemptOutcome, MdnTransport};

/// Most jobs read from the stream in one call.
const READ_BATCH: usize = 100;
/// How long one blocking read waits for new jobs.
const READ_BLOCK_MS: u64 = 1_000;
/// Pause after a failed Redis call in a loop.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Most due retries moved per maintenance round.
const PROMOTE_BATCH: usize = 500;
/// How often the queue depth is sampled.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How often gone consumers are looked for.
const CONSUMER_CLEANUP_INTERVAL: Duration = Duration::from_secs(600);
/// How long a consumer without jobs must have been idle to be forgotten.
const CONSUMER_FORGET_IDLE_MS: u64 = 3_600_000;

/// The current time in Unix milliseconds.
pub use as2_common::clock::unix_millis as now_ms;

/// What the workers of a replica use.
pub struct Deliverer {
    /// Jobs and status.
    pub store: DeliveryStore,
    /// The HTTP client.
    pub transport: MdnTransport,
    /// When to retry.
    pub policy: RetryPolicy,
    /// Status events.
    pub events: StatusEvents,
    /// Metrics.
    pub metrics: MdnMetrics,
}

/// How the loops of a replica run.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// This replica's consumer name in the group.
    pub consumer: String,
    /// Attempts at once; 0 runs only the queue-depth sampler.
    pub workers: usize,
    /// Idle time after which another replica's job is taken over.
    pub reclaim_idle: Duration,
    /// Interval of the maintenance loop.
    pub poll_interval: Duration,
}

/// Runs the loops until `stop` is cancelled, then waits up to `grace` for attempts in
/// progress. Jobs still unfinished stay pending in the stream and are taken over by
/// another replica after the reclaim timeout (with a memory store they are lost with
/// the rest of the process's state).
pub async fn run_workers(
    deliverer: Arc<Deliverer>,
    settings: WorkerSettings,
    stop: CancellationToken,
    grace: Duration,
) {
    let semaphore = Arc::new(Semaphore::new(settings.workers));
    let tracker = TaskTracker::new();
    let reader = (settings.workers > 0).then(|| {
        tokio::spawn(read_loop(
            deliverer.clone(),
            settings.clone(),
            semaphore.clone(),
            tracker.clone(),
            stop.clone(),
        ))
    });
    maintenance_loop(&deliverer, &settings, &semaphore, &tracker, &stop).await;
    if let Some(reader) = reader
        && let Err(error) = reader.await
    {
        tracing::error!(%error, "mdn job reader failed");
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            in_flight = tracker.len(),
            "attempts outlived the grace period; other replicas take their jobs over"
        );
    }
}

async fn read_loop(
    deliverer: Arc<Deliverer>,
    settings: WorkerSettings,
    semaphore: Arc<Semaphore>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        // Wait for a free worker without holding it during the blocking read, so the
        // maintenance loop can still take jobs over meanwhile.
        let free = tokio::select! {
            () = stop.cancelled() => return,
            permit = semaphore.acquire() => permit.is_ok(),
        };
        if !free {
            return;
        }
        let count = semaphore.available_permits().clamp(1, READ_BATCH);
        let read = tokio::select! {
            () = stop.cancelled() => return,
            read = deliverer.store.read_new(&settings.consumer, count, READ_BLOCK_MS) => read,
        };
        match read {
            Ok(entries) => dispatch(&deliverer, &semaphore, &tracker, entries, &stop).await,
            Err(error) if error.is_missing_group() => {
                // Redis lost the stream (a restart without persistence): start over.
                tracing::warn!("the mdn job stream is gone, creating it again");
                if let Err(error) = deliverer.store.ensure_consumer_group().await {
                    tracing::warn!(%error, "cannot create the mdn job stream");
                }
                pause(&stop).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read mdn jobs");
                pause(&stop).await;
            }
        }
    }
}

async fn maintenance_loop(
    deliverer: &Arc<Deliverer>,
    settings: &WorkerSettings,
    semaphore: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    let reclaim_idle_ms = u64::try_from(settings.reclaim_idle.as_millis()).unwrap_or(u64::MAX);
    let mut last_depth_sample: Option<Instant> = None;
    let mut last_cleanup = Instant::now();
    loop {
        if settings.workers > 0 {
            if let Err(error) = deliverer
                .store
                .promote_due_retries(now_ms(), PROMOTE_BATCH)
                .await
            {
                tracing::warn!(%error, "cannot move due mdn retries");
            }
            let free = semaphore.available_permits().min(READ_BATCH);
            if free > 0 {
                match deliverer
                    .store
                    .reclaim(&settings.consumer, reclaim_idle_ms, free)
                    .await
                {
                    Ok(entries) => {
                        if !entries.is_empty() {
                            tracing::info!(count = entries.len(), "took over unfinished mdn jobs");
                            deliverer.metrics.reclaimed.inc_by(entries.len() as u64);
                        }
                        dispatch(deliverer, semaphore, tracker, entries, stop).await;
                    }
                    Err(error) => tracing::warn!(%error, "cannot reclaim mdn jobs"),
                }
            }
            if last_cleanup.elapsed() >= CONSUMER_CLEANUP_INTERVAL {
                last_cleanup = Instant::now();
                match deliverer
                    .store
                    .forget_idle_consumers(CONSUMER_FORGET_IDLE_MS.max(reclaim_idle_ms * 10))
                    .await
                {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "forgot gone mdn consumers"),
                    Err(error) => tracing::debug!(%error, "cannot clean up mdn consumers"),
                }
            }
        }
        if last_depth_sample.is_none_or(|at| at.elapsed() >= DEPTH_SAMPLE_INTERVAL) {
            last_depth_sample = Some(Instant::now());
            sample_queue_depth(deliverer).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

async fn sample_queue_depth(deliverer: &Deliverer) {
    match deliverer.store.queue_depth().await {
        Ok((ready, scheduled)) => {
            let gauge = |queue| {
                deliverer
                    .metrics
                    .queue_depth
                    .get_or_create(&QueueLabels { queue })
                    .clone()
            };
            gauge("ready").set(i64::try_from(ready).unwrap_or(i64::MAX));
            gauge("scheduled").set(i64::try_from(scheduled).unwrap_or(i64::MAX));
        }
        Err(error) => tracing::debug!(%error, "cannot sample the mdn queue depth"),
    }
}

/// Starts one task per entry, each holding a worker permit. Entries that wait for a
/// permit are already this replica's; should it stop first, they stay pending and are
/// taken over by another replica.
async fn dispatch(
    deliverer: &Arc<Deliverer>,
    semaphore: &Arc<Semaphore>,
    tracker: &TaskTracker,
    entries: Vec<JobEntry>,
    stop: &CancellationToken,
) {
    for entry in entries {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = semaphore.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => return,
            },
        };
        let deliverer = deliverer.clone();
        tracker.spawn(async move {
            deliverer.handle(entry).await;
            drop(permit);
        });
    }
}

async fn pause(stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(ERROR_PAUSE) => {}
    }
}

impl Deliverer {
    /// Attempts the delivery an entry names and records the outcome. A Redis failure
    /// leaves the entry pending, so the job is taken over later.
    pub async fn handle(&self, entry: JobEntry) {
        let Some(delivery_id) = entry.delivery_id.clone() else {
            tracing::warn!(
                entry = entry.entry_id,
                "malformed mdn job entry, discarding it"
            );
            self.discard(&entry.entry_id).await;
            return;
        };
        if let Err(error) = self.attempt(&entry.entry_id, &delivery_id).await {
            tracing::warn!(delivery_id, %error, "mdn job left for a later attempt");
        }
    }

    async fn attempt(&self, entry_id: &str, delivery_id: &str) -> Result<(), StoreError> {
        let Some(job) = self.store.job(delivery_id).await? else {
            tracing::warn!(delivery_id, "mdn job has expired, discarding it");
            self.store.discard_entry(entry_id).await?;
            return Ok(());
        };
        let mut record = job.record;
        if matches!(
            record.state,
            DeliveryState::Delivered | DeliveryState::Failed
        ) {
            self.store.discard_entry(entry_id).await?;
            return Ok(());
        }
        let Some(mdn) = job.mdn else {
            tracing::error!(delivery_id, "mdn job has no mdn, recording it as failed");
            return self
                .finish(
                    entry_id,
                    &mut record,
                    AttemptRecord::Failed {
                        http_status: 0,
                        error: "the stored MDN is missing".to_owned(),
                    },
                )
                .await;
        };
        let started_ms = now_ms();
        if record.attempts >= self.policy.max_attempts
            || self.policy.is_expired(record.enqueued_at_ms, started_ms)
        {
            let error = format!(
                "gave up after {} attempts: {}",
                record.attempts,
                if record.last_error.is_empty() {
                    "no outcome recorded"
                } else {
                    &record.last_error
                }
            );
            let http_status = record.last_http_status;
            return self
                .finish(
                    entry_id,
                    &mut record,
                    AttemptRecord::Failed { http_status, error },
                )
                .await;
        }

        record.attempts += 1;
        let span = tracing::info_span!(
            "mdn_delivery",
            otel.kind = "client",
            delivery_id,
            partnership = record.partnership_id.as_str(),
            attempt = record.attempts,
            outcome = tracing::field::Empty,
        );
        // The delivery continues the trace of the message the MDN answers.
        as2_common::telemetry::set_remote_parent(&span, &record.traceparent);
        self.deliver(entry_id, record, &mdn, started_ms)
            .instrument(span)
            .await
    }

    /// One attempt at a job that is due: POST the MDN and record the outcome.
    async fn deliver(
        &self,
        entry_id: &str,
        mut record: crate::store::DeliveryRecord,
        mdn: &crate::job::PreparedMdn,
        started_ms: i64,
    ) -> Result<(), StoreError> {
        let delivery_id = record.delivery_id.clone();
        self.store
            .begin_attempt(&delivery_id, record.attempts, started_ms)
            .await?;
        self.metrics.in_flight.inc();
        let clock = Instant::now();
        let outcome = match stored_https(&record.https) {
            Ok(https) => {
                self.transport
                    .post(&record.url, mdn, record.address_policy, &https)
                    .await
            }
            // Fail closed: without its settings the delivery could go out with less
            // than the partnership asked for (no pin, no client certificate).
            Err(reason) => AttemptOutcome::Untrusted { reason },
        };
        tracing::Span::current().record("outcome", outcome.label());
        self.metrics.in_flight.dec();
        self.metrics
            .attempt_duration_seconds
            .observe(clock.elapsed().as_secs_f64());
        self.metrics
            .attempts
            .get_or_create(&AttemptLabels {
                outcome: outcome.label(),
            })
            .inc();

        let finished_ms = now_ms();
        let result = match &outcome {
            AttemptOutcome::Accepted { status } => AttemptRecord::Delivered {
                http_status: u32::from(*status),
                at_ms: finished_ms,
            },
            failed if failed.is_final() => AttemptRecord::Failed {
                http_status: failed.http_status(),
                error: failed.error_text(),
            },
            failed => {
                let http_status = failed.http_status();
                let error = failed.error_text();
                match self.policy.after_failure(
                    record.attempts,
                    record.enqueued_at_ms,
                    finished_ms,
                    random_jitter(),
                ) {
                    NextStep::RetryAt(next_attempt_at_ms) => AttemptRecord::RetryScheduled {
                        http_status,
                        error,
                        next_attempt_at_ms,
                    },
                    NextStep::GiveUp => AttemptRecord::Failed { http_status, error },
                }
            }
        };
        self.finish(entry_id, &mut record, result).await
    }

    async fn finish(
        &self,
        entry_id: &str,
        record: &mut crate::store::DeliveryRecord,
        result: AttemptRecord,
    ) -> Result<(), StoreError> {
        self.store.finish_attempt(entry_id, record, &result).await?;
        record.apply_outcome(&result);
        let now = now_ms();
        let event = match &result {
            AttemptRecord::Delivered { http_status, at_ms } => {
                let latency_ms = at_ms.saturating_sub(record.enqueued_at_ms).max(0);
                #[allow(clippy::cast_precision_loss)]
                self.metrics
                    .delivery_latency_seconds
                    .observe(latency_ms as f64 / 1000.0);
                tracing::info!(
                    delivery_id = record.delivery_id,
                    partnership = record.partnership_id,
                    attempts = record.attempts,
                    http_status,
                    "mdn delivered"
                );
                "delivered"
            }
            AttemptRecord::RetryScheduled {
                http_status,
                error,
                next_attempt_at_ms,
            } => {
                tracing::info!(
                    delivery_id = record.delivery_id,
                    partnership = record.partnership_id,
                    attempts = record.attempts,
                    http_status,
                    error,
                    retry_in_ms = next_attempt_at_ms - now,
                    "mdn delivery failed, retry scheduled"
                );
                self.metrics.retries_scheduled.inc();
                "retry-scheduled"
            }
            AttemptRecord::Failed { http_status, error } => {
                tracing::warn!(
                    delivery_id = record.delivery_id,
                    partnership = record.partnership_id,
                    attempts = record.attempts,
                    http_status,
                    error,
                    "mdn delivery failed for good"
                );
                "failed"
            }
        };
        if event != "retry-scheduled" {
            self.metrics
                .finished
                .get_or_create(&StateLabels { state: event })
                .inc();
        }
        self.events
            .publish(&StatusEvent::new(event, record, now), &record.traceparent);
        Ok(())
    }

    async fn discard(&self, entry_id: &str) {
        if let Err(error) = self.store.discard_entry(entry_id).await {
            tracing::warn!(entry = entry_id, %error, "cannot discard an mdn job entry");
        }
    }
}

/// The HTTPS settings a delivery was stored with (see `DeliveryRecord::https`).
fn stored_https(encoded: &[u8]) -> Result<HttpsSettings, String> {
    use as2_rpc::prost::Message as _;
    let https = as2_rpc::routing::v1::PartnerHttps::decode(encoded)
        .map_err(|error| format!("the stored https settings are unreadable: {error}"))?;
    HttpsSettings::from_proto(Some(&https))
        .map_err(|error| format!("the stored https settings are not valid: {error}"))
}
