//! Outbound message records in Redis.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{prefix}:{sender}:message:{id}` | hash | one outbound message: ids, source record, state, attempts, expected MIC, the outcome and the partner's MDN, and where its receipt was published (`receipt_partition`, `receipt_scan_from`, `receipt_until`, `receipt_published`); TTL = record TTL |
//! | `{prefix}:{sender}:awaiting-mdn` | sorted set | ids of messages awaiting an asynchronous MDN, score = deadline (Unix ms) |
//! | `{prefix}:{sender}:receipt-outbox` | sorted set | ids whose outcome is recorded but whose receipt is not yet acknowledged by Kafka, score = time of the outcome (Unix ms) |
//! | `{prefix}:{sender}:epoch` | hash | `id`, `recovered`, `created_at`: created whenever Redis holds none, so a new id tells the sender Redis lost its state ([`crate::recovery`]) |
//! | `{prefix}:{sender}:recovery-lock` | string | the replica running the recovery of an epoch; TTL |
//!
//! `{id}` is 32 hex digits of SHA-256 over the Message-ID without angle brackets. Every
//! state change is one Lua script, so the consumer, the reconciliation API and the
//! sweeper of any replica never overwrite each other's outcome: a message leaves
//! `sending` or `awaiting-mdn` once, and the outcome enters the outbox in the same step.
//!
//! `{sender}` is a Redis Cluster hash tag: the scripts move a message between the
//! deadline index and the outbox, so every key of the sender is in one slot. Versions
//! before it wrote the same keys as `{prefix}:sender:...`; [`layout_migration`] moves
//! them at start-up.

use std::collections::HashMap;

use as2_common::redis::layout::{LayoutMigration, Precedence};
use as2_common::redis::{KeyGroup, KeyNamespace, RedisConnection};
use openssl::sha::sha256;
use redis::{AsyncCommands as _, Script};

use crate::message::RecordSource;

/// Where an outbound message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    /// Being sent (possibly between retries).
    Sending,
    /// Accepted by the partner; its asynchronous MDN has not arrived yet.
    AwaitingMdn,
    /// Delivered: a processed MDN with a matching MIC, or a 2xx when no MDN was asked.
    Delivered,
    /// Failed for good.
    Failed,
    /// Redis lost the message's state after it was taken from the topic: whether the
    /// partner has it is not known (see `recovery`). Final: a late MDN does not change it.
    Unknown,
}

impl MessageState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::AwaitingMdn => "awaiting-mdn",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            Self::Sending,
            Self::AwaitingMdn,
            Self::Delivered,
            Self::Failed,
            Self::Unknown,
        ]
        .into_iter()
        .find(|state| state.as_str() == value)
    }

    /// Whether the message has its outcome.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Unknown)
    }
}

/// A stored outbound message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRecord {
    /// The Message-ID as sent, with angle brackets.
    pub message_id: String,
    /// The partnership.
    pub partnership_id: String,
    /// Our AS2 id.
    pub as2_from: String,
    /// The partner's AS2 id.
    pub as2_to: String,
    /// Outbound topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// The filename, if any.
    pub filename: String,
    /// `sending`, `awaiting-mdn`, `delivered`, `failed` or `unknown`.
    pub state: String,
    /// Sends so far.
    pub attempts: u32,
    /// `none`, `sync` or `async`.
    pub mdn_mode: String,
    /// The MIC the MDN must return (`base64, algorithm`); empty before the first send.
    pub expected_mic: String,
    /// Whether the message was signed.
    pub signed: bool,
    /// Whether a signed MDN was requested.
    pub signed_mdn_requested: bool,
    /// HTTP status of the last send; 0 without a response.
    pub http_status: u32,
    /// The Disposition of the partner's MDN.
    pub disposition: String,
    /// The Received-Content-MIC of the partner's MDN.
    pub received_mic: String,
    /// Whether the MIC was compared and matched.
    pub mic_verified: bool,
    /// Why the message failed, or the last send failed.
    pub reason: String,
    /// Why the last MDN that arrived for it was refused (awaiting messages only).
    pub last_rejected_mdn: String,
    /// The partner's MDN: its HTTP headers.
    pub mdn_headers: Vec<(String, String)>,
    /// The partner's MDN: its body, exactly as received.
    pub mdn_body: Vec<u8>,
    /// When the record was created (Unix ms).
    pub created_at_ms: i64,
    /// When the outcome was recorded (Unix ms).
    pub finished_at_ms: i64,
    /// Deadline of the asynchronous MDN (Unix ms).
    pub mdn_deadline_ms: i64,
    /// W3C traceparent of the record.
    pub traceparent: String,
    /// The URL of the message's archive entry (the keys of its objects without their
    /// extension); empty when it is not archived.
    pub archive_location: String,
}

