//! Duplicate detection on (AS2-From, AS2-To, Message-ID), shared by all edge replicas,
//! and the bookkeeping that lets a resend find an earlier attempt's record in Kafka.
//!
//! Before a document is published, the edge claims its message key in Redis:
//!
//! - nobody has it: the claim succeeds (state `in_flight` with a *lease*: the holder
//!   renews it every third of [`DedupTimes::lease`] for as long as it works on the
//!   message, so a replica that dies lets go within one lease);
//! - a live request holds it: [`Claim::InFlight`] with the time left on its lease (the
//!   edge answers 503 with that Retry-After, the partner resends later);
//! - it was processed before: [`Claim::Done`] with the receipt that was sent then, which
//!   the edge sends again without publishing anything;
//! - the holder's lease ran out: the claim is taken over ([`Claim::Claimed`]), and when the
//!   earlier holder may have published ([`ClaimToken::earlier`]), the new holder must look
//!   for that record in Kafka before publishing.
//!
//! Right before it hands the record to the producer, the holder *arms* the claim
//! ([`DedupStore::arm`]): it writes where the record will land (topic, partition, an
//! offset at or below the one it will get) and until when it can still land (the publish
//! window, longer than the producer's delivery timeout). Arming succeeds only while the
//! holder's lease is valid, in one script, so a holder that lost its lease cannot
//! publish. A record of that attempt can only appear in that partition, after that
//! offset, before the window ends: whoever takes the claim over scans exactly that range
//! and waits for the window to pass before concluding that it is absent (the argument is
//! in docs/architecture.md).
//!
//! After the publish, [`DedupStore::complete`] stores the receipt (state `done`, kept for
//! the retention). When nothing was published for certain, [`DedupStore::release`] drops
//! the claim so that the resend goes through at once; when the record may or may not
//! have been written (a publish timeout), [`DedupStore::abandon`] ends the lease at once
//! and keeps the armed attempt for the resend to look up.
//!
//! Keys are `{prefix}:dedup:{sha256 of from, to and message id}`: a Message-ID can be up to
//! 998 characters of almost anything, so it is hashed rather than embedded. Every script
//! touches that one key (Redis Cluster places it anywhere). Times are Redis's clock
//! (`TIME`), so the replicas' clocks do not matter.
//!
//! ## In memory
//!
//! [`DedupStore::in_memory`] keeps the same records in the process (Redis URL `memory://`,
//! the single-process quick start), with the same answers: every operation runs under one
//! lock, as each Lua script runs alone in Redis. TTLs work as in Redis: a record past its
//! TTL counts as absent when it is next looked at, and expired records are also purged as
//! time passes, so memory holds only the records written within the last claim TTL or
//! retention period, never everything ever received. Each write queues its deadline (one
//! queue per TTL, so each queue is in deadline order) and every operation first drops the
//! records whose deadline has passed, in amortised constant time. Memory use is therefore
//! about (messages per retention period) × (stored receipt size, mostly the MDN); lower
//! the retention to bound it further. Nothing survives the process or is shared with
//! another replica.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use as2_common::redis::KeyNamespace;
use as2_common::redis::RedisConnection;
use serde::{Deserialize, Serialize};

/// The identity of a received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageKey<'a> {
    /// The partner's AS2 ID.
    pub as2_from: &'a str,
    /// Our AS2 ID.
    pub as2_to: &'a str,
    /// The Message-ID header as received.
    pub message_id: &'a str,
}

impl MessageKey<'_> {
    /// Hex SHA-256 over the three parts; angle brackets and surrounding whitespace of the
    /// Message-ID do not count, so `<a@b>` and `a@b` are the same message.
    pub fn digest(&self) -> String {
        let message_id = self.message_id.trim();
        let message_id = message_id
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix('>'))
            .unwrap_or(message_id);
        let mut material =
            Vec::with_capacity(self.as2_from.len() + self.as2_to.len() + message_id.len() + 2);
        for (index, part) in [self.as2_from, self.as2_to, message_id]
            .into_iter()
            .enumerate()
        {
            if index > 0 {
                material.push(0);
            }
            material.extend_from_slice(part.as_bytes());
        }
        as2_store::keys::hex(&openssl::sha::sha256(&material))
    }
}

/// The answer sent for a message, kept so that a resend gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReceipt {
    /// HTTP status of the response.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body (the sync MDN, or empty for an async request).
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// An asynchronous MDN that could not be handed to the MDN service yet; a resend of
    /// the message hands it over (and publishes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_async_mdn: Option<PendingAsyncMdn>,
}

/// An asynchronous MDN waiting to be handed to the MDN service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAsyncMdn {
    /// Where the partner wants it (Receipt-Delivery-Option).
    pub url: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// The outcome of [`DedupStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This request owns the message now; pass the token to `arm`, then `complete`,
    /// `release` or `abandon`.
    Claimed(ClaimToken),
    /// A live request is processing the same message; its lease runs for `retry_after`
    /// more (it renews it while it works).
    InFlight {
        /// The time left on the holder's lease, at least a millisecond.
        retry_after: Duration,
    },
    /// The message was processed before; this is what was answered then.
    Done(StoredReceipt),
}

/// Where an attempt's record goes: written into the claim before the record is handed to
/// the producer ([`DedupStore::arm`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAttempt {
    /// The topic.
    pub topic: String,
    /// The partition the record is written to (chosen by the edge, not by librdkafka).
    pub partition: i32,
    /// An offset at or below the one the record gets: a search starts there.
    pub scan_from: i64,
    /// The object-store key of the document the record references, if any: deleted by
    /// whoever proves the record absent.
    pub object: Option<String>,
}

/// An attempt of an earlier holder whose lease ran out after it armed the claim: its
/// record may be in Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EarlierAttempt {
    /// Where its record would be.
    pub attempt: PublishAttempt,
    /// How long after the takeover its record could still land: until then a search that
    /// finds nothing proves nothing.
    pub window_left: Duration,
}

/// Proof of a claim. While it lives, a background task renews the lease; dropping it
/// stops the renewals (the lease then runs out by itself).
#[derive(Debug)]
pub struct ClaimToken {
    key: String,
    token: String,
    earlier: Option<EarlierAttempt>,
    /// The object an earlier holder noted and never armed: nothing references it.
    stale_object: Option<String>,
    /// The object this holder noted ([`DedupStore::note_object`]).
    noted: Option<Box<PendingObject>>,
    lost: Arc<AtomicBool>,
    renewals: Option<tokio::task::AbortHandle>,
}

