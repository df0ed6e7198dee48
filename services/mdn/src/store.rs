//! Delivery jobs, their schedule and their status in Redis.
//!
//! Keys (`{prefix}` is the configured key prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:mdn:delivery:{id}` | hash | one delivery: request fields, the MDN (until it is delivered or has failed), state, attempts, last HTTP status and error, times in Unix milliseconds; TTL `status-ttl`, renewed on every change |
//! | `{prefix}:mdn:jobs` | stream | jobs ready to be attempted, one entry `id={delivery id}` each; consumer group `mdn-delivery` shared by all replicas; an entry is acknowledged and deleted when its attempt is recorded |
//! | `{prefix}:mdn:retries` | sorted set | deliveries waiting for their next attempt, scored by its due time (ms); due members are moved back to the stream atomically |
//! | `{prefix}:mdn:deliveries` | sorted set | every delivery by enqueue time (ms), for listing newest first; members older than the TTL are trimmed on enqueue, expired ones when a listing meets them |
//!
//! The stream's pending entries list is what makes a crash harmless: an entry read by
//! a replica that dies stays pending and is claimed by another replica (`XAUTOCLAIM`)
//! once it has been idle for the reclaim timeout.

use std::collections::HashMap;

use as2_common::redis::KeyNamespace;
use as2_rpc::mdn::v1::DeliveryState;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::job::{DeliveryTarget, NewDelivery, PreparedMdn, state_from_name, state_name};

/// Name of the consumer group of the job stream.
pub const CONSUMER_GROUP: &str = "mdn-delivery";

/// Stores a new delivery unless one with its id exists (atomic check and insert).
///
/// KEYS: delivery hash, job stream, index. ARGV: id, ttl seconds, now ms, "1" to queue
/// the job ("0" for a delivery recorded as failed at once), then field/value pairs.
const ENQUEUE_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[4] == '1' then redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]) * 1000)
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
            jobs: namespace.key("mdn:jobs"),
            retries: namespace.key("mdn:retries"),
            index: namespace.key("mdn:deliveries"),
            namespace,
        }
    }

    fn delivery(&self, id: &str) -> String {
        self.namespace.key(format_args!("mdn:delivery:{id}"))
    }
}

/// Jobs, schedule and status of MDN deliveries. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryStore {
    connection: ConnectionManager,
    keys: Keys,
    status_ttl_secs: u64,
    enqueue_script: Script,
    promote_script: Script,
}

impl DeliveryStore {
    /// A store over `connection` in `namespace`; records live `status_ttl_secs`.
    pub fn new(
        connection: ConnectionManager,
        namespace: KeyNamespace,
        status_ttl_secs: u64,
    ) -> Self {
        Self {
            connection,
            keys: Keys::new(namespace),
            status_ttl_secs: status_ttl_secs.max(1),
            enqueue_script: Script::new(ENQUEUE_SCRIPT),
            promote_script: Script::new(PROMOTE_SCRIPT),
        }
    }

    /// Creates the job stream and its consumer group unless they exist. The group
    /// starts at the stream's beginning, so jobs enqueued before it existed are read.
    pub async fn ensure_consumer_group(&self) -> Result<(), StoreError> {
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
    /// `unsupported` names why it cannot be delivered. Returns `false` when a delivery
    /// with this id exists already (nothing is changed then).
    pub async fn enqueue(
        &self,
        delivery: &NewDelivery,
        unsupported: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
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
            .arg(&delivery.delivery_id)
            .arg(self.status_ttl_secs)
            .arg(now_ms)
            .arg(if unsupported.is_some() { "0" } else { "1" })
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
            .arg("state")
            .arg(state_name(state))
            .arg("attempts")
            .arg(0)
            .arg("enqueued_at")
            .arg(now_ms)
            .arg("last_error")
            .arg(unsupported.unwrap_or_default());
        if unsupported.is_none() {
            invocation
                .arg("headers")
                .arg(headers)
                .arg("body")
                .arg(&delivery.mdn.body[..]);
        }
        let mut connection = self.connection.clone();
        let created: i64 = invocation.invoke_async(&mut connection).await?;
        Ok(created == 1)
    }

    /// The status of one delivery; `None` when unknown or expired.
    pub async fn status(&self, delivery_id: &str) -> Result<Option<DeliveryRecord>, StoreError> {
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
    pub async fn job(&self, delivery_id: &str) -> Result<Option<StoredJob>, StoreError> {
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
    /// `connection` should be dedicated to this loop: a blocking read holds up every
    /// other command on its connection.
    pub async fn read_new(
        &self,
        connection: &mut ConnectionManager,
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
            .query_async(connection)
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
    pub async fn reclaim(
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
    pub async fn begin_attempt(
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
    pub async fn finish_attempt(
        &self,
        entry_id: &str,
        delivery_id: &str,
        outcome: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let key = self.keys.delivery(delivery_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
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
    pub async fn discard_entry(&self, entry_id: &str) -> Result<(), StoreError> {
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
    pub async fn promote_due_retries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<usize, StoreError> {
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
    pub async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
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
    pub async fn forget_idle_consumers(&self, idle_ms: u64) -> Result<usize, StoreError> {
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
    pub async fn list(
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
        let text = String::from_utf8_lossy(&value).into_owned();
        let number = || text.parse::<i64>().unwrap_or(0);
        match name.as_ref() {
            "original_message_id" => record.original_message_id = text,
            "partnership_id" => record.partnership_id = text,
            "as2_from" => record.as2_from = text,
            "as2_to" => record.as2_to = text,
            "url" => record.url = text,
            "traceparent" => record.traceparent = text,
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

/// Whether a delivery to `url` can be attempted at all.
pub fn unsupported_reason(target: &DeliveryTarget) -> Option<&'static str> {
    match target {
        DeliveryTarget::Http(_) => None,
        DeliveryTarget::Mailto(_) => {
            Some("mailto: delivery of asynchronous MDNs is not supported (only http and https)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