impl MessageRecord {
    /// The state, `None` when the stored value is unknown.
    pub fn state(&self) -> Option<MessageState> {
        MessageState::parse(&self.state)
    }

    fn from_hash(mut fields: HashMap<String, Vec<u8>>) -> Option<Self> {
        let mut text = |name: &str| {
            fields
                .remove(name)
                .map(|value| String::from_utf8_lossy(&value).into_owned())
                .unwrap_or_default()
        };
        let message_id = text("message_id");
        if message_id.is_empty() {
            return None;
        }
        let mut record = Self {
            message_id,
            partnership_id: text("partnership_id"),
            as2_from: text("as2_from"),
            as2_to: text("as2_to"),
            topic: text("topic"),
            partition: text("partition").parse().unwrap_or_default(),
            offset: text("offset").parse().unwrap_or_default(),
            filename: text("filename"),
            state: text("state"),
            attempts: text("attempts").parse().unwrap_or_default(),
            mdn_mode: text("mdn_mode"),
            expected_mic: text("expected_mic"),
            signed: text("signed") == "1",
            signed_mdn_requested: text("signed_mdn_requested") == "1",
            http_status: text("http_status").parse().unwrap_or_default(),
            disposition: text("disposition"),
            received_mic: text("received_mic"),
            mic_verified: text("mic_verified") == "1",
            reason: text("reason"),
            last_rejected_mdn: text("last_rejected_mdn"),
            mdn_headers: serde_json::from_str(&text("mdn_headers")).unwrap_or_default(),
            mdn_body: Vec::new(),
            created_at_ms: text("created_at").parse().unwrap_or_default(),
            finished_at_ms: text("finished_at").parse().unwrap_or_default(),
            mdn_deadline_ms: text("mdn_deadline").parse().unwrap_or_default(),
            traceparent: text("traceparent"),
            archive_location: text("archive_location"),
        };
        record.mdn_body = fields.remove("mdn_body").unwrap_or_default();
        Some(record)
    }
}