impl ClaimToken {
    /// The earlier holder's armed attempt, when this claim was taken over from a holder
    /// that may have published; `None` once [`earlier_absent`](Self::earlier_absent) was
    /// called.
    pub fn earlier(&self) -> Option<&EarlierAttempt> {
        self.earlier.as_ref()
    }

    /// The object of an earlier holder that noted it ([`DedupStore::note_object`]) and
    /// never armed: it never published, so no record references the object and the new
    /// holder deletes it. Taken once.
    pub fn take_stale_object(&mut self) -> Option<String> {
        self.stale_object.take()
    }

    /// The object this holder noted, if any.
    pub fn noted_object(&self) -> Option<&str> {
        self.noted.as_ref().map(|noted| noted.object.as_str())
    }

    /// Records that the earlier attempt's record was searched for after its window and
    /// is not in Kafka: from now on this claim can be released like a fresh one.
    pub fn earlier_absent(&mut self) {
        self.earlier = None;
    }

    /// Stops renewing the lease, as a stalled process would: it runs out within one
    /// lease unless the claim ends first.
    pub fn stop_renewing(&mut self) {
        if let Some(renewals) = self.renewals.take() {
            renewals.abort();
        }
    }

    /// Whether a renewal found the lease gone (taken over by another request): the
    /// holder must not publish.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for ClaimToken {
    fn drop(&mut self) {
        if let Some(renewals) = &self.renewals {
            renewals.abort();
        }
    }
}

/// A document object that an attempt is about to make visible in the store, registered
/// before it does ([`DedupStore::note_object`]) and forgotten once the attempt ended
/// cleanly: what is still registered after a while belongs to an attempt that died, and
/// the orphan sweep (`crate::orphans`) decides from the message's claim whether a record
/// references it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingObject {
    /// The message's AS2-From.
    #[serde(rename = "f")]
    pub as2_from: String,
    /// Its AS2-To.
    #[serde(rename = "t")]
    pub as2_to: String,
    /// Its Message-ID as received.
    #[serde(rename = "m")]
    pub message_id: String,
    /// The object's key in the document store.
    #[serde(rename = "o")]
    pub object: String,
}

impl PendingObject {
    /// The entry of `object`, a document of `message`.
    pub fn new(message: &MessageKey<'_>, object: &str) -> Self {
        Self {
            as2_from: message.as2_from.to_owned(),
            as2_to: message.as2_to.to_owned(),
            message_id: message.message_id.to_owned(),
            object: object.to_owned(),
        }
    }

    /// The message it belongs to.
    pub fn message(&self) -> MessageKey<'_> {
        MessageKey {
            as2_from: &self.as2_from,
            as2_to: &self.as2_to,
            message_id: &self.message_id,
        }
    }

    /// The registry member: the same JSON for the same fields.
    fn member(&self) -> Result<String, DedupError> {
        Ok(serde_json::to_string(self)?)
    }
}

/// What a message's claim says, read without changing it ([`DedupStore::inspect`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inspection {
    /// No record: never claimed, released, past its retention, or lost by Redis.
    Absent,
    /// Processed: its record references `object` (`None`: an inline document).
    Done {
        /// The object the published record references.
        object: Option<String>,
    },
    /// Claimed, by a live holder or by one whose lease ran out.
    InFlight,
}

/// Why the dedup store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// Redis is unreachable or failed the command.
    #[error("redis unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored receipt does not decode (written by an incompatible version).
    #[error("stored receipt does not decode: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A script answered something this version does not know.
    #[error("unexpected dedup record: {0}")]
    Unexpected(&'static str),
}

/// The durations of the claim protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupTimes {
    /// How long a claim stays held without a renewal; the holder renews every third of it.
    pub lease: Duration,
    /// How long after arming a record can still land: longer than the producer's
    /// delivery timeout (`message.timeout.ms`) plus the time from arming to producing.
    pub publish_window: Duration,
    /// How long a receipt (and an armed claim) is kept: the window in which a resend is
    /// recognised.
    pub retention: Duration,
}

impl DedupTimes {
    /// How long an unarmed claim's record lives (ten leases; the renewals keep it): past
    /// that nothing of it matters, since it never published.
    fn claim_ttl(&self) -> Duration {
        self.lease.saturating_mul(10)
    }
}

// Scripts. Each touches one key; `now` is Redis's clock in milliseconds. Fields of an
// `in_flight` record: token, lease_until, noted (the object the holder is about to make
// visible, until it arms), and once armed topic, partition, scan_from, object,
// publish_until. A `done` record: receipt, and object (what the record references). A
// record with a noted object or an armed attempt is kept for the retention, so that an
// object it names is never forgotten while it may exist. A record an older version wrote
// has no lease_until: it is held until its TTL ends, as that version expected.
const NOW: &str = "local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
";

const CLAIM_SCRIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'receipt')}
end
if state == 'in_flight' then
  local lease_until = tonumber(redis.call('HGET', KEYS[1], 'lease_until'))
  if not lease_until then
    return {'in_flight', math.max(1, redis.call('PTTL', KEYS[1]))}
  end
  if now < lease_until then
    return {'in_flight', lease_until - now}
  end
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
  local noted = redis.call('HGET', KEYS[1], 'noted')
  local armed = redis.call('HMGET', KEYS[1], 'topic', 'partition', 'scan_from', 'object', 'publish_until')
  if armed[1] then
    return {'taken_over', armed[1], armed[2], armed[3], armed[4] or '', math.max(0, tonumber(armed[5]) - now), noted or ''}
  end
  if not noted then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return {'claimed', noted or ''}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'claimed'}
";

/// Checks that ARGV[1] holds the claim; ends the script with 0 otherwise.
const HELD: &str = "if redis.call('HGET', KEYS[1], 'state') ~= 'in_flight' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
";

const RENEW_SCRIPT: &str = r"
local lease_until = now + tonumber(ARGV[2])
if lease_until > (tonumber(redis.call('HGET', KEYS[1], 'lease_until')) or 0) then
  redis.call('HSET', KEYS[1], 'lease_until', lease_until)
end
if redis.call('HEXISTS', KEYS[1], 'topic') == 0 and redis.call('HEXISTS', KEYS[1], 'noted') == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
";

const NOTE_SCRIPT: &str = r"
if now >= (tonumber(redis.call('HGET', KEYS[1], 'lease_until')) or 0) then
  return 0
