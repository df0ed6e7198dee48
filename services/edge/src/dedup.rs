//! Duplicate detection on (AS2-From, AS2-To, Message-ID), shared by all edge replicas.
//!
//! Before a document is published, the edge claims its message key in Redis:
//!
//! - nobody has it: the claim succeeds (state `in_flight`, with a short TTL so that a
//!   replica dying mid-request does not block the message forever);
//! - another request holds it: [`Claim::InFlight`] (the edge answers 503 with Retry-After,
//!   the partner resends later);
//! - it was processed before: [`Claim::Done`] with the receipt that was sent then, which
//!   the edge sends again without publishing anything.
//!
//! After the publish, [`DedupStore::complete`] stores the receipt (state `done`, long TTL).
//! When the publish fails, [`DedupStore::release`] drops the claim so that the resend can
//! go through at once.
//!
//! Keys are `{prefix}:dedup:{sha256 of from, to and message id}`: a Message-ID can be up to
//! 998 characters of almost anything, so it is hashed rather than embedded.
//!
//! ## In memory
//!
//! [`DedupStore::in_memory`] keeps the same records in the process (Redis URL `memory://`,
//! the single-process quick start), with the same answers: every operation runs under one
//! lock, as each Lua script runs alone in Redis. TTLs work as in Redis: a record past its
//! TTL counts as absent when it is next looked at, and expired records are also purged as
//! time passes, so memory holds only the records written within the last in-flight TTL or
//! retention period, never everything ever received. Each write queues its deadline (one
//! queue per TTL, so each queue is in deadline order) and every operation first drops the
//! records whose deadline has passed, in amortised constant time. Memory use is therefore
//! about (messages per retention period) × (stored receipt size, mostly the MDN); lower
//! the retention to bound it further. Nothing survives the process or is shared with
//! another replica.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use as2_common::redis::KeyNamespace;
use redis::aio::ConnectionManager;
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
    fn digest(&self) -> String {
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
    /// This request owns the message now; pass the token to `complete` or `release`.
    Claimed(ClaimToken),
    /// Another request is processing the same message.
    InFlight,
    /// The message was processed before; this is what was answered then.
    Done(StoredReceipt),
}

/// Proof of a claim.
#[derive(Debug)]
pub struct ClaimToken {
    key: String,
    token: String,
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
}

const CLAIM_SCRIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'state', 'in_flight', 'token', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'claimed'}
end
if state == 'done' then
  return {'done', redis.call('HGET', KEYS[1], 'receipt')}
end
return {'in_flight'}
";

const COMPLETE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'done', 'receipt', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'state') == 'in_flight' and redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Claims and receipts in Redis or in the process's memory.
#[derive(Clone)]
pub struct DedupStore {
    namespace: KeyNamespace,
    in_flight_ttl: Duration,
    done_ttl: Duration,
    backend: Backend,
}

/// Where a [`DedupStore`] keeps its records.
#[derive(Clone)]
enum Backend {
    Redis {
        connection: ConnectionManager,
        claim_script: redis::Script,
        complete_script: redis::Script,
        release_script: redis::Script,
    },
    Memory(Arc<Mutex<MemoryRecords>>),
}

impl DedupStore {
    /// A store over `connection`; claims expire after `in_flight_ttl`, receipts after
    /// `done_ttl`.
    pub fn new(
        connection: ConnectionManager,
        namespace: KeyNamespace,
        in_flight_ttl: Duration,
        done_ttl: Duration,
    ) -> Self {
        Self {
            namespace,
            in_flight_ttl,
            done_ttl,
            backend: Backend::Redis {
                connection,
                claim_script: redis::Script::new(CLAIM_SCRIPT),
                complete_script: redis::Script::new(COMPLETE_SCRIPT),
                release_script: redis::Script::new(RELEASE_SCRIPT),
            },
        }
    }