impl MessageRecord {
    /// The record as a hash's fields (the inverse of reading it).
    fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let text = |value: &str| value.as_bytes().to_vec();
        let number = |value: i64| value.to_string().into_bytes();
        let flag = |value: bool| if value { b"1".to_vec() } else { b"0".to_vec() };
        vec![
            ("message_id", text(&self.message_id)),
            ("partnership_id", text(&self.partnership_id)),
            ("as2_from", text(&self.as2_from)),
            ("as2_to", text(&self.as2_to)),
            ("topic", text(&self.topic)),
            ("partition", number(i64::from(self.partition))),
            ("offset", number(self.offset)),
            ("filename", text(&self.filename)),
            ("state", text(&self.state)),
            ("attempts", number(i64::from(self.attempts))),
            ("mdn_mode", text(&self.mdn_mode)),
            ("expected_mic", text(&self.expected_mic)),
            ("signed", flag(self.signed)),
            ("signed_mdn_requested", flag(self.signed_mdn_requested)),
            ("http_status", number(i64::from(self.http_status))),
            ("disposition", text(&self.disposition)),
            ("received_mic", text(&self.received_mic)),
            ("mic_verified", flag(self.mic_verified)),
            ("reason", text(&self.reason)),
            ("last_rejected_mdn", text(&self.last_rejected_mdn)),
            (
                "mdn_headers",
                serde_json::to_vec(&self.mdn_headers).unwrap_or_default(),
            ),
            ("mdn_body", self.mdn_body.clone()),
            ("created_at", number(self.created_at_ms)),
            ("finished_at", number(self.finished_at_ms)),
            ("mdn_deadline", number(self.mdn_deadline_ms)),
            ("traceparent", text(&self.traceparent)),
            ("archive_location", text(&self.archive_location)),
        ]
    }

    /// Takes in what a send established.
    pub fn apply_facts(&mut self, facts: &SendFacts<'_>) {
        self.as2_from = facts.as2_from.to_owned();
        self.as2_to = facts.as2_to.to_owned();
        self.mdn_mode = facts.mdn_mode.to_owned();
        self.expected_mic.clone_from(&facts.expected_mic);
        self.signed = facts.signed;
        self.signed_mdn_requested = facts.signed_mdn_requested;
        self.archive_location = facts.archive_location.to_owned();
    }

    /// Takes in an outcome, as [`MessageStore::finish`] records it.
    pub fn apply_outcome(&mut self, outcome: &Outcome, now_ms: i64) {
        self.state = if outcome.delivered {
            MessageState::Delivered
        } else {
            MessageState::Failed
        }
        .as_str()
        .to_owned();
        self.finished_at_ms = now_ms;
        self.http_status = outcome.http_status;
        self.disposition.clone_from(&outcome.disposition);
        self.received_mic.clone_from(&outcome.received_mic);
        self.mic_verified = outcome.mic_verified;
        self.reason.clone_from(&outcome.reason);
        self.mdn_headers.clone_from(&outcome.mdn_headers);
        self.mdn_body.clone_from(&outcome.mdn_body);
    }
}

/// A message's first record: what is known before anything is sent.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    /// The Message-ID, with angle brackets.
    pub message_id: &'a str,
    /// The partnership.
    pub partnership_id: &'a str,
    /// Where the record came from.
    pub source: &'a RecordSource,
    /// The filename, if any.
    pub filename: Option<&'a str>,
    /// W3C traceparent.
    pub traceparent: &'a str,
}

impl NewMessage<'_> {
    /// The record [`MessageStore::begin`] creates, as kept in memory while the message
    /// is sent (so it can be written again should Redis lose it).
    pub fn draft(&self, now_ms: i64) -> MessageRecord {
        MessageRecord {
            message_id: self.message_id.to_owned(),
            partnership_id: self.partnership_id.to_owned(),
            topic: self.source.topic.clone(),
            partition: self.source.partition,
            offset: self.source.offset,
            filename: self.filename.unwrap_or_default().to_owned(),
            state: MessageState::Sending.as_str().to_owned(),
            created_at_ms: now_ms,
            traceparent: self.traceparent.to_owned(),
            ..MessageRecord::default()
        }
    }
}

/// What a message's sending established.
#[derive(Clone, Debug)]
pub struct SendFacts<'a> {
    /// Our AS2 id.
    pub as2_from: &'a str,
    /// The partner's AS2 id.
    pub as2_to: &'a str,
    /// `none`, `sync` or `async`.
    pub mdn_mode: &'a str,
    /// The MIC the MDN must return.
    pub expected_mic: String,
    /// Whether the message is signed.
    pub signed: bool,
    /// Whether a signed MDN was requested.
    pub signed_mdn_requested: bool,
    /// The URL of the archive entry; empty when not archived.
    pub archive_location: &'a str,
}