end
redis.call('HSET', KEYS[1], 'noted', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

const ARM_SCRIPT: &str = r"
if now >= (tonumber(redis.call('HGET', KEYS[1], 'lease_until')) or 0) then
  return 0
end
redis.call('HSET', KEYS[1], 'topic', ARGV[3], 'partition', ARGV[4], 'scan_from', ARGV[5], 'object', ARGV[6], 'publish_until', now + tonumber(ARGV[2]))
redis.call('HDEL', KEYS[1], 'noted')
redis.call('PEXPIRE', KEYS[1], ARGV[7])
return 1
";

const ABANDON_SCRIPT: &str = r"
redis.call('HSET', KEYS[1], 'lease_until', now)
return 1
";

const COMPLETE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done', 'receipt', ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'object', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE_SCRIPT: &str = r"
return redis.call('DEL', KEYS[1])
";

/// Claims and receipts in Redis or in the process's memory.
#[derive(Clone)]
pub struct DedupStore {
    namespace: KeyNamespace,
    times: DedupTimes,
    backend: Backend,
}

/// Where a [`DedupStore`] keeps its records.
#[derive(Clone)]
enum Backend {
    Redis {
        connection: RedisConnection,
        scripts: Arc<Scripts>,
    },
    Memory(Arc<Mutex<MemoryRecords>>),
}

struct Scripts {
    claim: redis::Script,
    renew: redis::Script,
    arm: redis::Script,
    note: redis::Script,
    abandon: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let held = |body: &str| redis::Script::new(&format!("{HELD}{NOW}{body}"));
        Self {
            claim: redis::Script::new(&format!("{NOW}{CLAIM_SCRIPT}")),
            renew: held(RENEW_SCRIPT),
            arm: held(ARM_SCRIPT),
            note: held(NOTE_SCRIPT),
            abandon: held(ABANDON_SCRIPT),
            complete: redis::Script::new(COMPLETE_SCRIPT),
            release: held(RELEASE_SCRIPT),
        }
    }
}

impl DedupStore {
    /// A store over `connection` with the durations of `times`.
    pub fn new(connection: RedisConnection, namespace: KeyNamespace, times: DedupTimes) -> Self {
        Self {
            namespace,
            times,
            backend: Backend::Redis {
                connection,
                scripts: Arc::new(Scripts::new()),
            },
        }
    }

    /// An empty store in this process's memory (see the module docs), for the Redis URL
    /// `memory://`, with the durations of `times` as with [`new`](Self::new). Clones share
    /// the records.
    pub fn in_memory(namespace: KeyNamespace, times: DedupTimes) -> Self {
        Self {
            namespace,
            times,
            backend: Backend::Memory(Arc::new(Mutex::new(MemoryRecords::default()))),
        }
    }

    /// A short name of the backend for logs: `redis` or `memory`.
    pub fn backend_kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis { .. } => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    /// The durations in force.
    pub fn times(&self) -> DedupTimes {
        self.times
    }

    /// Claims `message` for this request, or says who has it. A successful claim starts
    /// renewing its lease in the background (needs a Tokio runtime).
    pub async fn claim(&self, message: &MessageKey<'_>) -> Result<Claim, DedupError> {
        let key = self.key(message);
        let token = as2_store::keys::hex(&random_token());
        let found = match &self.backend {
            Backend::Memory(records) => {
                lock(records).claim(&key, &token, &self.times, Instant::now())
            }
            Backend::Redis {
                connection,
                scripts,
            } => {
                let reply: Vec<redis::Value> = scripts
                    .claim
                    .key(&key)
                    .arg(&token)
                    .arg(millis(self.times.lease))
                    .arg(millis(self.times.claim_ttl()))
                    .invoke_async(&mut connection.clone())
                    .await?;
                decode_claim(&reply)?
            }
        };
        Ok(match found {
            Found::Claimed(earlier, stale_object) => {
                let mut claim = self.held(key, token, earlier);
                claim.stale_object = stale_object;
                Claim::Claimed(claim)
            }
            Found::InFlight(retry_after) => Claim::InFlight { retry_after },
            Found::Done(receipt) => Claim::Done(receipt),
        })
    }