    /// An empty store in this process's memory (see the module docs), for the Redis URL
    /// `memory://`; claims expire after `in_flight_ttl`, receipts after `done_ttl`, as
    /// with [`new`](Self::new). Clones share the records.
    pub fn in_memory(namespace: KeyNamespace, in_flight_ttl: Duration, done_ttl: Duration) -> Self {
        Self {
            namespace,
            in_flight_ttl,
            done_ttl,
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

    /// Claims `message` for this request, or says who has it.
    pub async fn claim(&self, message: &MessageKey<'_>) -> Result<Claim, DedupError> {
        let key = self.key(message);
        let token = as2_store::keys::hex(&random_token());
        let (connection, claim_script) = match &self.backend {
            Backend::Redis {
                connection,
                claim_script,
                ..
            } => (connection, claim_script),
            Backend::Memory(records) => {
                let claim = lock(records).claim(&key, &token, self.in_flight_ttl, Instant::now());
                return Ok(match claim {
                    MemoryClaim::Claimed => Claim::Claimed(ClaimToken { key, token }),
                    MemoryClaim::InFlight => Claim::InFlight,
                    MemoryClaim::Done(receipt) => Claim::Done(receipt),
                });
            }
        };
        let reply: Vec<Vec<u8>> = claim_script
            .key(&key)
            .arg(&token)
            .arg(millis(self.in_flight_ttl))
            .invoke_async(&mut connection.clone())
            .await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"claimed") => Ok(Claim::Claimed(ClaimToken { key, token })),
            Some(b"done") => {
                let receipt = reply.get(1).map(Vec::as_slice).unwrap_or_default();
                Ok(Claim::Done(serde_json::from_slice(receipt)?))
            }
            _ => Ok(Claim::InFlight),
        }
    }

    /// Records that the claimed message was published and what was answered.
    pub async fn complete(
        &self,
        claim: ClaimToken,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        self.store_receipt(&claim.key, receipt).await
    }

    /// Replaces the receipt stored for a message that was published before.
    pub async fn update_receipt(
        &self,
        message: &MessageKey<'_>,
        receipt: &StoredReceipt,
    ) -> Result<(), DedupError> {
        self.store_receipt(&self.key(message), receipt).await
    }

    fn key(&self, message: &MessageKey<'_>) -> String {
        self.namespace
            .key(format_args!("dedup:{}", message.digest()))
    }

    async fn store_receipt(&self, key: &str, receipt: &StoredReceipt) -> Result<(), DedupError> {
        let (connection, complete_script) = match &self.backend {
            Backend::Redis {
                connection,
                complete_script,
                ..
            } => (connection, complete_script),
            Backend::Memory(records) => {
                lock(records).store_receipt(key, receipt.clone(), self.done_ttl, Instant::now());
                return Ok(());
            }
        };
        let encoded = serde_json::to_vec(receipt)?;
        let _: i64 = complete_script
            .key(key)
            .arg(encoded)
            .arg(millis(self.done_ttl))
            .invoke_async(&mut connection.clone())
            .await?;
        Ok(())
    }

    /// Drops a claim whose message was not published, if this request still holds it.
    pub async fn release(&self, claim: ClaimToken) -> Result<(), DedupError> {
        let (connection, release_script) = match &self.backend {
            Backend::Redis {
                connection,
                release_script,
                ..
            } => (connection, release_script),
            Backend::Memory(records) => {
                lock(records).release(&claim.key, &claim.token, Instant::now());
                return Ok(());
            }
        };
        let _: i64 = release_script
            .key(&claim.key)
            .arg(&claim.token)
            .invoke_async(&mut connection.clone())
            .await?;
        Ok(())
    }
}

/// The in-memory records: what the Redis keys hold, with their deadlines.
#[derive(Default)]
struct MemoryRecords {
    records: HashMap<String, MemoryRecord>,
    /// Deadlines of in-flight claims as they were written, hence in deadline order.
    in_flight_deadlines: VecDeque<(Instant, String)>,
    /// Deadlines of receipts as they were written, hence in deadline order.
    done_deadlines: VecDeque<(Instant, String)>,
}