/// A message's outcome.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// `true`: delivered; `false`: failed.
    pub delivered: bool,
    /// HTTP status of the last send (0 if none).
    pub http_status: u32,
    /// Disposition of the MDN, if any.
    pub disposition: String,
    /// Received-Content-MIC of the MDN, if any.
    pub received_mic: String,
    /// Whether the MIC was compared and matched.
    pub mic_verified: bool,
    /// Why it failed; empty when delivered.
    pub reason: String,
    /// The MDN's headers, if any.
    pub mdn_headers: Vec<(String, String)>,
    /// The MDN's body, if any.
    pub mdn_body: Vec<u8>,
}

/// How the sender's keys move from the layout before hash tags (`{prefix}:sender:...`)
/// to the current one; a message kept under both names keeps the one further along.
pub fn layout_migration(namespace: &KeyNamespace) -> LayoutMigration {
    LayoutMigration::new(
        KeyGroup::Outbound,
        namespace,
        &[":awaiting-mdn", ":receipt-outbox"],
        &[(
            ":message:",
            Precedence::Rank("state", &["sending", "awaiting-mdn", "delivered", "failed"]),
        )],
    )
}

/// Redis failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct StoreError(#[from] redis::RedisError);

/// The Redis side of the sender. Cheap to clone.
#[derive(Clone)]
pub struct MessageStore {
    connection: RedisConnection,
    namespace: KeyNamespace,
    record_ttl_secs: u64,
}

/// Creates the record unless it exists; returns the state it has.
const BEGIN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 'new'
";

/// Moves `sending` to `awaiting-mdn` with its deadline; returns the state it has after.
const AWAIT_MDN: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'sending' then return state end
redis.call('HSET', KEYS[1], 'state', 'awaiting-mdn', 'mdn_deadline', ARGV[1], 'http_status', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 'awaiting-mdn'
";

/// Records an outcome if the state allows; returns 1 when it did, else the state.
const FINISH: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'sending' and state ~= 'awaiting-mdn' then return state end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
";

/// Writes fields of a record that exists; returns 1, or 0 when the record is missing.
const UPDATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
";

/// Counts a send on a record that exists; returns the count, or -1 when it is missing.
const ATTEMPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'http_status', ARGV[2])
return attempts
";

/// Writes a whole record unless it exists, into the index its state belongs to; returns
/// `restored`, or the state of the record that exists.
const RESTORE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'state')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
if ARGV[3] == 'awaiting-mdn' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
elseif ARGV[3] ~= 'sending' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
end
return 'restored'
";

/// Reads the epoch of the sender's state, creating it (not recovered) when missing;
/// returns `{id, recovered}`.
const EPOCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'recovered', '0', 'created_at', now[1])
end
return redis.call('HMGET', KEYS[1], 'id', 'recovered')
";

/// Marks epoch `ARGV[1]` recovered, if it is still the current one.
const MARK_RECOVERED: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'recovered', '1')
return 1
";

/// Releases the recovery lock if `ARGV[1]` holds it.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Arms the publish of a final message's receipt: records the partition and the offset
/// a search for it would start from, and until when (Redis time, ms) this attempt may
/// still land. See [`MessageStore::arm_receipt`].
const ARM_RECEIPT: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing'} end
if state ~= 'delivered' and state ~= 'failed' and state ~= 'unknown' then return {'open'} end
if redis.call('HGET', KEYS[1], 'receipt_published') == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'published'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local armed = redis.call('HGET', KEYS[1], 'receipt_until')
-- A final message leaves the outbox only when its receipt is acknowledged (versions
-- before the arming did not mark the record).
if not armed and not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {'published'} end
if armed and armed ~= ARGV[5] then
  local left = tonumber(armed) - now
  if left > 0 then return {'busy', string.format('%.0f', left)} end
  return {'search', redis.call('HGET', KEYS[1], 'receipt_partition'),
          redis.call('HGET', KEYS[1], 'receipt_scan_from'), armed}