    /// A claim token that renews its lease until dropped.
    fn held(&self, key: String, token: String, earlier: Option<EarlierAttempt>) -> ClaimToken {
        let lost = Arc::new(AtomicBool::new(false));
        let renewals = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let store = self.clone();
            let (key, token, lost) = (key.clone(), token.clone(), Arc::clone(&lost));
            runtime
                .spawn(async move { store.keep_renewing(&key, &token, &lost).await })
                .abort_handle()
        });
        ClaimToken {
            key,
            token,
            earlier,
            stale_object: None,
            noted: None,
            lost,
            renewals,
        }
    }

    async fn keep_renewing(&self, key: &str, token: &str, lost: &AtomicBool) {
        let period = (self.times.lease / 3).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(period).await;
            match self.renew(key, token).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("the dedup lease was taken over; this request will not publish");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                // The lease may still be valid; arming checks it in the store anyway.
                Err(error) => tracing::warn!(%error, "could not renew the dedup lease"),
            }
        }
    }

    async fn renew(&self, key: &str, token: &str) -> Result<bool, DedupError> {
        match &self.backend {
            Backend::Memory(records) => {
                Ok(lock(records).renew(key, token, &self.times, Instant::now()))
            }
            Backend::Redis {
                connection,
                scripts,
            } => {
                let renewed: i64 = scripts
                    .renew
                    .key(key)
                    .arg(token)
                    .arg(millis(self.times.lease))
                    .arg(millis(self.times.claim_ttl()))
                    .invoke_async(&mut connection.clone())
                    .await?;
                Ok(renewed == 1)
            }
        }
    }

    /// Writes `attempt` into the claim and opens its publish window; `false` when this
    /// request no longer holds a valid lease (then it must not publish). Call it right
    /// before handing the record to the producer.
    pub async fn arm(
        &self,
        claim: &ClaimToken,
        attempt: &PublishAttempt,
    ) -> Result<bool, DedupError> {
        if claim.lost() {
            return Ok(false);
        }
        match &self.backend {
            Backend::Memory(records) => Ok(lock(records).arm(
                &claim.key,
                &claim.token,
                attempt,
                &self.times,
                Instant::now(),
            )),
            Backend::Redis {
                connection,
                scripts,
            } => {
                let armed: i64 = scripts
                    .arm
                    .key(&claim.key)
                    .arg(&claim.token)
                    .arg(millis(self.times.publish_window))
                    .arg(&attempt.topic)
                    .arg(attempt.partition)
                    .arg(attempt.scan_from)
                    .arg(attempt.object.as_deref().unwrap_or_default())
                    .arg(millis(self.times.retention))
                    .invoke_async(&mut connection.clone())
                    .await?;
                Ok(armed == 1)
            }
        }
    }

    /// Notes `object`, the document this holder is about to make visible in the store,
    /// before it does: in the registry of pending objects (for the orphan sweep), then in
    /// the claim (for whoever takes the claim over). `false` when this request no longer
    /// holds a valid lease: it must not complete the upload. Once the claim ends,
    /// [`complete`](Self::complete) and [`release`](Self::release) forget the object
    /// again; [`abandon`](Self::abandon) and a crash leave it to the sweep.
    pub async fn note_object(
        &self,
        claim: &mut ClaimToken,
        message: &MessageKey<'_>,
        object: &str,
    ) -> Result<bool, DedupError> {
        if claim.lost() {
            return Ok(false);
        }
        let pending = PendingObject::new(message, object);
        let member = pending.member()?;
        // This machine's clock: replicas' clocks only shift when the sweep first looks at
        // the entry; what it then does depends on the claim, on Redis's clock.
        let registered = as2_common::clock::unix_millis();
        let noted = match &self.backend {
            Backend::Memory(records) => {
                let mut records = lock(records);
                records.pending.insert(member, registered);
                records.note(
                    &claim.key,
                    &claim.token,
                    object,
                    &self.times,
                    Instant::now(),
                )
            }
            Backend::Redis {
                connection,
                scripts,
            } => {
                let mut connection = connection.clone();
                let _: i64 = redis::cmd("ZADD")
                    .arg(self.pending_key())
                    .arg(registered)
                    .arg(&member)
                    .query_async(&mut connection)
                    .await?;
                let noted: i64 = scripts
                    .note
                    .key(&claim.key)
                    .arg(&claim.token)
                    .arg(object)
                    .arg(millis(self.times.retention))
                    .invoke_async(&mut connection)
                    .await?;
                noted == 1
            }
        };
        if noted {
            claim.noted = Some(Box::new(pending));
        }
        Ok(noted)
    }

    /// The pending objects registered at least `age` ago, oldest first, at most `limit`.
    pub async fn pending_objects(
        &self,
        age: Duration,
        limit: usize,
    ) -> Result<Vec<PendingObject>, DedupError> {
        let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let before = as2_common::clock::unix_millis().saturating_sub(age);
        let members: Vec<String> = match &self.backend {
            Backend::Memory(records) => {
                let records = lock(records);
                let mut due: Vec<(i64, &String)> = records
                    .pending
                    .iter()
                    .filter(|(_, registered)| **registered <= before)
                    .map(|(member, registered)| (*registered, member))
                    .collect();
                due.sort();
                due.into_iter()
                    .take(limit)
                    .map(|(_, member)| member.clone())
                    .collect()
            }
            Backend::Redis { connection, .. } => {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.pending_key())
                    .arg("-inf")
                    .arg(before)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut connection.clone())
                    .await?
            }
        };
        let mut pending = Vec::with_capacity(members.len());
        for member in members {
            match serde_json::from_str::<PendingObject>(&member) {
                Ok(object) => pending.push(object),
                Err(error) => {
                    // Not ours to judge: drop the entry, the object goes with its day.
                    tracing::warn!(%error, "an unreadable pending-object entry is dropped");
                    self.forget_member(&member).await?;
                }
            }
        }
        Ok(pending)
    }

    /// Removes the registry entry of `object`, an object of `message` that was deleted
    /// (best effort: an entry left behind is settled by the sweep).
    pub async fn forget_object(
        &self,
        message: &MessageKey<'_>,
        object: &str,
    ) -> Result<(), DedupError> {
        self.forget_pending(&PendingObject::new(message, object))
            .await
    }

    /// Removes `pending` from the registry.
    pub async fn forget_pending(&self, pending: &PendingObject) -> Result<(), DedupError> {
        self.forget_member(&pending.member()?).await
    }

    async fn forget_member(&self, member: &str) -> Result<(), DedupError> {
        match &self.backend {
            Backend::Memory(records) => {
                lock(records).pending.remove(member);
            }
            Backend::Redis { connection, .. } => {
                let _: i64 = redis::cmd("ZREM")
                    .arg(self.pending_key())
                    .arg(member)
                    .query_async(&mut connection.clone())
                    .await?;
            }
        }
        Ok(())
    }

    /// What the claim of `message` says, without changing it.
    pub async fn inspect(&self, message: &MessageKey<'_>) -> Result<Inspection, DedupError> {
        let key = self.key(message);
        let connection = match &self.backend {
            Backend::Memory(records) => {
                let mut records = lock(records);
                let now = Instant::now();
                records.purge_expired(now);
                return Ok(
                    match records.live_mut(&key, now).map(|record| &record.state) {
                        None => Inspection::Absent,
                        Some(MemoryState::InFlight(_)) => Inspection::InFlight,
                        Some(MemoryState::Done(_, object)) => Inspection::Done {
                            object: object.clone(),
                        },
                    },
                );
            }
            Backend::Redis { connection, .. } => connection,
        };
        let (state, object): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("state")
            .arg("object")
            .query_async(&mut connection.clone())
            .await?;
        Ok(match state.as_deref() {
            None => Inspection::Absent,
            Some("done") => Inspection::Done {
                object: object.filter(|object| !object.is_empty()),
            },
            Some("in_flight") => Inspection::InFlight,
            Some(_) => return Err(DedupError::Unexpected("unknown claim state")),
        })
    }

    fn pending_key(&self) -> String {
        self.namespace.key("dedup:pending-objects")
    }

    /// Records that the claimed message was published and what was answered. The
    /// published record references the earlier attempt's object when the claim was
    /// taken over from an attempt whose record was found, else the object this holder
    /// noted.
    pub async fn complete(
        &self,
        claim: ClaimToken,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        let object = match &claim.earlier {
            Some(earlier) => earlier.attempt.object.clone(),
            None => claim.noted.as_ref().map(|noted| noted.object.clone()),
        };
        self.write_receipt(&claim.key, receipt, object.as_deref())
            .await?;
        if let Some(noted) = &claim.noted {
            self.forget_pending(noted).await?;
        }
        Ok(())
    }

    /// Replaces the receipt stored for a message that was published before.
    pub async fn update_receipt(
        &self,
        message: &MessageKey<'_>,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        let key = self.key(message);
        let object = match self.inspect(message).await? {
            Inspection::Done { object } => object,
            Inspection::Absent | Inspection::InFlight => None,
        };
        self.write_receipt(&key, receipt, object.as_deref()).await
    }

    fn key(&self, message: &MessageKey<'_>) -> String {
        self.namespace
            .key(format_args!("dedup:{}", message.digest()))
    }

    async fn write_receipt(
        &self,
        key: &str,
        receipt: &StoredReceipt,
        object: Option<&str>,
    ) -> Result<(), DedupError> {
        let (connection, scripts) = match &self.backend {
            Backend::Redis {
                connection,
                scripts,
            } => (connection, scripts),
            Backend::Memory(records) => {
                lock(records).store_receipt(
                    key,
                    receipt.clone(),
                    object.map(str::to_owned),
                    self.times.retention,
                    Instant::now(),
                );
                return Ok(());
            }
        };
        let encoded = serde_json::to_vec(receipt)?;
        let _: i64 = scripts
            .complete
            .key(key)
            .arg(encoded)
            .arg(millis(self.times.retention))
            .arg(object.unwrap_or_default())
            .invoke_async(&mut connection.clone())
            .await?;
        Ok(())
    }

    /// Drops a claim whose message was certainly not published (by this request, nor by
    /// an earlier one: a claim taken over from an armed attempt that was not proven
    /// absent is [abandoned](Self::abandon) instead), if this request still holds it.
    /// The object this holder noted must be deleted first: the claim then forgets it.
    pub async fn release(&self, claim: ClaimToken) -> Result<(), DedupError> {
        if claim.earlier.is_some() {
            return self.abandon(claim).await;
        }
        let noted = claim.noted.clone();
        self.end(claim, Ending::Release).await?;
        if let Some(noted) = &noted {
            self.forget_pending(noted).await?;
        }
        Ok(())
    }

    /// Ends this request's lease at once, keeping what the claim says about where a record
    /// may be: for a publish whose outcome is unknown (a timeout). A resend takes the claim
    /// over and searches before publishing.
    pub async fn abandon(&self, claim: ClaimToken) -> Result<(), DedupError> {
        self.end(claim, Ending::Abandon).await
    }

    async fn end(&self, claim: ClaimToken, ending: Ending) -> Result<(), DedupError> {
        let (connection, scripts) = match &self.backend {
            Backend::Redis {
                connection,
                scripts,
            } => (connection, scripts),
            Backend::Memory(records) => {
                lock(records).end(&claim.key, &claim.token, ending, Instant::now());
                return Ok(());
            }
        };
        let script = match ending {
            Ending::Release => &scripts.release,
            Ending::Abandon => &scripts.abandon,
        };
        let _: i64 = script
            .key(&claim.key)
            .arg(&claim.token)
            .invoke_async(&mut connection.clone())
            .await?;
        Ok(())
    }
}