/// One message's record; it counts as absent from `expires_at` on, like a Redis key past
/// its TTL.
struct MemoryRecord {
    state: MemoryState,
    expires_at: Instant,
}

enum MemoryState {
    InFlight { token: String },
    Done(StoredReceipt),
}

/// What [`MemoryRecords::claim`] found.
#[derive(Debug, PartialEq)]
enum MemoryClaim {
    Claimed,
    InFlight,
    Done(StoredReceipt),
}

impl MemoryRecords {
    /// [`CLAIM_SCRIPT`].
    fn claim(&mut self, key: &str, token: &str, ttl: Duration, now: Instant) -> MemoryClaim {
        self.purge_expired(now);
        match self.live(key, now).map(|record| &record.state) {
            Some(MemoryState::Done(receipt)) => MemoryClaim::Done(receipt.clone()),
            Some(MemoryState::InFlight { .. }) => MemoryClaim::InFlight,
            None => {
                let state = MemoryState::InFlight {
                    token: token.to_owned(),
                };
                self.write(key, state, ttl, now);
                MemoryClaim::Claimed
            }
        }
    }

    /// [`COMPLETE_SCRIPT`]: whatever was there, the receipt is stored with a fresh TTL.
    fn store_receipt(&mut self, key: &str, receipt: StoredReceipt, ttl: Duration, now: Instant) {
        self.purge_expired(now);
        self.write(key, MemoryState::Done(receipt), ttl, now);
    }

    /// [`RELEASE_SCRIPT`]: drops the record only while it is this token's claim.
    fn release(&mut self, key: &str, token: &str, now: Instant) {
        self.purge_expired(now);
        let held = matches!(
            self.live(key, now).map(|record| &record.state),
            Some(MemoryState::InFlight { token: holder }) if holder == token
        );
        if held {
            self.records.remove(key);
        }
    }

    /// The record under `key` unless it has expired.
    fn live(&self, key: &str, now: Instant) -> Option<&MemoryRecord> {
        self.records
            .get(key)
            .filter(|record| record.expires_at > now)
    }

    fn write(&mut self, key: &str, state: MemoryState, ttl: Duration, now: Instant) {
        let expires_at = deadline(now, ttl);
        let deadlines = match state {
            MemoryState::InFlight { .. } => &mut self.in_flight_deadlines,
            MemoryState::Done(_) => &mut self.done_deadlines,
        };
        deadlines.push_back((expires_at, key.to_owned()));
        self.records
            .insert(key.to_owned(), MemoryRecord { state, expires_at });
    }

    /// Drops every record whose deadline has passed. A queued deadline whose record was
    /// rewritten since (a later deadline) or released leaves the record alone.
    fn purge_expired(&mut self, now: Instant) {
        for deadlines in [&mut self.in_flight_deadlines, &mut self.done_deadlines] {
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

    const IN_FLIGHT_TTL: Duration = Duration::from_secs(120);
    const DONE_TTL: Duration = Duration::from_secs(3_600);

    /// Claims the message `k` with `token` at `now`.
    fn claim_k(records: &mut MemoryRecords, token: &str, now: Instant) -> MemoryClaim {
        records.claim("k", token, IN_FLIGHT_TTL, now)
    }

    #[test]
    fn an_abandoned_memory_claim_expires_after_its_ttl() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(claim_k(&mut records, "first", start), MemoryClaim::Claimed);
        let just_before = start + IN_FLIGHT_TTL - Duration::from_millis(1);
        assert_eq!(
            claim_k(&mut records, "second", just_before),
            MemoryClaim::InFlight
        );
        let at_expiry = start + IN_FLIGHT_TTL;
        assert_eq!(
            claim_k(&mut records, "third", at_expiry),
            MemoryClaim::Claimed
        );
        // The expired claim's token no longer releases anything: the third one holds it.
        records.release("k", "first", at_expiry);
        assert_eq!(
            claim_k(&mut records, "fourth", at_expiry),
            MemoryClaim::InFlight
        );
        records.release("k", "third", at_expiry);
        assert_eq!(
            claim_k(&mut records, "fifth", at_expiry),
            MemoryClaim::Claimed
        );
    }

    #[test]
    fn a_memory_receipt_is_kept_for_the_retention_then_forgotten() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        assert_eq!(claim_k(&mut records, "token", start), MemoryClaim::Claimed);
        records.store_receipt("k", stored(200), DONE_TTL, start);
        // Past the in-flight TTL the receipt is still there: completing resets the TTL.
        let later = start + IN_FLIGHT_TTL * 2;
        assert_eq!(
            claim_k(&mut records, "other", later),
            MemoryClaim::Done(stored(200))
        );
        // A late release of the old token does not drop the receipt.
        records.release("k", "token", later);
        let retention_end = start + DONE_TTL;
        assert_eq!(
            claim_k(
                &mut records,
                "other",
                retention_end - Duration::from_millis(1)
            ),
            MemoryClaim::Done(stored(200))
        );
        assert_eq!(
            claim_k(&mut records, "new", retention_end),
            MemoryClaim::Claimed
        );
    }

