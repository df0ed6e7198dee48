//! Delivery jobs, their schedule and their status, in Redis or in process memory.
//!
//! [`DeliveryStore`] has two backends, chosen by the Redis URL: a real Redis shared by
//! every replica (the layout below), or the process's own memory for the URL
//! `memory://` ([`DeliveryStore::in_memory`]).
//!
//! # Redis
//!
//! Keys (`{prefix}` is the configured key prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:{mdn}:delivery:{id}` | hash | one delivery: request fields, the MDN (until it is delivered or has failed), state, attempts, last HTTP status and error, times in Unix milliseconds; TTL `status-ttl`, renewed on every change |
//! | `{prefix}:{mdn}:jobs` | stream | jobs ready to be attempted, one entry `id={delivery id}` each; consumer group `mdn-delivery` shared by all replicas; an entry is acknowledged and deleted when its attempt is recorded |
//! | `{prefix}:{mdn}:retries` | sorted set | deliveries waiting for their next attempt, scored by its due time (ms); due members are moved back to the stream atomically |
//! | `{prefix}:{mdn}:deliveries` | sorted set | every delivery by enqueue time (ms), for listing newest first; members older than the TTL are trimmed on enqueue, expired ones when a listing meets them |
//! | `{prefix}:{mdn}:queued:{partnership}` | sorted set | the partnership's deliveries that are queued or being retried, by enqueue time (ms): its quota of queued MDNs is counted here; a delivery leaves it when it ends, members older than the TTL are trimmed on enqueue |
//!
//! `{mdn}` is a Redis Cluster hash tag: the scripts and transactions below touch a
//! delivery together with the stream and the indexes, so every key of the service is in
//! one slot. Versions before it wrote the same keys as `{prefix}:mdn:...`;
//! [`layout_migration`] moves them at start-up.
//!
//! The stream's pending entries list is what makes a crash harmless: an entry read by
//! a replica that dies stays pending and is claimed by another replica (`XAUTOCLAIM`)
//! once it has been idle for the reclaim timeout.
//!
//! # Memory
//!
//! The same structures under one lock in the process: delivery records with their
//! expiry time, a queue of ready jobs and the jobs taken from it but not yet finished
//! (pending, handed out again by `reclaim` once idle for the reclaim timeout), the
//! retries ordered by due time, and the index by enqueue time. The semantics are those
//! of Redis: enqueueing is idempotent by delivery id, records expire `status-ttl` after
//! their last change (an expired record is dropped when it is looked up or listed, and
//! all expired records are swept out at least once a minute, so memory stays bounded),
//! and a blocking read waits for a wake-up on enqueue or promotion instead of polling.
//!
//! It is meant for trying the gateway out in one process: the state is lost when the
//! process exits and is not shared, so the service must run as a single replica. Its
//! operations never fail.

mod memory;

use std::collections::HashMap;
use std::sync::Arc;

use as2_common::redis::layout::{LayoutMigration, Precedence};
use as2_common::redis::{KeyGroup, KeyNamespace, RedisConnection};
use as2_partner::target::AddressPolicy;
use as2_rpc::mdn::v1::DeliveryState;
use redis::Script;

use self::memory::MemoryStore;
use crate::job::{NewDelivery, PreparedMdn, state_from_name, state_name};

/// How the service's keys move from the layout before hash tags (`{prefix}:mdn:...`)
/// to the current one; a delivery kept under both names keeps the one further along.
pub fn layout_migration(namespace: &KeyNamespace) -> LayoutMigration {
    LayoutMigration::new(
        KeyGroup::MdnDelivery,
        namespace,
        &[":jobs", ":retries", ":deliveries"],
        &[
            (
                ":delivery:",
                Precedence::Rank(
                    "state",
                    &[
                        "queued",
                        "in-flight",
                        "retry-scheduled",
                        "delivered",
                        "failed",
                    ],
                ),
            ),
            (":queued:", Precedence::Merge),
        ],
    )
}

/// Name of the consumer group of the job stream.
pub const CONSUMER_GROUP: &str = "mdn-delivery";

/// Stores a new delivery unless one with its id exists (atomic check and insert), and
/// records it as failed instead of queueing it when its partnership has its quota of
/// queued deliveries already. Returns 0 for an existing delivery, 1 for a new one
/// (queued, or failed at once as asked), 2 for one failed at once over the quota.
///
/// KEYS: delivery hash, job stream, index, the partnership's queued set. ARGV: id, ttl
/// seconds, now ms, "1" to queue the job ("0" for a delivery recorded as failed at
/// once), the quota, the reason recorded over the quota, then field/value pairs.
const ENQUEUE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cutoff = tonumber(ARGV[3]) - tonumber(ARGV[2]) * 1000
local queue = ARGV[4] == '1'
local over = false
if queue then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', cutoff)
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then
    queue = false
    over = true
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if over then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'last_error', ARGV[6])
  redis.call('HDEL', KEYS[1], 'headers', 'body')
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if queue then
  redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
if over then return 2 end
return 1
";

/// Moves due retries to the job stream (atomic, so two replicas never both move one).
///
/// KEYS: retry set, job stream. ARGV: now ms, most to move.
const PROMOTE_SCRIPT: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'id', id)
end
return #due
";

/// Fields of a delivery hash that make up its status (everything but the MDN).
const STATUS_FIELDS: &[&str] = &[
    "original_message_id",
    "partnership_id",
    "as2_from",
    "as2_to",
    "url",
    "traceparent",
    "targets",
    "state",
    "attempts",
    "last_http_status",
    "last_error",
    "enqueued_at",
    "last_attempt_at",
    "next_attempt_at",
    "delivered_at",
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record cannot be read.
    #[error("delivery {id} is stored in an unreadable form: {reason}")]
    Corrupt {
        /// The delivery.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// Whether the job stream or its consumer group is missing (Redis lost its data).
    pub fn is_missing_group(&self) -> bool {
        matches!(self, Self::Redis(error) if error.code() == Some("NOGROUP"))
    }

    /// Whether the failure is Redis being unreachable (rather than a bug).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Redis(error)
            if error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal())
    }
}

/// The recorded state of one delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The delivery id.
    pub delivery_id: String,
    /// Message-ID of the message the MDN answers.
    pub original_message_id: String,
    /// Partnership of the original message.
    pub partnership_id: String,
    /// AS2-From of the enqueue request.
    pub as2_from: String,
    /// AS2-To of the enqueue request.
    pub as2_to: String,
    /// Receipt-Delivery-Option URL.
    pub url: String,
    /// W3C traceparent of the request that produced the job.
    pub traceparent: String,
    /// The addresses the URL's host may resolve to (stored as `targets`: `public` or
    /// `any`; a record without it is `public`).
    pub address_policy: AddressPolicy,
    /// The partnership's HTTPS settings for the delivery, the encoded
    /// `as2.routing.v1.PartnerHttps` (stored as `https`, only when there are any: our
    /// client certificate's key id, the trusted CA certificates or pins, the proxy;
    /// never a key). Empty: the defaults.
    pub https: Vec<u8>,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started so far.
    pub attempts: u32,
    /// HTTP status of the last attempt; 0 without a response.
    pub last_http_status: u32,
    /// Why the last attempt failed; empty after success.
    pub last_error: String,
    /// Unix ms of the enqueue.
    pub enqueued_at_ms: i64,
    /// Unix ms of the last attempt's start; 0 before the first.
    pub last_attempt_at_ms: i64,
    /// Unix ms of the next attempt while a retry is scheduled; 0 otherwise.
    pub next_attempt_at_ms: i64,
    /// Unix ms of the successful delivery; 0 otherwise.
    pub delivered_at_ms: i64,
}