end
redis.call('HSET', KEYS[1], 'receipt_partition', ARGV[3], 'receipt_scan_from', ARGV[4],
           'receipt_until', string.format('%.0f', now + tonumber(ARGV[2])))
return {'armed'}
";

/// Marks a receipt acknowledged: on the record (if it still exists) and out of the outbox.
const RECEIPT_DONE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'receipt_published', '1')
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// What [`MessageStore::arm_receipt`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiptArm {
    /// The caller may produce the receipt now, to the partition it placed it in.
    Armed,
    /// The receipt is acknowledged already.
    Published,
    /// Another attempt may still land within `left_ms`: leave it (the sweeper looks
    /// again).
    Busy {
        /// Milliseconds until that attempt's window ends.
        left_ms: i64,
    },
    /// An earlier attempt's window ended without an acknowledgement on record: search
    /// `partition` from `scan_from`; if the receipt is not there, arm again passing
    /// `armed` (so that only one of several searchers arms).
    Search {
        /// The partition of the earlier attempt.
        partition: i32,
        /// Where its search starts.
        scan_from: i64,
        /// The earlier attempt's window end, as stored.
        armed: String,
    },
    /// The message is not final (or has no record): no receipt yet.
    NotFinal,
}

/// How [`MessageStore::settle`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// This call recorded the outcome.
    Decided,
    /// The message had its outcome already.
    AlreadyFinal,
    /// There is no record (Redis lost it, or it expired).
    Missing,
}

/// The epoch of the sender's state in Redis: created with a fresh id whenever Redis
/// does not hold it, so a new id means Redis lost what it held (or never held any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    /// Random id.
    pub id: String,
    /// Whether the recovery after its creation ran to its end.
    pub recovered: bool,
}

impl MessageStore {
    /// A store in `namespace`; records live `record_ttl_secs`.
    pub fn new(connection: RedisConnection, namespace: KeyNamespace, record_ttl_secs: u64) -> Self {
        Self {
            connection,
            namespace,
            record_ttl_secs,
        }
    }