/// How a claim ends without a receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Nothing was published: the record goes.
    Release,
    /// Something may have been published: the lease ends, the armed attempt stays.
    Abandon,
}

/// What a claim found, from either backend.
#[derive(Debug, PartialEq)]
enum Found {
    /// Claimed, with the armed attempt of an earlier holder and the object an earlier
    /// holder noted without arming.
    Claimed(Option<EarlierAttempt>, Option<String>),
    InFlight(Duration),
    Done(StoredReceipt),
}

/// Decodes the claim script's reply.
fn decode_claim(reply: &[redis::Value]) -> Result<Found, DedupError> {
    let text = |index: usize| -> Option<String> {
        match reply.get(index)? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            redis::Value::SimpleString(text) => Some(text.clone()),
            redis::Value::Int(number) => Some(number.to_string()),
            _ => None,
        }
    };
    let number = |index: usize| -> Result<i64, DedupError> {
        text(index)
            .and_then(|text| text.parse::<f64>().ok())
            .filter(|number| number.is_finite())
            // Scripts compute with Lua numbers; whole milliseconds and offsets fit.
            .map(|number| number as i64)
            .ok_or(DedupError::Unexpected("a number is missing"))
    };
    let duration = |index: usize| {
        number(index).map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    };
    match text(0).as_deref() {
        Some("claimed") => Ok(Found::Claimed(
            None,
            text(1).filter(|object| !object.is_empty()),
        )),
        Some("in_flight") => Ok(Found::InFlight(duration(1)?.max(Duration::from_millis(1)))),
        Some("done") => {
            let receipt = match reply.get(1) {
                Some(redis::Value::BulkString(bytes)) => bytes.as_slice(),
                _ => return Err(DedupError::Unexpected("a receipt is missing")),
            };
            Ok(Found::Done(serde_json::from_slice(receipt)?))
        }
        Some("taken_over") => {
            let topic = text(1).ok_or(DedupError::Unexpected("the topic is missing"))?;
            let partition = i32::try_from(number(2)?)
                .map_err(|_| DedupError::Unexpected("the partition is out of range"))?;
            let object = text(4).filter(|object| !object.is_empty());
            let earlier = EarlierAttempt {
                attempt: PublishAttempt {
                    topic,
                    partition,
                    scan_from: number(3)?,
                    object,
                },
                window_left: duration(5)?,
            };
            Ok(Found::Claimed(
                Some(earlier),
                text(6).filter(|object| !object.is_empty()),
            ))
        }
        _ => Err(DedupError::Unexpected("unknown claim state")),
    }
}

/// The in-memory records: what the Redis keys hold, with their deadlines.
#[derive(Default)]
struct MemoryRecords {
    records: HashMap<String, MemoryRecord>,
    /// Deadlines of claims as they were written, hence in deadline order.
    claim_deadlines: VecDeque<(Instant, String)>,
    /// Deadlines of receipts and armed claims as they were written, hence in deadline
    /// order.
    retention_deadlines: VecDeque<(Instant, String)>,
    /// The registry of pending objects: member to registration time (milliseconds since
    /// the epoch).
    pending: HashMap<String, i64>,
}

/// One message's record; it counts as absent from `expires_at` on, like a Redis key past
/// its TTL.
struct MemoryRecord {
    state: MemoryState,
    expires_at: Instant,
}

enum MemoryState {
    InFlight(MemoryClaim),
    /// The receipt, and the object the published record references.
    Done(StoredReceipt, Option<String>),
}

struct MemoryClaim {
    token: String,
    lease_until: Instant,
    noted: Option<String>,
    armed: Option<(PublishAttempt, Instant)>,
}