impl DeliveryRecord {
    /// The record of `delivery` as enqueued at `now_ms`: queued, or failed at once when
    /// `unsupported` names why it cannot be delivered.
    pub fn enqueued(delivery: &NewDelivery, unsupported: Option<&str>, now_ms: i64) -> Self {
        let address_policy = delivery.address_policy();
        Self {
            delivery_id: delivery.delivery_id.clone(),
            original_message_id: delivery.original_message_id.clone(),
            partnership_id: delivery.partnership_id.clone(),
            as2_from: delivery.as2_from.clone(),
            as2_to: delivery.as2_to.clone(),
            url: delivery.url().to_owned(),
            traceparent: delivery.traceparent.clone(),
            address_policy,
            https: delivery.encoded_https(),
            state: if unsupported.is_some() {
                DeliveryState::Failed
            } else {
                DeliveryState::Queued
            },
            last_error: unsupported.unwrap_or_default().to_owned(),
            enqueued_at_ms: now_ms,
            ..Self::default()
        }
    }

    /// Updates the record as recording `outcome` does: state, last HTTP status and
    /// error, and the time of the next attempt or of the delivery.
    pub fn apply_outcome(&mut self, outcome: &AttemptRecord) {
        match outcome {
            AttemptRecord::Delivered { http_status, at_ms } => {
                self.state = DeliveryState::Delivered;
                self.last_http_status = *http_status;
                self.last_error.clear();
                self.delivered_at_ms = *at_ms;
                self.next_attempt_at_ms = 0;
            }
            AttemptRecord::RetryScheduled {
                http_status,
                error,
                next_attempt_at_ms,
            } => {
                self.state = DeliveryState::RetryScheduled;
                self.last_http_status = *http_status;
                self.last_error.clone_from(error);
                self.next_attempt_at_ms = *next_attempt_at_ms;
            }
            AttemptRecord::Failed { http_status, error } => {
                self.state = DeliveryState::Failed;
                self.last_http_status = *http_status;
                self.last_error.clone_from(error);
                self.next_attempt_at_ms = 0;
            }
        }
    }
}

/// What enqueueing did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A delivery with this id exists already; nothing changed.
    Duplicate,
    /// Stored and queued.
    Queued,
    /// Stored and recorded as failed at once, for this reason.
    Failed(String),
}

/// The reason recorded for a delivery over its partnership's quota.
pub fn quota_reason(max_queued: u32) -> String {
    format!(
        "not delivered: the partnership has {max_queued} asynchronous MDNs queued already (its quota)"
    )
}

/// How a policy is stored.
fn targets_name(policy: AddressPolicy) -> &'static str {
    match policy {
        AddressPolicy::PublicOnly => "public",
        AddressPolicy::Any => "any",
    }
}

/// A delivery with the MDN it sends.
#[derive(Clone, Debug)]
pub struct StoredJob {
    /// Its status.
    pub record: DeliveryRecord,
    /// The MDN; `None` once the delivery has ended (the MDN is dropped then).
    pub mdn: Option<PreparedMdn>,
}

/// One entry of the job stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEntry {
    /// The stream entry id (what is acknowledged).
    pub entry_id: String,
    /// The delivery it names; `None` for a malformed entry.
    pub delivery_id: Option<String>,
}

/// How an attempt ended, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptRecord {
    /// The partner accepted the MDN.
    Delivered {
        /// HTTP status received.
        http_status: u32,
        /// Unix ms of the acceptance.
        at_ms: i64,
    },
    /// Another attempt follows at `next_attempt_at_ms`.
    RetryScheduled {
        /// HTTP status received, 0 without a response.
        http_status: u32,
        /// Why the attempt failed.
        error: String,
        /// Unix ms of the next attempt.
        next_attempt_at_ms: i64,
    },
    /// No further attempt.
    Failed {
        /// HTTP status received, 0 without a response.
        http_status: u32,
        /// Why the delivery failed.
        error: String,
    },
}

/// Filters of a listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this partnership's deliveries.
    pub partnership_id: Option<String>,
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
}

/// Where a listing continues: the enqueue time and id of the last entry returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListCursor {
    /// Enqueue time (ms) of the last entry returned.
    pub enqueued_at_ms: i64,
    /// Its id.
    pub delivery_id: String,
}

impl ListCursor {
    /// The page token form, `{ms}.{id}`.
    pub fn to_token(&self) -> String {
        format!("{}.{}", self.enqueued_at_ms, self.delivery_id)
    }

    /// Parses a page token.
    pub fn from_token(token: &str) -> Option<Self> {
        let (ms, id) = token.split_once('.')?;
        Some(Self {
            enqueued_at_ms: ms.parse().ok()?,
            delivery_id: crate::job::is_delivery_id(id).then(|| id.to_owned())?,
        })
    }
}

/// The key names of one namespace.
#[derive(Clone, Debug)]
struct Keys {
    namespace: KeyNamespace,
    jobs: String,
    retries: String,
    index: String,
}

impl Keys {
    fn new(namespace: KeyNamespace) -> Self {
        Self {
            jobs: KeyGroup::MdnDelivery.key(&namespace, ":jobs"),
            retries: KeyGroup::MdnDelivery.key(&namespace, ":retries"),
            index: KeyGroup::MdnDelivery.key(&namespace, ":deliveries"),
            namespace,
        }
    }

    fn delivery(&self, id: &str) -> String {
        KeyGroup::MdnDelivery.key(&self.namespace, format_args!(":delivery:{id}"))
    }

    fn queued(&self, partnership_id: &str) -> String {
        KeyGroup::MdnDelivery.key(&self.namespace, format_args!(":queued:{partnership_id}"))
    }
}

/// Jobs, schedule and status of MDN deliveries, in Redis or in this process's memory.
/// Cheap to clone; clones share the same state.
#[derive(Clone)]
pub struct DeliveryStore {
    backend: Backend,
    namespace: KeyNamespace,
}

/// Where a [`DeliveryStore`] keeps its state.
#[derive(Clone)]
enum Backend {
    Redis(Arc<RedisStore>),
    Memory(Arc<MemoryStore>),
}