    /// The record id of a Message-ID: 32 hex digits of SHA-256 without angle brackets.
    pub fn record_id(message_id: &str) -> String {
        let inner = message_id.trim();
        let inner = inner.strip_prefix('<').unwrap_or(inner);
        let inner = inner.strip_suffix('>').unwrap_or(inner);
        sha256(inner.as_bytes())[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn message_key(&self, id: &str) -> String {
        KeyGroup::Outbound.key(&self.namespace, format_args!(":message:{id}"))
    }

    fn awaiting_key(&self) -> String {
        KeyGroup::Outbound.key(&self.namespace, ":awaiting-mdn")
    }

    fn outbox_key(&self) -> String {
        KeyGroup::Outbound.key(&self.namespace, ":receipt-outbox")
    }

    /// Creates the record of a new message in state `sending`, or returns the state of
    /// the existing one (a record seen before a restart or a rebalance).
    pub async fn begin(
        &self,
        message: &NewMessage<'_>,
        now_ms: i64,
    ) -> Result<Option<MessageState>, StoreError> {
        let id = Self::record_id(message.message_id);
        let fields: Vec<(&str, String)> = vec![
            ("message_id", message.message_id.to_owned()),
            ("partnership_id", message.partnership_id.to_owned()),
            ("topic", message.source.topic.clone()),
            ("partition", message.source.partition.to_string()),
            ("offset", message.source.offset.to_string()),
            ("filename", message.filename.unwrap_or_default().to_owned()),
            ("state", MessageState::Sending.as_str().to_owned()),
            ("attempts", "0".to_owned()),
            ("created_at", now_ms.to_string()),
            ("traceparent", message.traceparent.to_owned()),
        ];
        let script = Script::new(BEGIN);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.message_key(&id))
            .arg(self.record_ttl_secs);
        for (name, value) in fields {
            invocation.arg(name).arg(value);
        }
        let state: String = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(if state == "new" {
            None
        } else {
            MessageState::parse(&state)
        })
    }

    /// Stores what the send established (before the first attempt's answer is judged);
    /// `Ok(false)` when the record is missing.
    pub async fn record_send_facts(
        &self,
        message_id: &str,
        facts: &SendFacts<'_>,
    ) -> Result<bool, StoreError> {
        let key = self.message_key(&Self::record_id(message_id));
        let fields = [
            ("as2_from", facts.as2_from.to_owned()),
            ("as2_to", facts.as2_to.to_owned()),
            ("mdn_mode", facts.mdn_mode.to_owned()),
            ("expected_mic", facts.expected_mic.clone()),
            ("signed", flag(facts.signed)),
            ("signed_mdn_requested", flag(facts.signed_mdn_requested)),
            ("archive_location", facts.archive_location.to_owned()),
        ];
        let script = Script::new(UPDATE);
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for (name, value) in fields {
            invocation.arg(name).arg(value);
        }
        let updated: i64 = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(updated == 1)
    }

    /// Counts one more send and keeps why the previous one failed; `Ok(None)` when the
    /// record is missing.
    pub async fn record_attempt(
        &self,
        message_id: &str,
        last_error: &str,
        http_status: u32,
    ) -> Result<Option<u32>, StoreError> {
        let attempts: i64 = Script::new(ATTEMPT)
            .key(self.message_key(&Self::record_id(message_id)))
            .arg(last_error)
            .arg(http_status)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(u32::try_from(attempts).ok())
    }

    /// Records that the partner accepted the message and its MDN comes later, by
    /// `deadline_ms`. Returns the state after: `awaiting-mdn`, or the outcome should the
    /// MDN have been reconciled first; `None` when the record is missing.
    pub async fn await_mdn(
        &self,
        message_id: &str,
        deadline_ms: i64,
        http_status: u32,
    ) -> Result<Option<MessageState>, StoreError> {
        let id = Self::record_id(message_id);
        let state: Option<String> = Script::new(AWAIT_MDN)
            .key(self.message_key(&id))
            .key(self.awaiting_key())
            .arg(deadline_ms)
            .arg(&id)
            .arg(http_status)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(state.as_deref().and_then(MessageState::parse))
    }

    /// Records the outcome if the message is still open; `Ok(true)` when this call
    /// decided it, `Ok(false)` when it had its outcome already (or no record).
    pub async fn finish(
        &self,
        message_id: &str,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.settle(message_id, outcome, now_ms).await? == Settled::Decided)
    }