impl MemoryRecords {
    /// [`CLAIM_SCRIPT`].
    fn claim(&mut self, key: &str, token: &str, times: &DedupTimes, now: Instant) -> Found {
        self.purge_expired(now);
        let lease_until = deadline(now, times.lease);
        match self.live_mut(key, now).map(|record| &mut record.state) {
            Some(MemoryState::Done(receipt, _)) => return Found::Done(receipt.clone()),
            Some(MemoryState::InFlight(claim)) if now < claim.lease_until => {
                return Found::InFlight(claim.lease_until - now);
            }
            Some(MemoryState::InFlight(claim)) => {
                claim.token = token.to_owned();
                claim.lease_until = lease_until;
                let noted = claim.noted.clone();
                if let Some((attempt, publish_until)) = &claim.armed {
                    let earlier = EarlierAttempt {
                        attempt: attempt.clone(),
                        window_left: publish_until.saturating_duration_since(now),
                    };
                    return Found::Claimed(Some(earlier), noted);
                }
                if noted.is_some() {
                    return Found::Claimed(None, noted);
                }
            }
            None => {}
        }
        let claim = MemoryClaim {
            token: token.to_owned(),
            lease_until,
            noted: None,
            armed: None,
        };
        self.write(
            key,
            MemoryState::InFlight(claim),
            times.claim_ttl(),
            now,
            false,
        );
        Found::Claimed(None, None)
    }

    /// The claim under `key` while `token` holds it.
    fn held(&mut self, key: &str, token: &str, now: Instant) -> Option<&mut MemoryClaim> {
        self.purge_expired(now);
        match self.live_mut(key, now).map(|record| &mut record.state) {
            Some(MemoryState::InFlight(claim)) if claim.token == token => Some(claim),
            _ => None,
        }
    }

    /// [`RENEW_SCRIPT`].
    fn renew(&mut self, key: &str, token: &str, times: &DedupTimes, now: Instant) -> bool {
        let Some(claim) = self.held(key, token, now) else {
            return false;
        };
        claim.lease_until = claim.lease_until.max(deadline(now, times.lease));
        if claim.armed.is_none()
            && claim.noted.is_none()
            && let Some(record) = self.records.remove(key)
        {
            self.write(key, record.state, times.claim_ttl(), now, false);
        }
        true
    }

    /// [`ARM_SCRIPT`].
    fn arm(
        &mut self,
        key: &str,
        token: &str,
        attempt: &PublishAttempt,
        times: &DedupTimes,
        now: Instant,
    ) -> bool {
        self.change_leased(key, token, times, now, |claim| {
            claim.armed = Some((attempt.clone(), deadline(now, times.publish_window)));
            claim.noted = None;
        })
    }

    /// [`NOTE_SCRIPT`].
    fn note(
        &mut self,
        key: &str,
        token: &str,
        object: &str,
        times: &DedupTimes,
        now: Instant,
    ) -> bool {
        self.change_leased(key, token, times, now, |claim| {
            claim.noted = Some(object.to_owned());
        })
    }

    /// Applies `change` to the claim under `key` while `token` holds it with a valid
    /// lease, and keeps the record for the retention from now on; `false` otherwise.
    fn change_leased(
        &mut self,
        key: &str,
        token: &str,
        times: &DedupTimes,
        now: Instant,
        change: impl FnOnce(&mut MemoryClaim),
    ) -> bool {
        let Some(claim) = self.held(key, token, now) else {
            return false;
        };
        if now >= claim.lease_until {
            return false;
        }
        change(claim);
        if let Some(record) = self.records.remove(key) {
            self.write(key, record.state, times.retention, now, true);
        }
        true
    }

    /// [`RELEASE_SCRIPT`] and [`ABANDON_SCRIPT`].
    fn end(&mut self, key: &str, token: &str, ending: Ending, now: Instant) {
        let Some(claim) = self.held(key, token, now) else {
            return;
        };
        match ending {
            Ending::Abandon => claim.lease_until = now,
            Ending::Release => {
                self.records.remove(key);
            }
        }
    }

    /// [`COMPLETE_SCRIPT`]: whatever was there, the receipt is stored with a fresh TTL.
    fn store_receipt(
        &mut self,
        key: &str,
        receipt: StoredReceipt,
        object: Option<String>,
        ttl: Duration,
        now: Instant,
    ) {
        self.purge_expired(now);
        self.write(key, MemoryState::Done(receipt, object), ttl, now, true);
    }

    /// The record under `key` unless it has expired.
    fn live_mut(&mut self, key: &str, now: Instant) -> Option<&mut MemoryRecord> {
        self.records
            .get_mut(key)
            .filter(|record| record.expires_at > now)
    }

    /// Writes `state` with `ttl`; `retained` says which deadline queue the TTL belongs to
    /// (each queue holds one TTL, hence stays in deadline order).
    fn write(
        &mut self,
        key: &str,
        state: MemoryState,
        ttl: Duration,
        now: Instant,
        retained: bool,
    ) {
        let expires_at = deadline(now, ttl);
        let deadlines = if retained {
            &mut self.retention_deadlines
        } else {
            &mut self.claim_deadlines
        };
        deadlines.push_back((expires_at, key.to_owned()));
        self.records
            .insert(key.to_owned(), MemoryRecord { state, expires_at });
    }

    /// Drops every record whose deadline has passed. A queued deadline whose record was
    /// rewritten since (a later deadline) or released leaves the record alone.
    fn purge_expired(&mut self, now: Instant) {
        for deadlines in [&mut self.claim_deadlines, &mut self.retention_deadlines] {
            while let Some((expires_at, _)) = deadlines.front()
                && *expires_at <= now
            {
                let Some((_, key)) = deadlines.pop_front() else {
                    break;
                };
                if self
                    .records
                    .get(&key)
                    .is_some_and(|record| record.expires_at <= now)
                {
                    self.records.remove(&key);
                }
            }
        }
    }
}

/// The longest TTL the in-memory store applies (about ten years): a later deadline could
/// overflow [`Instant`] and would not outlive the process anyway.
const MAX_MEMORY_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When a record written at `now` with `ttl` expires; at least a millisecond later, as
/// with [`millis`] for Redis.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now + ttl.clamp(Duration::from_millis(1), MAX_MEMORY_TTL)
}