impl DeliveryStore {
    /// A store in Redis over `connection` in `namespace`; records live
    /// `status_ttl_secs`.
    ///
    /// Blocking job reads ([`read_new`](Self::read_new)) use `connection` too unless
    /// [`with_reader_connection`](Self::with_reader_connection) gives them one of their
    /// own; on a shared connection they hold up every other command while they wait.
    pub fn new(connection: RedisConnection, namespace: KeyNamespace, status_ttl_secs: u64) -> Self {
        Self {
            backend: Backend::Redis(Arc::new(RedisStore::new(
                connection,
                namespace.clone(),
                status_ttl_secs,
            ))),
            namespace,
        }
    }

    /// A store kept in this process's memory (the Redis URL `memory://`); records live
    /// `status_ttl_secs`. Everything is lost when the process exits and nothing is
    /// shared with other processes, so the service must run as a single replica.
    pub fn in_memory(namespace: KeyNamespace, status_ttl_secs: u64) -> Self {
        Self {
            backend: Backend::Memory(Arc::new(MemoryStore::new(status_ttl_secs))),
            namespace,
        }
    }

    /// Gives the blocking job reads of a Redis store a connection of their own, whose
    /// response timeout must leave room for the block time. A memory store ignores it.
    #[must_use]
    pub fn with_reader_connection(mut self, reader_connection: RedisConnection) -> Self {
        if let Backend::Redis(redis) = &mut self.backend {
            Arc::make_mut(redis).reader_connection = reader_connection;
        }
        self
    }

    /// A short name of the backend for logs: `redis` or `memory`.
    pub fn backend_kind(&self) -> &'static str {
        match &self.backend {
            Backend::Redis(_) => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    /// The key namespace the store was made with.
    pub fn namespace(&self) -> &KeyNamespace {
        &self.namespace
    }

    /// Creates the job stream and its consumer group unless they exist. The group
    /// starts at the stream's beginning, so jobs enqueued before it existed are read.
    /// Nothing to do in memory.
    pub async fn ensure_consumer_group(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.ensure_consumer_group().await,
            Backend::Memory(_) => Ok(()),
        }
    }

    /// Stores `delivery` and queues it, or records it as failed at once when
    /// `unsupported` names why it cannot be delivered or its partnership has its quota
    /// of queued deliveries ([`NewDelivery::max_queued`]) already. A delivery with this
    /// id that exists already is left as it is.
    pub async fn enqueue(
        &self,
        delivery: &NewDelivery,
        unsupported: Option<&str>,
        now_ms: i64,
    ) -> Result<Enqueued, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.enqueue(delivery, unsupported, now_ms).await,
            Backend::Memory(memory) => Ok(memory.enqueue(delivery, unsupported, now_ms)),
        }
    }

    /// The status of one delivery; `None` when unknown or expired.
    pub async fn status(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.status(delivery_id).await,
            Backend::Memory(memory) => Ok(memory.status(delivery_id)),
        }
    }

    /// A delivery with its MDN; `None` when unknown or expired.
    pub async fn job(&self, delivery_id: &str) -> Result<Option<StoredJob>, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.job(delivery_id).await,
            Backend::Memory(memory) => Ok(memory.job(delivery_id)),
        }
    }

    /// Reads up to `count` new jobs for `consumer`, waiting up to `block_ms` for one
    /// (0: until one comes). Each job read stays pending until its attempt is recorded
    /// ([`finish_attempt`](Self::finish_attempt)) or it is discarded.
    ///
    /// In Redis this is a blocking `XREADGROUP` on the reader connection; in memory the
    /// wait ends as soon as a job is enqueued or a retry becomes due.
    pub async fn read_new(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<JobEntry>, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.read_new(consumer, count, block_ms).await,
            Backend::Memory(memory) => Ok(memory.read_new(count, block_ms).await),
        }
    }

    /// Takes over up to `count` jobs that other consumers (or this one) read but did
    /// not acknowledge within `min_idle_ms`.
    pub async fn reclaim(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<JobEntry>, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.reclaim(consumer, min_idle_ms, count).await,
            Backend::Memory(memory) => Ok(memory.reclaim(min_idle_ms, count)),
        }
    }

    /// Records the start of attempt number `attempt`.
    pub async fn begin_attempt(
        &self,
        delivery_id: &str,
        attempt: u32,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.begin_attempt(delivery_id, attempt, now_ms).await,
            Backend::Memory(memory) => {
                memory.begin_attempt(delivery_id, attempt, now_ms);
                Ok(())
            }
        }
    }

    /// Records how an attempt ended and acknowledges its job entry, atomically: a
    /// scheduled retry is in the retry schedule before the entry disappears; a delivery
    /// that ends leaves its partnership's queued deliveries.
    pub async fn finish_attempt(
        &self,
        entry_id: &str,
        record: &DeliveryRecord,
        outcome: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let delivery_id = record.delivery_id.as_str();
        match &self.backend {
            Backend::Redis(redis) => {
                redis
                    .finish_attempt(entry_id, delivery_id, &record.partnership_id, outcome)
                    .await
            }
            Backend::Memory(memory) => {
                memory.finish_attempt(entry_id, delivery_id, outcome);
                Ok(())
            }
        }
    }

    /// Acknowledges and deletes a job entry that needs no attempt (its delivery has
    /// expired or ended already, or the entry is malformed).
    pub async fn discard_entry(&self, entry_id: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.discard_entry(entry_id).await,
            Backend::Memory(memory) => {
                memory.discard_entry(entry_id);
                Ok(())
            }
        }
    }

    /// Moves up to `limit` retries that are due at `now_ms` to the ready jobs; returns
    /// how many were moved.
    pub async fn promote_due_retries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.promote_due_retries(now_ms, limit).await,
            Backend::Memory(memory) => Ok(memory.promote_due_retries(now_ms, limit)),
        }
    }

    /// Jobs ready (waiting or being attempted) and retries waiting for their time.
    pub async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.queue_depth().await,
            Backend::Memory(memory) => Ok(memory.queue_depth()),
        }
    }

    /// Deletes consumers of the group that hold no jobs and have been idle longer than
    /// `idle_ms` (replicas that are gone); returns how many were deleted. A memory
    /// store has no consumers to forget.
    pub async fn forget_idle_consumers(&self, idle_ms: u64) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.forget_idle_consumers(idle_ms).await,
            Backend::Memory(_) => Ok(0),
        }
    }

    /// Lists deliveries newest first from `after` on, up to `page_size` of them, looking
    /// at no more than `scan_limit` index entries; returns them and where to continue.
    pub async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        after: Option<ListCursor>,
        scan_limit: usize,
    ) -> Result<(Vec<DeliveryRecord>, Option<ListCursor>), StoreError> {
        match &self.backend {
            Backend::Redis(redis) => redis.list(filter, page_size, after, scan_limit).await,
            Backend::Memory(memory) => Ok(memory.list(filter, page_size, after, scan_limit)),
        }
    }

    /// The memory backend, for tests that move its clock.
    #[cfg(test)]
    fn memory(&self) -> Option<&MemoryStore> {
        match &self.backend {
            Backend::Redis(_) => None,
            Backend::Memory(memory) => Some(memory),
        }
    }
}