    /// Records the outcome if the message is still open, and says how it went.
    pub async fn settle(
        &self,
        message_id: &str,
        outcome: &Outcome,
        now_ms: i64,
    ) -> Result<Settled, StoreError> {
        let id = Self::record_id(message_id);
        let state = if outcome.delivered {
            MessageState::Delivered
        } else {
            MessageState::Failed
        };
        let script = Script::new(FINISH);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.message_key(&id))
            .key(self.awaiting_key())
            .key(self.outbox_key())
            .arg(&id)
            .arg(now_ms);
        let headers = serde_json::to_string(&outcome.mdn_headers).unwrap_or_default();
        for (name, value) in [
            ("state", state.as_str().as_bytes()),
            ("finished_at", now_ms.to_string().as_bytes()),
            ("http_status", outcome.http_status.to_string().as_bytes()),
            ("disposition", outcome.disposition.as_bytes()),
            ("received_mic", outcome.received_mic.as_bytes()),
            ("mic_verified", flag(outcome.mic_verified).as_bytes()),
            ("reason", outcome.reason.as_bytes()),
            ("mdn_headers", headers.as_bytes()),
            ("mdn_body", outcome.mdn_body.as_slice()),
        ] {
            invocation.arg(name).arg(value);
        }
        let answer: redis::Value = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(match answer {
            redis::Value::Int(1) => Settled::Decided,
            redis::Value::BulkString(state) if state == b"missing" => Settled::Missing,
            redis::Value::SimpleString(state) if state == "missing" => Settled::Missing,
            _ => Settled::AlreadyFinal,
        })
    }

    /// Writes `record` again, whole, unless a record of its Message-ID exists (Redis lost
    /// it while the message was being worked on, or it is a recovered message); it goes
    /// into the deadline index or the receipt outbox as its state asks. Returns `None`
    /// when it was written, else the state of the record that exists.
    pub async fn restore(
        &self,
        record: &MessageRecord,
    ) -> Result<Option<MessageState>, StoreError> {
        let id = Self::record_id(&record.message_id);
        let score = match record.state() {
            Some(MessageState::AwaitingMdn) => record.mdn_deadline_ms,
            _ => record.finished_at_ms,
        };
        let script = Script::new(RESTORE);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.message_key(&id))
            .key(self.awaiting_key())
            .key(self.outbox_key())
            .arg(self.record_ttl_secs)
            .arg(&id)
            .arg(&record.state)
            .arg(score);
        for (name, value) in record.to_fields() {
            invocation.arg(name).arg(value);
        }
        let state: String = invocation
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(if state == "restored" {
            None
        } else {
            MessageState::parse(&state).or(Some(MessageState::Sending))
        })
    }

    /// Whether a record of this Message-ID exists.
    pub async fn exists(&self, message_id: &str) -> Result<bool, StoreError> {
        let exists: bool = self
            .connection
            .clone()
            .exists(self.message_key(&Self::record_id(message_id)))
            .await?;
        Ok(exists)
    }

    fn epoch_key(&self) -> String {
        KeyGroup::Outbound.key(&self.namespace, ":epoch")
    }

    fn recovery_lock_key(&self) -> String {
        KeyGroup::Outbound.key(&self.namespace, ":recovery-lock")
    }

    /// The current epoch; creates one (with id `fresh_id`, not recovered) when Redis
    /// holds none.
    pub async fn epoch(&self, fresh_id: &str) -> Result<Epoch, StoreError> {
        let (id, recovered): (Option<String>, Option<String>) = Script::new(EPOCH)
            .key(self.epoch_key())
            .arg(fresh_id)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(Epoch {
            id: id.unwrap_or_default(),
            recovered: recovered.as_deref() == Some("1"),
        })
    }

    /// Marks the epoch `id` recovered (nothing when another epoch replaced it).
    pub async fn mark_recovered(&self, id: &str) -> Result<(), StoreError> {
        let _: i64 = Script::new(MARK_RECOVERED)
            .key(self.epoch_key())
            .arg(id)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Takes the recovery lock for `ttl_ms` unless another replica holds it.
    pub async fn lock_recovery(&self, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.recovery_lock_key())
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.connection.clone())
            .await?;
        Ok(taken.is_some())
    }

    /// Releases the recovery lock if `holder` has it.
    pub async fn unlock_recovery(&self, holder: &str) -> Result<(), StoreError> {
        let _: i64 = Script::new(UNLOCK)
            .key(self.recovery_lock_key())
            .arg(holder)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Keeps why an MDN for an awaiting message was refused.
    pub async fn record_rejected_mdn(
        &self,
        message_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let _: i64 = Script::new(UPDATE)
            .key(self.message_key(&Self::record_id(message_id)))
            .arg("last_rejected_mdn")
            .arg(reason)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// The record of a Message-ID (with or without angle brackets).
    pub async fn load(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        self.load_by_id(&Self::record_id(message_id)).await
    }

    /// The record with this record id.
    pub async fn load_by_id(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let fields: HashMap<String, Vec<u8>> = self
            .connection
            .clone()
            .hgetall(self.message_key(id))
            .await?;
        Ok(MessageRecord::from_hash(fields))
    }

    /// Ids of messages whose asynchronous MDN is overdue at `now_ms`.
    pub async fn overdue(&self, now_ms: i64, limit: isize) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = self
            .connection
            .clone()
            .zrangebyscore_limit(self.awaiting_key(), "-inf", now_ms, 0, limit)
            .await?;
        Ok(ids)
    }

    /// Drops an id from the deadline index (its record expired or is final).
    pub async fn forget_awaiting(&self, id: &str) -> Result<(), StoreError> {
        let () = self
            .connection
            .clone()
            .zrem(self.awaiting_key(), id)
            .await?;
        Ok(())
    }

    /// Ids of outcomes recorded before `before_ms` whose receipts are unacknowledged.
    pub async fn unpublished(
        &self,
        before_ms: i64,
        limit: isize,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = self
            .connection
            .clone()
            .zrangebyscore_limit(self.outbox_key(), "-inf", before_ms, 0, limit)
            .await?;
        Ok(ids)
    }

    /// Marks a message's receipt as acknowledged by Kafka: on its record, and out of the
    /// outbox.
    pub async fn receipt_published(&self, message_id: &str) -> Result<(), StoreError> {
        let id = Self::record_id(message_id);
        let _: i64 = Script::new(RECEIPT_DONE)
            .key(self.message_key(&id))
            .key(self.outbox_key())
            .arg(&id)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    /// Arms the publish of a final message's receipt (see [`ReceiptArm`]): `partition`
    /// and `scan_from` say where it will be; the attempt may land for `window_ms`
    /// (the producer's timeout and a margin). `searched` is the `armed` value of a
    /// [`ReceiptArm::Search`] whose search found nothing, empty otherwise.
    pub async fn arm_receipt(
        &self,
        message_id: &str,
        partition: i32,
        scan_from: i64,
        window_ms: u64,
        searched: &str,
    ) -> Result<ReceiptArm, StoreError> {
        let id = Self::record_id(message_id);
        let answer: Vec<String> = Script::new(ARM_RECEIPT)
            .key(self.message_key(&id))
            .key(self.outbox_key())
            .arg(&id)
            .arg(window_ms)
            .arg(partition)
            .arg(scan_from)
            .arg(searched)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let number = |index: usize| -> i64 {
            answer
                .get(index)
                .and_then(|value| value.parse().ok())
                .unwrap_or_default()
        };
        Ok(match answer.first().map(String::as_str) {
            Some("armed") => ReceiptArm::Armed,
            Some("published") => ReceiptArm::Published,
            Some("busy") => ReceiptArm::Busy { left_ms: number(1) },
            Some("search") => ReceiptArm::Search {
                partition: i32::try_from(number(1)).unwrap_or_default(),
                scan_from: number(2),
                armed: answer.get(3).cloned().unwrap_or_default(),
            },
            _ => ReceiptArm::NotFinal,
        })
    }

    /// Marks the receipt of the record with this id as acknowledged.
    pub async fn receipt_published_by_id(&self, id: &str) -> Result<(), StoreError> {
        let () = self.connection.clone().zrem(self.outbox_key(), id).await?;
        Ok(())
    }
}

fn flag(value: bool) -> String {
    if value { "1" } else { "0" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_ignore_angle_brackets() {
        assert_eq!(
            MessageStore::record_id("<a@b>"),
            MessageStore::record_id("a@b")
        );
        assert_eq!(MessageStore::record_id("<a@b>").len(), 32);
        assert_ne!(
            MessageStore::record_id("a@b"),
            MessageStore::record_id("a@c")
        );
    }

    #[test]
    fn states_round_trip() {
        for state in [
            MessageState::Sending,
            MessageState::AwaitingMdn,
            MessageState::Delivered,
            MessageState::Failed,
            MessageState::Unknown,
        ] {
            assert_eq!(MessageState::parse(state.as_str()), Some(state));
        }
        assert!(MessageState::Failed.is_final());
        assert!(!MessageState::AwaitingMdn.is_final());
    }
}