/// The in-memory store's lock. The operations under it do not panic between their
/// changes, so a poisoned lock is still consistent.
fn lock(records: &Mutex<MemoryRecords>) -> MutexGuard<'_, MemoryRecords> {
    records.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn random_token() -> [u8; 16] {
    let mut token = [0_u8; 16];
    // The token only tells concurrent claims apart; should the system RNG fail, a
    // timestamp-based token is still unique enough for that.
    if openssl::rand::rand_bytes(&mut token).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        token = nanos.to_le_bytes();
    }
    token
}

mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(message_id: &'a str) -> MessageKey<'a> {
        MessageKey {
            as2_from: "partner",
            as2_to: "us",
            message_id,
        }
    }

    #[test]
    fn angle_brackets_do_not_change_the_identity() {
        assert_eq!(key("<a@b>").digest(), key("a@b").digest());
        assert_eq!(key(" <a@b> ").digest(), key("a@b").digest());
        assert_ne!(key("a@b").digest(), key("a@c").digest());
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        let first = MessageKey {
            as2_from: "ab",
            as2_to: "c",
            message_id: "m",
        };
        let second = MessageKey {
            as2_from: "a",
            as2_to: "bc",
            message_id: "m",
        };
        assert_ne!(first.digest(), second.digest());
    }

    fn stored(status: u16) -> StoredReceipt {
        StoredReceipt {
            status,
            headers: Vec::new(),
            body: b"mdn".to_vec(),
            pending_async_mdn: None,
        }
    }

    const TIMES: DedupTimes = DedupTimes {
        lease: Duration::from_secs(5),
        publish_window: Duration::from_secs(12),
        retention: Duration::from_secs(3_600),
    };

    fn attempt() -> PublishAttempt {
        PublishAttempt {
            topic: "t".to_owned(),
            partition: 2,
            scan_from: 40,
            object: Some("documents/x".to_owned()),
        }
    }

    /// Claims the message `k` with `token` at `now`.
    fn claim_k(records: &mut MemoryRecords, token: &str, now: Instant) -> Found {
        records.claim("k", token, &TIMES, now)
    }

    #[test]
    fn a_memory_lease_runs_out_unless_renewed() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(
            claim_k(&mut records, "first", start),
            Found::Claimed(None, None)
        );
        let just_before = start + TIMES.lease - Duration::from_millis(1);
        assert_eq!(
            claim_k(&mut records, "second", just_before),
            Found::InFlight(Duration::from_millis(1))
        );
        // A renewal pushes the lease on.
        assert!(records.renew("k", "first", &TIMES, just_before));
        assert!(matches!(
            claim_k(&mut records, "second", start + TIMES.lease),
            Found::InFlight(_)
        ));
        // Unrenewed, it runs out and the claim is taken over; the old token holds nothing.
        let expired = just_before + TIMES.lease;
        assert_eq!(
            claim_k(&mut records, "third", expired),
            Found::Claimed(None, None)
        );
        assert!(!records.renew("k", "first", &TIMES, expired));
        assert!(!records.arm("k", "first", &attempt(), &TIMES, expired));
        records.end("k", "first", Ending::Release, expired);
        assert!(matches!(
            claim_k(&mut records, "fourth", expired),
            Found::InFlight(_)
        ));
        records.end("k", "third", Ending::Release, expired);
        assert_eq!(
            claim_k(&mut records, "fifth", expired),
            Found::Claimed(None, None)
        );
    }

    #[test]
    fn a_taken_over_armed_claim_tells_where_to_look_and_how_long_to_wait() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(
            claim_k(&mut records, "first", start),
            Found::Claimed(None, None)
        );
        assert!(records.arm("k", "first", &attempt(), &TIMES, start));
        // The holder dies: after its lease the resend takes over and learns the attempt.
        let later = start + TIMES.lease;
        assert_eq!(
            claim_k(&mut records, "second", later),
            Found::Claimed(
                Some(EarlierAttempt {
                    attempt: attempt(),
                    window_left: TIMES.publish_window - TIMES.lease,
                }),
                None
            )
        );
        // An abandoned claim is free at once, and still carries the attempt.
        records.end("k", "second", Ending::Abandon, later);
        assert!(matches!(
            claim_k(&mut records, "third", later),
            Found::Claimed(Some(_), None)
        ));
        // The armed record outlives ten leases (an unarmed one would not).
        let much_later = start + TIMES.lease * 20;
        assert!(matches!(
            claim_k(&mut records, "fourth", much_later),
            Found::Claimed(Some(EarlierAttempt { window_left, .. }), None) if window_left.is_zero()
        ));
    }

    #[test]
    fn arming_needs_a_valid_lease() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(
            claim_k(&mut records, "first", start),
            Found::Claimed(None, None)
        );
        // Nobody took it over, but the lease ran out: a holder that stalled cannot arm.
        assert!(!records.arm("k", "first", &attempt(), &TIMES, start + TIMES.lease));
    }

    #[test]
    fn an_unarmed_memory_claim_is_forgotten_after_ten_leases() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(
            claim_k(&mut records, "first", start),
            Found::Claimed(None, None)
        );
        records.claim("probe", "t", &TIMES, start + TIMES.claim_ttl());
        assert_eq!(records.records.len(), 1);
    }

    #[test]
    fn a_memory_receipt_is_kept_for_the_retention_then_forgotten() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(
            claim_k(&mut records, "token", start),
            Found::Claimed(None, None)
        );
        records.store_receipt("k", stored(200), None, TIMES.retention, start);
        let later = start + TIMES.claim_ttl() * 2;
        assert_eq!(
            claim_k(&mut records, "other", later),
            Found::Done(stored(200))
        );
        // A late release of the old token does not drop the receipt.
        records.end("k", "token", Ending::Release, later);
        let retention_end = start + TIMES.retention;
        assert_eq!(
            claim_k(
                &mut records,
                "other",
                retention_end - Duration::from_millis(1)
            ),
            Found::Done(stored(200))
        );
        assert_eq!(
            claim_k(&mut records, "new", retention_end),
            Found::Claimed(None, None)
        );
    }

    #[test]
    fn an_updated_memory_receipt_gets_a_fresh_retention() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        records.store_receipt("k", stored(200), None, TIMES.retention, start);
        let updated_at = start + TIMES.retention / 2;
        records.store_receipt("k", stored(202), None, TIMES.retention, updated_at);
        let after_first_deadline = start + TIMES.retention + Duration::from_secs(1);
        assert_eq!(
            claim_k(&mut records, "t", after_first_deadline),
            Found::Done(stored(202))
        );
        assert_eq!(
            claim_k(&mut records, "t", updated_at + TIMES.retention),
            Found::Claimed(None, None)
        );
    }

    #[test]
    fn expired_memory_records_are_purged_without_being_looked_at() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        for index in 0..1_000 {
            let key = format!("message {index}");
            let at = start + Duration::from_millis(index);
            assert_eq!(
                records.claim(&key, "t", &TIMES, at),
                Found::Claimed(None, None)
            );
            if index % 2 == 0 {
                records.store_receipt(&key, stored(200), None, TIMES.retention, at);
            }
        }
        assert_eq!(records.records.len(), 1_000);

        // One operation on another key after the claim TTL drops every abandoned claim;
        // the receipts stay.
        let after_claims = start + Duration::from_millis(1_000) + TIMES.claim_ttl();
        records.claim("probe", "t", &TIMES, after_claims);
        assert_eq!(records.records.len(), 500 + 1);
        assert_eq!(records.claim_deadlines.len(), 1);

        // After the retention nothing of the old messages is left, queued deadlines
        // included.
        let after_receipts = start + Duration::from_millis(1_000) + TIMES.retention;
        records.end("probe", "t", Ending::Release, after_receipts);
        assert!(records.records.is_empty(), "{}", records.records.len());
        assert!(records.claim_deadlines.is_empty());
        assert!(records.retention_deadlines.is_empty());
    }

    #[tokio::test]
    async fn the_in_memory_store_answers_like_the_scripts() {
        let store = DedupStore::in_memory(KeyNamespace::new("unit").unwrap(), TIMES);
        let Claim::Claimed(token) = store.claim(&key("<m@p>")).await.unwrap() else {
            panic!("the first claim wins");
        };
        assert_eq!(token.key, format!("unit:dedup:{}", key("m@p").digest()));
        assert!(token.earlier().is_none());
        assert!(matches!(
            store.claim(&key("m@p")).await.unwrap(),
            Claim::InFlight { .. }
        ));
        assert!(store.arm(&token, &attempt()).await.unwrap());
        store.complete(token, &stored(200)).await.unwrap();
        assert!(matches!(
            store.claim(&key("m@p")).await.unwrap(),
            Claim::Done(receipt) if receipt == stored(200)
        ));
    }

    #[tokio::test]
    async fn releasing_a_claim_whose_earlier_attempt_is_unproven_keeps_the_attempt() {
        let times = DedupTimes {
            lease: Duration::from_millis(30),
            ..TIMES
        };
        let store = DedupStore::in_memory(KeyNamespace::new("unit").unwrap(), times);
        let Claim::Claimed(first) = store.claim(&key("m")).await.unwrap() else {
            panic!("the first claim wins");
        };
        assert!(store.arm(&first, &attempt()).await.unwrap());
        store.abandon(first).await.unwrap();
        let Claim::Claimed(second) = store.claim(&key("m")).await.unwrap() else {
            panic!("an abandoned claim is free");
        };
        assert_eq!(
            second.earlier().map(|earlier| &earlier.attempt),
            Some(&attempt())
        );
        // Released before the search: the attempt must stay for the next resend.
        store.release(second).await.unwrap();
        let Claim::Claimed(mut third) = store.claim(&key("m")).await.unwrap() else {
            panic!("released");
        };
        assert!(third.earlier().is_some());
        third.earlier_absent();
        store.release(third).await.unwrap();
        let Claim::Claimed(fourth) = store.claim(&key("m")).await.unwrap() else {
            panic!("released");
        };
        assert!(fourth.earlier().is_none());
    }

    #[tokio::test]
    async fn a_held_claim_is_renewed_in_the_background() {
        // Long enough that a busy test machine still renews in time (every 100 ms).
        let times = DedupTimes {
            lease: Duration::from_millis(300),
            ..TIMES
        };
        let store = DedupStore::in_memory(KeyNamespace::new("unit").unwrap(), times);
        let Claim::Claimed(token) = store.claim(&key("m")).await.unwrap() else {
            panic!("the first claim wins");
        };
        tokio::time::sleep(times.lease * 4).await;
        assert!(matches!(
            store.claim(&key("m")).await.unwrap(),
            Claim::InFlight { .. }
        ));
        assert!(store.arm(&token, &attempt()).await.unwrap());
        // Dropped (the request died): the lease runs out and the resend takes over.
        drop(token);
        tokio::time::sleep(times.lease * 2).await;
        assert!(matches!(
            store.claim(&key("m")).await.unwrap(),
            Claim::Claimed(token) if token.earlier().is_some()
        ));
    }

    #[test]
    fn claim_replies_decode() {
        use redis::Value::{BulkString, Int};
        let text = |text: &str| BulkString(text.as_bytes().to_vec());
        assert_eq!(
            decode_claim(&[text("claimed")]).unwrap(),
            Found::Claimed(None, None)
        );
        assert_eq!(
            decode_claim(&[text("in_flight"), Int(1500)]).unwrap(),
            Found::InFlight(Duration::from_millis(1500))
        );
        assert_eq!(
            decode_claim(&[
                text("taken_over"),
                text("t"),
                text("2"),
                text("40"),
                text("documents/x"),
                Int(7000)
            ])
            .unwrap(),
            Found::Claimed(
                Some(EarlierAttempt {
                    attempt: attempt(),
                    window_left: Duration::from_secs(7),
                }),
                None
            )
        );
        // An object noted by a holder that never armed comes back with the claim.
        assert_eq!(
            decode_claim(&[text("claimed"), text("documents/y")]).unwrap(),
            Found::Claimed(None, Some("documents/y".to_owned()))
        );
        assert_eq!(
            decode_claim(&[
                text("taken_over"),
                text("t"),
                text("2"),
                text("40"),
                text("documents/x"),
                Int(7000),
                text("documents/z")
            ])
            .unwrap(),
            Found::Claimed(
                Some(EarlierAttempt {
                    attempt: attempt(),
                    window_left: Duration::from_secs(7),
                }),
                Some("documents/z".to_owned())
            )
        );
        assert!(decode_claim(&[text("what")]).is_err());
    }

    #[test]
    fn receipts_round_trip_through_json() {
        let receipt = StoredReceipt {
            status: 200,
            headers: vec![("Content-Type".into(), "multipart/signed".into())],
            body: vec![0, 1, 2, 255],
            pending_async_mdn: None,
        };
        let encoded = serde_json::to_vec(&receipt).unwrap();
        assert_eq!(
            serde_json::from_slice::<StoredReceipt>(&encoded).unwrap(),
            receipt
        );
    }
}