/// The Redis backend of [`DeliveryStore`].
#[derive(Clone)]
struct RedisStore {
    connection: RedisConnection,
    /// For blocking stream reads; the shared connection unless one was given.
    reader_connection: RedisConnection,
    keys: Keys,
    status_ttl_secs: u64,
    enqueue_script: Script,
    promote_script: Script,
}

impl RedisStore {
    fn new(connection: RedisConnection, namespace: KeyNamespace, status_ttl_secs: u64) -> Self {
        Self {
            reader_connection: connection.clone(),
            connection,
            keys: Keys::new(namespace),
            status_ttl_secs: status_ttl_secs.max(1),
            enqueue_script: Script::new(ENQUEUE_SCRIPT),
            promote_script: Script::new(PROMOTE_SCRIPT),
        }
    }

    /// Creates the job stream and its consumer group unless they exist. The group
    /// starts at the stream's beginning, so jobs enqueued before it existed are read.
    async fn ensure_consumer_group(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.keys.jobs)
            .arg(CONSUMER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
            other => Ok(other?),
        }
    }

    /// Stores `delivery` and queues it, or records it as failed at once when
    /// `unsupported` names why it cannot be delivered or the quota is reached.
    async fn enqueue(
        &self,
        delivery: &NewDelivery,
        unsupported: Option<&str>,
        now_ms: i64,
    ) -> Result<Enqueued, StoreError> {
        let headers =
            serde_json::to_string(&delivery.mdn.headers).map_err(|error| StoreError::Corrupt {
                id: delivery.delivery_id.clone(),
                reason: error.to_string(),
            })?;
        let state = if unsupported.is_some() {
            DeliveryState::Failed
        } else {
            DeliveryState::Queued
        };
        let mut invocation = self.enqueue_script.prepare_invoke();
        invocation
            .key(self.keys.delivery(&delivery.delivery_id))
            .key(&self.keys.jobs)
            .key(&self.keys.index)
            .key(self.keys.queued(&delivery.partnership_id))
            .arg(&delivery.delivery_id)
            .arg(self.status_ttl_secs)
            .arg(now_ms)
            .arg(if unsupported.is_some() { "0" } else { "1" })
            .arg(delivery.max_queued())
            .arg(quota_reason(delivery.max_queued()))
            .arg("original_message_id")
            .arg(&delivery.original_message_id)
            .arg("partnership_id")
            .arg(&delivery.partnership_id)
            .arg("as2_from")
            .arg(&delivery.as2_from)
            .arg("as2_to")
            .arg(&delivery.as2_to)
            .arg("url")
            .arg(delivery.url())
            .arg("traceparent")
            .arg(&delivery.traceparent)
            .arg("targets")
            .arg(targets_name(delivery.address_policy()))
            .arg("state")
            .arg(state_name(state))
            .arg("attempts")
            .arg(0)
            .arg("enqueued_at")
            .arg(now_ms)
            .arg("last_error")
            .arg(unsupported.unwrap_or_default());
        let https = delivery.encoded_https();
        if !https.is_empty() {
            invocation.arg("https").arg(https);
        }
        if unsupported.is_none() {
            invocation
                .arg("headers")
                .arg(headers)
                .arg("body")
                .arg(&delivery.mdn.body[..]);
        }
        let mut connection = self.connection.clone();
        let created: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(match (created, unsupported) {
            (0, _) => Enqueued::Duplicate,
            (2, _) => Enqueued::Failed(quota_reason(delivery.max_queued())),
            (_, Some(reason)) => Enqueued::Failed(reason.to_owned()),
            (_, None) => Enqueued::Queued,
        })
    }

    /// The status of one delivery; `None` when unknown or expired.
    async fn status(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let mut connection = self.connection.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.keys.delivery(delivery_id))
            .arg(STATUS_FIELDS)
            .query_async(&mut connection)
            .await?;
        Ok(record_from_fields(
            delivery_id,
            STATUS_FIELDS.iter().copied().zip(values),
        ))
    }

    /// A delivery with its MDN; `None` when unknown or expired.
    async fn job(&self, delivery_id: &str) -> Result<Option<StoredJob>, StoreError> {
        let mut connection = self.connection.clone();
        let mut fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(self.keys.delivery(delivery_id))
            .query_async(&mut connection)
            .await?;
        let body = fields.remove("body");
        let headers = fields.remove("headers");
        let Some(record) = record_from_fields(
            delivery_id,
            fields.into_iter().map(|(name, value)| (name, Some(value))),
        ) else {
            return Ok(None);
        };
        let mdn = match (headers, body) {
            (Some(headers), Some(body)) => Some(PreparedMdn {
                headers: serde_json::from_slice(&headers).map_err(|error| StoreError::Corrupt {
                    id: delivery_id.to_owned(),
                    reason: format!("headers: {error}"),
                })?,
                body,
            }),
            _ => None,
        };
        Ok(Some(StoredJob { record, mdn }))
    }

    /// Reads up to `count` new jobs for `consumer`, waiting up to `block_ms` for one.
    ///
    /// Reads on the reader connection, which should be dedicated to one loop: a
    /// blocking read holds up every other command on its connection.
    async fn read_new(
        &self,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<JobEntry>, StoreError> {
        type Reply = Option<Vec<(String, Vec<(String, Option<HashMap<String, String>>)>)>>;
        let reply: Reply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.keys.jobs)
            .arg(">")
            .query_async(&mut self.reader_connection.clone())
            .await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_stream, entries)| entries)
            .map(job_entry)
            .collect())
    }

    /// Takes over up to `count` jobs that other consumers (or this one) read but did
    /// not acknowledge within `min_idle_ms`.
    async fn reclaim(
        &self,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<JobEntry>, StoreError> {
        type Reply = (
            String,
            Vec<(String, Option<HashMap<String, String>>)>,
            Vec<String>,
        );
        let mut connection = self.connection.clone();
        let (_next, claimed, _deleted): Reply = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.jobs)
            .arg(CONSUMER_GROUP)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut connection)
            .await?;
        Ok(claimed.into_iter().map(job_entry).collect())
    }

    /// Records the start of attempt number `attempt`.
    async fn begin_attempt(
        &self,
        delivery_id: &str,
        attempt: u32,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let key = self.keys.delivery(delivery_id);
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .hset_multiple(
                &key,
                &[
                    ("state", state_name(DeliveryState::InFlight).to_owned()),
                    ("attempts", attempt.to_string()),
                    ("last_attempt_at", now_ms.to_string()),
                ],
            )
            .ignore()
            .hdel(&key, "next_attempt_at")
            .ignore()
            .expire(&key, self.ttl())
            .ignore()
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// Records how an attempt ended and acknowledges its stream entry, atomically: a
    /// scheduled retry is in the retry set before the entry disappears.
    async fn finish_attempt(
        &self,
        entry_id: &str,
        delivery_id: &str,
        partnership_id: &str,
        outcome: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let key = self.keys.delivery(delivery_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !matches!(outcome, AttemptRecord::RetryScheduled { .. }) {
            pipe.zrem(self.keys.queued(partnership_id), delivery_id)
                .ignore();
        }
        match outcome {
            AttemptRecord::Delivered { http_status, at_ms } => {
                pipe.hset_multiple(
                    &key,
                    &[
                        ("state", state_name(DeliveryState::Delivered).to_owned()),
                        ("last_http_status", http_status.to_string()),
                        ("last_error", String::new()),
                        ("delivered_at", at_ms.to_string()),
                    ],
                )
                .ignore()
                .hdel(&key, &["body", "headers", "next_attempt_at"])
                .ignore();
            }
            AttemptRecord::RetryScheduled {
                http_status,
                error,
                next_attempt_at_ms,
            } => {
                pipe.hset_multiple(
                    &key,
                    &[
                        (
                            "state",
                            state_name(DeliveryState::RetryScheduled).to_owned(),
                        ),
                        ("last_http_status", http_status.to_string()),
                        ("last_error", error.clone()),
                        ("next_attempt_at", next_attempt_at_ms.to_string()),
                    ],
                )
                .ignore()
                .zadd(&self.keys.retries, delivery_id, *next_attempt_at_ms)
                .ignore();
            }
            AttemptRecord::Failed { http_status, error } => {
                pipe.hset_multiple(
                    &key,
                    &[
                        ("state", state_name(DeliveryState::Failed).to_owned()),
                        ("last_http_status", http_status.to_string()),
                        ("last_error", error.clone()),
                    ],
                )
                .ignore()
                .hdel(&key, &["body", "headers", "next_attempt_at"])
                .ignore();
            }
        }
        pipe.expire(&key, self.ttl()).ignore();
        self.acknowledge_in(&mut pipe, entry_id);
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    /// Acknowledges and deletes a stream entry that needs no attempt (its delivery has
    /// expired or ended already, or the entry is malformed).
    async fn discard_entry(&self, entry_id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.acknowledge_in(&mut pipe, entry_id);
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }

    fn acknowledge_in(&self, pipe: &mut redis::Pipeline, entry_id: &str) {
        pipe.cmd("XACK")
            .arg(&self.keys.jobs)
            .arg(CONSUMER_GROUP)
            .arg(entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(&self.keys.jobs)
            .arg(entry_id)
            .ignore();
    }

    /// Moves up to `limit` retries that are due at `now_ms` to the job stream; returns
    /// how many were moved.
    async fn promote_due_retries(&self, now_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let mut connection = self.connection.clone();
        let moved: usize = self
            .promote_script
            .key(&self.keys.retries)
            .key(&self.keys.jobs)
            .arg(now_ms)
            .arg(limit.max(1))
            .invoke_async(&mut connection)
            .await?;
        Ok(moved)
    }

    /// Jobs in the stream (waiting or being attempted) and retries waiting for their
    /// time.
    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let mut connection = self.connection.clone();
        let (stream, retries): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(&self.keys.jobs)
            .zcard(&self.keys.retries)
            .query_async(&mut connection)
            .await?;
        Ok((stream, retries))
    }

    /// Deletes consumers of the group that hold no jobs and have been idle longer than
    /// `idle_ms` (replicas that are gone); returns how many were deleted.
    async fn forget_idle_consumers(&self, idle_ms: u64) -> Result<usize, StoreError> {
        let mut connection = self.connection.clone();
        let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.jobs)
            .arg(CONSUMER_GROUP)
            .query_async(&mut connection)
            .await?;
        let mut forgotten = 0;
        for consumer in consumers {
            let number = |field: &str| {
                consumer
                    .get(field)
                    .and_then(|value| redis::from_redis_value_ref::<u64>(value).ok())
            };
            let name = consumer
                .get("name")
                .and_then(|value| redis::from_redis_value_ref::<String>(value).ok());
            let (Some(name), Some(0), Some(idle)) = (name, number("pending"), number("idle"))
            else {
                continue;
            };
            if idle < idle_ms {
                continue;
            }
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.keys.jobs)
                .arg(CONSUMER_GROUP)
                .arg(&name)
                .query_async(&mut connection)
                .await?;
            forgotten += 1;
        }
        Ok(forgotten)
    }

    /// Lists deliveries newest first from `after` on, up to `page_size` of them, looking
    /// at no more than `scan_limit` index entries; returns them and where to continue.
    async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        after: Option<ListCursor>,
        scan_limit: usize,
    ) -> Result<(Vec<DeliveryRecord>, Option<ListCursor>), StoreError> {
        const BATCH: usize = 200;
        let mut connection = self.connection.clone();
        let mut found = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let max = cursor
                .as_ref()
                .map_or_else(|| "+inf".to_owned(), |c| c.enqueued_at_ms.to_string());
            let batch: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&self.keys.index)
                .arg(&max)
                .arg("-inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(BATCH)
                .query_async(&mut connection)
                .await?;
            let exhausted = batch.len() < BATCH;
            let mut advanced = false;
            for (delivery_id, score) in batch {
                // Scores are integral milliseconds, well within f64's exact range.
                #[allow(clippy::cast_possible_truncation)]
                let enqueued_at_ms = score as i64;
                if let Some(cursor) = &cursor
                    && enqueued_at_ms == cursor.enqueued_at_ms
                    && delivery_id >= cursor.delivery_id
                {
                    continue;
                }
                advanced = true;
                scanned += 1;
                cursor = Some(ListCursor {
                    enqueued_at_ms,
                    delivery_id: delivery_id.clone(),
                });
                match self.status(&delivery_id).await? {
                    None => {
                        let _: i64 = redis::cmd("ZREM")
                            .arg(&self.keys.index)
                            .arg(&delivery_id)
                            .query_async(&mut connection)
                            .await?;
                    }
                    Some(record) if filter.matches(&record) => {
                        found.push(record);
                        if found.len() >= page_size {
                            return Ok((found, cursor));
                        }
                    }
                    Some(_) => {}
                }
                if scanned >= scan_limit {
                    return Ok((found, cursor));
                }
            }
            if exhausted || !advanced {
                return Ok((found, None));
            }
        }
    }

    fn ttl(&self) -> i64 {
        i64::try_from(self.status_ttl_secs).unwrap_or(i64::MAX)
    }
}