    #[test]
    fn an_updated_memory_receipt_gets_a_fresh_retention() {
        let mut records = MemoryRecords::default();
        let start = Instant::now();
        records.store_receipt("k", stored(200), DONE_TTL, start);
        let updated_at = start + DONE_TTL / 2;
        records.store_receipt("k", stored(202), DONE_TTL, updated_at);
        // The first write's deadline passes: its queued deadline must not purge the
        // rewritten record.
        let after_first_deadline = start + DONE_TTL + Duration::from_secs(1);
        assert_eq!(
            claim_k(&mut records, "t", after_first_deadline),
            MemoryClaim::Done(stored(202))
        );
        assert_eq!(
            claim_k(&mut records, "t", updated_at + DONE_TTL),
            MemoryClaim::Claimed
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
                records.claim(&key, "t", IN_FLIGHT_TTL, at),
                MemoryClaim::Claimed
            );
            if index % 2 == 0 {
                records.store_receipt(&key, stored(200), DONE_TTL, at);
            }
        }
        assert_eq!(records.records.len(), 1_000);

        // One operation on another key after the in-flight TTL drops every abandoned
        // claim; the receipts stay.
        let after_claims = start + Duration::from_millis(1_000) + IN_FLIGHT_TTL;
        records.claim("probe", "t", IN_FLIGHT_TTL, after_claims);
        assert_eq!(records.records.len(), 500 + 1);
        assert_eq!(records.in_flight_deadlines.len(), 1);

        // After the retention nothing of the old messages is left, queued deadlines
        // included.
        let after_receipts = start + Duration::from_millis(1_000) + DONE_TTL;
        records.release("probe", "t", after_receipts);
        assert!(records.records.is_empty(), "{}", records.records.len());
        assert!(records.in_flight_deadlines.is_empty());
        assert!(records.done_deadlines.is_empty());
    }

    #[tokio::test]
    async fn the_in_memory_store_answers_like_the_scripts() {
        let store =
            DedupStore::in_memory(KeyNamespace::new("unit").unwrap(), IN_FLIGHT_TTL, DONE_TTL);
        let Claim::Claimed(token) = store.claim(&key("<m@p>")).await.unwrap() else {
            panic!("the first claim wins");
        };
        assert_eq!(token.key, format!("unit:dedup:{}", key("m@p").digest()));
        assert!(matches!(
            store.claim(&key("m@p")).await.unwrap(),
            Claim::InFlight
        ));
        store.complete(token, &stored(200)).await.unwrap();
        assert!(matches!(
            store.claim(&key("m@p")).await.unwrap(),
            Claim::Done(receipt) if receipt == stored(200)
        ));
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