impl ListFilter {
    fn matches(&self, record: &DeliveryRecord) -> bool {
        self.partnership_id
            .as_ref()
            .is_none_or(|id| *id == record.partnership_id)
            && self.state.is_none_or(|state| state == record.state)
    }
}

fn job_entry((entry_id, fields): (String, Option<HashMap<String, String>>)) -> JobEntry {
    let delivery_id = fields
        .and_then(|mut fields| fields.remove("id"))
        .filter(|id| crate::job::is_delivery_id(id));
    JobEntry {
        entry_id,
        delivery_id,
    }
}

/// Builds a record from hash fields; `None` when the hash is gone (no state).
fn record_from_fields<N: AsRef<str>>(
    delivery_id: &str,
    fields: impl IntoIterator<Item = (N, Option<Vec<u8>>)>,
) -> Option<DeliveryRecord> {
    let mut record = DeliveryRecord {
        delivery_id: delivery_id.to_owned(),
        ..DeliveryRecord::default()
    };
    let mut has_state = false;
    for (name, value) in fields {
        let Some(value) = value else { continue };
        if name.as_ref() == "https" {
            record.https = value;
            continue;
        }
        let text = String::from_utf8_lossy(&value).into_owned();
        let number = || text.parse::<i64>().unwrap_or(0);
        match name.as_ref() {
            "original_message_id" => record.original_message_id = text,
            "partnership_id" => record.partnership_id = text,
            "as2_from" => record.as2_from = text,
            "as2_to" => record.as2_to = text,
            "url" => record.url = text,
            "traceparent" => record.traceparent = text,
            "targets" => {
                record.address_policy = if text == "any" {
                    AddressPolicy::Any
                } else {
                    AddressPolicy::PublicOnly
                };
            }
            "state" => {
                has_state = true;
                record.state = state_from_name(&text);
            }
            "attempts" => record.attempts = text.parse().unwrap_or(0),
            "last_http_status" => record.last_http_status = text.parse().unwrap_or(0),
            "last_error" => record.last_error = text,
            "enqueued_at" => record.enqueued_at_ms = number(),
            "last_attempt_at" => record.last_attempt_at_ms = number(),
            "next_attempt_at" => record.next_attempt_at_ms = number(),
            "delivered_at" => record.delivered_at_ms = number(),
            _ => {}
        }
    }
    has_state.then_some(record)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use as2_common::config::RedisConfig;

    use super::*;
    use crate::job::DeliveryTarget;

    #[test]
    fn cursors_round_trip_through_tokens() {
        let cursor = ListCursor {
            enqueued_at_ms: 1_700_000_000_123,
            delivery_id: "0123456789abcdef0123456789abcdef".to_owned(),
        };
        assert_eq!(ListCursor::from_token(&cursor.to_token()), Some(cursor));
        assert_eq!(ListCursor::from_token("garbage"), None);
        assert_eq!(ListCursor::from_token("12.notanid"), None);
    }

    #[test]
    fn a_hash_without_state_is_no_record() {
        assert!(record_from_fields("x", [("url", Some(b"http://a/".to_vec()))]).is_none());
        let record = record_from_fields(
            "x",
            [
                ("state", Some(b"retry-scheduled".to_vec())),
                ("attempts", Some(b"3".to_vec())),
                ("last_http_status", Some(b"500".to_vec())),
            ],
        )
        .unwrap();
        assert_eq!(record.state, DeliveryState::RetryScheduled);
        assert_eq!(record.attempts, 3);
        assert_eq!(record.last_http_status, 500);
    }

    const TTL_SECS: u64 = 3_600;

    fn namespace() -> KeyNamespace {
        KeyNamespace::new("unit").unwrap()
    }

    fn memory_store() -> DeliveryStore {
        DeliveryStore::in_memory(namespace(), TTL_SECS)
    }

    /// A store in a Redis started for the test, which lives as long as the server.
    async fn redis_store() -> (as2_testkit::RedisServer, DeliveryStore) {
        let server = as2_testkit::RedisServer::start();
        let redis = as2_common::redis::connect(&RedisConfig::new(server.url(), "unit"))
            .await
            .unwrap();
        let store = DeliveryStore::new(redis.connection, redis.namespace, TTL_SECS);
        store.ensure_consumer_group().await.unwrap();
        (server, store)
    }

    /// Runs each scenario twice: `in_redis::{scenario}` with a Redis started for the
    /// test, `in_memory::{scenario}` with a memory store.
    macro_rules! in_redis_and_in_memory {
        ($($scenario:ident),+ $(,)?) => {
            mod in_redis {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        let (_server, store) = super::redis_store().await;
                        super::$scenario(&store).await;
                    }
                )+
            }

            mod in_memory {
                $(
                    #[tokio::test]
                    async fn $scenario() {
                        super::$scenario(&super::memory_store()).await;
                    }
                )+
            }
        };
    }

    in_redis_and_in_memory!(
        a_job_goes_through_retries_to_delivery,
        jobs_fail_are_discarded_and_reclaimed,
        deliveries_are_listed_in_pages,
        a_partnership_past_its_quota_gets_failed_deliveries,
    );

    /// The quota counts a partnership's queued and retried deliveries, not its ended
    /// ones nor other partnerships'.
    async fn a_partnership_past_its_quota_gets_failed_deliveries(store: &DeliveryStore) {
        let limited = |number| {
            let mut new = delivery(number, "partner-q");
            new.targets = Ok(as2_partner::target::AsyncMdnTargets {
                max_queued: 2,
                ..as2_partner::target::AsyncMdnTargets::default()
            });
            new
        };
        for number in [1, 2] {
            assert_eq!(
                store.enqueue(&limited(number), None, 1_000).await.unwrap(),
                Enqueued::Queued
            );
        }
        let over = limited(3);
        assert_eq!(
            store.enqueue(&over, None, 1_001).await.unwrap(),
            Enqueued::Failed(quota_reason(2))
        );
        let record = store.status(&over.delivery_id).await.unwrap().unwrap();
        assert_eq!(record.state, DeliveryState::Failed);
        assert_eq!(record.last_error, quota_reason(2));
        assert!(
            store
                .job(&over.delivery_id)
                .await
                .unwrap()
                .unwrap()
                .mdn
                .is_none()
        );
        assert_eq!(
            store
                .enqueue(&delivery(4, "partner-other"), None, 1_002)
                .await
                .unwrap(),
            Enqueued::Queued,
            "another partnership has its own quota"
        );
        // One ends: there is room again.
        let read = store.read_new("c1", 10, 100).await.unwrap();
        let first = read
            .iter()
            .find(|entry| entry.delivery_id.as_deref() == Some(limited(1).delivery_id.as_str()))
            .unwrap()
            .clone();
        finish(
            store,
            &first,
            &AttemptRecord::Delivered {
                http_status: 200,
                at_ms: 1_003,
            },
        )
        .await;
        assert_eq!(
            store.enqueue(&limited(5), None, 1_004).await.unwrap(),
            Enqueued::Queued
        );
        assert_eq!(
            store.enqueue(&limited(6), None, 1_005).await.unwrap(),
            Enqueued::Failed(quota_reason(2))
        );
    }

    /// Delivery number `number` of `partnership` (its id is `number` in hex).
    fn delivery(number: u32, partnership: &str) -> NewDelivery {
        let url = format!("http://partner.example/mdn/{number}");
        NewDelivery {
            delivery_id: format!("{number:032x}"),
            original_message_id: format!("<{number}@partner.example>"),
            partnership_id: partnership.to_owned(),
            as2_from: "gateway".to_owned(),
            as2_to: "partner".to_owned(),
            target: DeliveryTarget::Http(url),
            mdn: PreparedMdn {
                headers: vec![("Message-ID".to_owned(), format!("<mdn-{number}@gw>"))],
                body: format!("mdn {number}").into_bytes(),
            },
            traceparent: String::new(),
            targets: Ok(as2_partner::target::AsyncMdnTargets::default()),
        }
    }

    async fn state_of(store: &DeliveryStore, delivery: &NewDelivery) -> DeliveryState {
        store
            .status(&delivery.delivery_id)
            .await
            .unwrap()
            .expect("the record exists")
            .state
    }

    /// The one entry of `read`, checked to name `delivery`.
    fn only_entry(read: Vec<JobEntry>, delivery: &NewDelivery) -> JobEntry {
        assert_eq!(read.len(), 1, "{read:?}");
        let entry = read.into_iter().next().unwrap();
        assert_eq!(
            entry.delivery_id.as_deref(),
            Some(delivery.delivery_id.as_str())
        );
        entry
    }

    fn retry_at(http_status: u32, error: &str, next_attempt_at_ms: i64) -> AttemptRecord {
        AttemptRecord::RetryScheduled {
            http_status,
            error: error.to_owned(),
            next_attempt_at_ms,
        }
    }

    /// Records `outcome` for the job of `entry`.
    async fn finish(store: &DeliveryStore, entry: &JobEntry, outcome: &AttemptRecord) {
        let delivery_id = entry.delivery_id.as_deref().unwrap();
        let record = store.status(delivery_id).await.unwrap().unwrap();
        store
            .finish_attempt(&entry.entry_id, &record, outcome)
            .await
            .unwrap();
    }

    /// Enqueue (idempotent), read, attempt, retry, promote, read again, deliver.
    async fn a_job_goes_through_retries_to_delivery(store: &DeliveryStore) {
        let first = delivery(1, "partner-a");
        assert_eq!(
            store.enqueue(&first, None, 1_000).await.unwrap(),
            Enqueued::Queued
        );
        let mut changed = first.clone();
        changed.mdn.body = b"another body".to_vec();
        assert!(
            store.enqueue(&changed, None, 2_000).await.unwrap() == Enqueued::Duplicate,
            "the same id is enqueued once"
        );
        let record = store.status(&first.delivery_id).await.unwrap().unwrap();
        assert_eq!(record.state, DeliveryState::Queued);
        assert_eq!(record.enqueued_at_ms, 1_000);
        assert_eq!(record.url, "http://partner.example/mdn/1");
        let job = store.job(&first.delivery_id).await.unwrap().unwrap();
        assert_eq!(job.mdn, Some(first.mdn.clone()), "the first enqueue's mdn");
        assert_eq!(store.queue_depth().await.unwrap(), (1, 0));

        let read = only_entry(store.read_new("c1", 10, 10).await.unwrap(), &first);
        assert!(
            store.read_new("c1", 10, 10).await.unwrap().is_empty(),
            "a job is read once"
        );
        assert_eq!(store.queue_depth().await.unwrap(), (1, 0), "pending counts");

        store
            .begin_attempt(&first.delivery_id, 1, 3_000)
            .await
            .unwrap();
        let in_flight = store.status(&first.delivery_id).await.unwrap().unwrap();
        assert_eq!(in_flight.state, DeliveryState::InFlight);
        assert_eq!(in_flight.attempts, 1);
        assert_eq!(in_flight.last_attempt_at_ms, 3_000);

        finish(store, &read, &retry_at(503, "HTTP 503", 5_000)).await;
        let scheduled = store.status(&first.delivery_id).await.unwrap().unwrap();
        assert_eq!(scheduled.state, DeliveryState::RetryScheduled);
        assert_eq!(scheduled.last_http_status, 503);
        assert_eq!(scheduled.last_error, "HTTP 503");
        assert_eq!(scheduled.next_attempt_at_ms, 5_000);
        assert_eq!(store.queue_depth().await.unwrap(), (0, 1));
        assert!(store.reclaim("c2", 0, 10).await.unwrap().is_empty());

        assert_eq!(store.promote_due_retries(4_999, 10).await.unwrap(), 0);
        assert_eq!(store.promote_due_retries(5_000, 10).await.unwrap(), 1);
        assert_eq!(store.queue_depth().await.unwrap(), (1, 0));
        let again = only_entry(store.read_new("c1", 10, 10).await.unwrap(), &first);
        assert_ne!(again.entry_id, read.entry_id, "a new entry");

        store
            .begin_attempt(&first.delivery_id, 2, 5_100)
            .await
            .unwrap();
        let delivered = AttemptRecord::Delivered {
            http_status: 200,
            at_ms: 5_200,
        };
        finish(store, &again, &delivered).await;
        let job = store.job(&first.delivery_id).await.unwrap().unwrap();
        assert_eq!(job.record.state, DeliveryState::Delivered);
        assert_eq!(job.record.attempts, 2);
        assert_eq!(job.record.last_http_status, 200);
        assert!(job.record.last_error.is_empty());
        assert_eq!(job.record.delivered_at_ms, 5_200);
        assert_eq!(job.record.next_attempt_at_ms, 0);
        assert!(job.mdn.is_none(), "the mdn is dropped once delivered");
        assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
    }

    /// Unsupported deliveries, failures, discarded and reclaimed entries.
    async fn jobs_fail_are_discarded_and_reclaimed(store: &DeliveryStore) {
        let mailto = delivery(2, "partner-a");
        assert_eq!(
            store
                .enqueue(&mailto, Some("no mailto"), 1_000)
                .await
                .unwrap(),
            Enqueued::Failed("no mailto".to_owned())
        );
        let job = store.job(&mailto.delivery_id).await.unwrap().unwrap();
        assert_eq!(job.record.state, DeliveryState::Failed);
        assert_eq!(job.record.last_error, "no mailto");
        assert!(job.mdn.is_none());
        assert_eq!(store.queue_depth().await.unwrap(), (0, 0), "no job");

        let (held, doomed, discarded) = (
            delivery(3, "partner-a"),
            delivery(4, "partner-a"),
            delivery(5, "partner-a"),
        );
        for new in [&held, &doomed, &discarded] {
            store.enqueue(new, None, 2_000).await.unwrap();
        }
        let read = store.read_new("gone", 10, 10).await.unwrap();
        assert_eq!(read.len(), 3);
        store.discard_entry(&read[2].entry_id).await.unwrap();
        let failed = AttemptRecord::Failed {
            http_status: 500,
            error: "gave up".to_owned(),
        };
        finish(store, &read[1], &failed).await;
        let record = store.job(&doomed.delivery_id).await.unwrap().unwrap();
        assert_eq!(record.record.state, DeliveryState::Failed);
        assert_eq!(record.record.last_http_status, 500);
        assert!(record.mdn.is_none());
        assert_eq!(store.queue_depth().await.unwrap(), (1, 0));

        // Only the entry nobody finished is handed out again.
        let reclaimed = store.reclaim("survivor", 0, 10).await.unwrap();
        assert_eq!(reclaimed, vec![read[0].clone()]);
        store.discard_entry(&reclaimed[0].entry_id).await.unwrap();
        store.discard_entry("12345-0").await.unwrap();
        assert!(store.reclaim("survivor", 0, 10).await.unwrap().is_empty());
        assert_eq!(store.queue_depth().await.unwrap(), (0, 0));
        assert_eq!(state_of(store, &held).await, DeliveryState::Queued);
    }

    async fn list_all(store: &DeliveryStore, filter: &ListFilter, page_size: usize) -> Vec<u32> {
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = store.list(filter, page_size, after, 1_000).await.unwrap();
            assert!(page.len() <= page_size);
            listed.extend(
                page.iter()
                    .map(|record| u32::from_str_radix(&record.delivery_id, 16).unwrap()),
            );
            match next {
                Some(cursor) => after = Some(cursor),
                None => return listed,
            }
        }
    }

    /// Newest first (equal times by id, descending), in pages, with filters.
    async fn deliveries_are_listed_in_pages(store: &DeliveryStore) {
        // Deliveries 1 to 6 at 1001 to 1006 ms, 7 and 8 both at 1006 ms; odd ones
        // belong to partner-b, 6 failed at once.
        for number in 1..=8 {
            let partnership = if number % 2 == 1 {
                "partner-b"
            } else {
                "partner-a"
            };
            let unsupported = (number == 6).then_some("no mailto");
            let at_ms = 1_000 + i64::from(number.min(6));
            store
                .enqueue(&delivery(number, partnership), unsupported, at_ms)
                .await
                .unwrap();
        }
        let everything = ListFilter::default();
        let newest_first = vec![8, 7, 6, 5, 4, 3, 2, 1];
        for page_size in [1, 2, 3, 100] {
            assert_eq!(
                list_all(store, &everything, page_size).await,
                newest_first,
                "pages of {page_size}"
            );
        }
        let partner_b = ListFilter {
            partnership_id: Some("partner-b".to_owned()),
            state: None,
        };
        assert_eq!(list_all(store, &partner_b, 2).await, vec![7, 5, 3, 1]);
        let failed = ListFilter {
            partnership_id: None,
            state: Some(DeliveryState::Failed),
        };
        assert_eq!(list_all(store, &failed, 10).await, vec![6]);

        // A scan limit ends the page early with a cursor to go on from.
        let (page, next) = store.list(&partner_b, 10, None, 3).await.unwrap();
        assert_eq!(page.len(), 1, "8 and 6 are skipped, 7 found");
        let next = next.expect("more to list");
        assert_eq!(next.delivery_id, format!("{:032x}", 6));
        let (rest, _) = store.list(&partner_b, 10, Some(next), 100).await.unwrap();
        assert_eq!(rest.len(), 3);
    }

    #[tokio::test]
    async fn memory_records_expire_a_ttl_after_their_last_change() {
        let store = DeliveryStore::in_memory(namespace(), 60);
        let memory = store.memory().unwrap();
        let (renewed, untouched) = (delivery(1, "partner-a"), delivery(2, "partner-a"));
        store.enqueue(&renewed, None, 1_000).await.unwrap();
        store.enqueue(&untouched, None, 1_001).await.unwrap();

        memory.advance_clock(Duration::from_secs(30));
        store
            .begin_attempt(&renewed.delivery_id, 1, 31_000)
            .await
            .unwrap();
        memory.advance_clock(Duration::from_secs(31));
        assert!(
            store
                .status(&untouched.delivery_id)
                .await
                .unwrap()
                .is_none(),
            "expired 61 s after its enqueue"
        );
        assert!(store.job(&untouched.delivery_id).await.unwrap().is_none());
        assert_eq!(
            state_of(&store, &renewed).await,
            DeliveryState::InFlight,
            "renewed 30 s in"
        );
        assert_eq!(list_all(&store, &ListFilter::default(), 10).await, vec![1]);
        assert!(
            store.enqueue(&untouched, None, 62_000).await.unwrap() == Enqueued::Queued,
            "an expired id can be enqueued anew"
        );

        memory.advance_clock(Duration::from_secs(30));
        assert!(store.status(&renewed.delivery_id).await.unwrap().is_none());
        assert_eq!(list_all(&store, &ListFilter::default(), 10).await, vec![2]);
    }

    #[tokio::test]
    async fn memory_sweeps_expired_records_nobody_asks_for() {
        let store = DeliveryStore::in_memory(namespace(), 1);
        let memory = store.memory().unwrap();
        for number in 1..=3 {
            store
                .enqueue(&delivery(number, "partner-a"), Some("no mailto"), 1_000)
                .await
                .unwrap();
        }
        memory.advance_clock(Duration::from_secs(2));
        store.promote_due_retries(0, 10).await.unwrap();
        assert_eq!(memory.records_held(), 3, "swept at most once a minute");
        memory.advance_clock(memory::SWEEP_INTERVAL);
        store.promote_due_retries(0, 10).await.unwrap();
        assert_eq!(memory.records_held(), 0);
    }

    #[tokio::test]
    async fn memory_reclaims_only_jobs_idle_for_the_timeout() {
        let store = memory_store();
        let memory = store.memory().unwrap();
        store
            .enqueue(&delivery(1, "partner-a"), None, 1_000)
            .await
            .unwrap();
        let read = store.read_new("c1", 10, 10).await.unwrap();
        assert_eq!(read.len(), 1);
        assert!(store.reclaim("c2", 60_000, 10).await.unwrap().is_empty());
        memory.advance_clock(Duration::from_secs(61));
        assert_eq!(store.reclaim("c2", 60_000, 10).await.unwrap(), read);
        assert!(
            store.reclaim("c3", 60_000, 10).await.unwrap().is_empty(),
            "a reclaimed job is idle from then on"
        );
    }

    #[tokio::test]
    async fn a_waiting_memory_read_is_woken_by_enqueue_and_promotion() {
        let store = memory_store();
        assert!(store.read_new("c1", 10, 20).await.unwrap().is_empty());

        // Were the wake-up lost, a read would end empty after a minute.
        let waiting_read = || {
            let store = store.clone();
            let reader = tokio::spawn(async move { store.read_new("c1", 10, 60_000).await });
            async move { reader.await.unwrap().unwrap() }
        };
        let reader = waiting_read();
        tokio::task::yield_now().await;
        let first = delivery(1, "partner-a");
        store.enqueue(&first, None, 1_000).await.unwrap();
        let read = only_entry(reader.await, &first);

        finish(&store, &read, &retry_at(0, "refused", 2_000)).await;
        let reader = waiting_read();
        tokio::task::yield_now().await;
        assert_eq!(store.promote_due_retries(2_000, 10).await.unwrap(), 1);
        only_entry(reader.await, &first);
    }
}
