//! Partnerships in Redis, or in the process's memory.
//!
//! ## Redis
//!
//! Key layout (`{p}` is the configured key prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:{partnership}:{id}` | hash | `doc` (the protobuf-encoded `Partnership`), `revision`, `pair` |
//! | `{p}:{partnership}-pairs` | hash | field `"{as2_from}\n{as2_to}"` -> id (the resolve index) |
//! | `{p}:{partnership}-ids` | sorted set | every id with score 0, ordered for paging |
//! | `{p}:{partnership}-audit` | stream | the audit log |
//! | `{p}:partnership-events` | pub/sub channel | protobuf-encoded `PartnershipEvent`s |
//!
//! `{partnership}` is a Redis Cluster hash tag: every key of the registry is in one
//! slot, so the scripts below run on a cluster too. Versions before it wrote the same
//! keys without the braces; [`layout_migration`] moves them at start-up.
//! A newline separates the pair because AS2 IDs are printable ASCII and cannot
//! contain one. Every change runs as one Lua script that checks the revision
//! and the pair index, writes the hash, the index and the id set, and publishes
//! the change event: two replicas racing to create the same pair cannot both
//! succeed, and no change is stored without its event being published.
//!
//! ## Memory
//!
//! [`PartnershipStore::in_memory`] keeps the same three structures (the
//! partnerships by id in id order, the pair index) in one process behind one
//! lock, for the single-process quick start (Redis URL `memory://`). Every
//! change checks the revision and the pair index, writes, and sends its event
//! on an in-process broadcast channel ([`PartnershipStore::subscribe_in_process`])
//! while it holds the lock, so the answers, the id order of listings and the
//! events are those of the Redis store, and events arrive in the order of the
//! changes. Nothing survives the process and nothing is shared with another
//! replica.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use as2_common::redis::layout::{LayoutMigration, Precedence};
use as2_common::redis::{KeyGroup, KeyNamespace, RedisConnection};
use as2_rpc::prost::Message as _;
use as2_rpc::routing::v1::{Partnership, PartnershipEvent, PartnershipEventKind};
use redis::AsyncCommands as _;
use redis::Script;
use tokio::sync::broadcast;

/// How often an unconditional update or delete is retried when another writer
/// changes the partnership between our read and our write.
const UNCONDITIONAL_WRITE_ATTEMPTS: usize = 5;

/// Change events the in-memory store buffers per in-process subscriber before
/// the subscriber is considered lagging.
const IN_PROCESS_EVENT_CAPACITY: usize = 1_024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No partnership has this id.
    #[error("partnership {id:?} not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// No partnership has this pair.
    #[error("no partnership for AS2-From {as2_from:?} and AS2-To {as2_to:?}")]
    PairNotFound {
        /// The AS2-From asked for.
        as2_from: String,
        /// The AS2-To asked for.
        as2_to: String,
    },
    /// The id is taken.
    #[error("a partnership with id {id:?} exists already")]
    IdTaken {
        /// The id asked for.
        id: String,
    },
    /// Another partnership has this pair.
    #[error("partnership {existing_id:?} already has AS2-From {as2_from:?} and AS2-To {as2_to:?}")]
    PairTaken {
        /// The AS2-From asked for.
        as2_from: String,
        /// The AS2-To asked for.
        as2_to: String,
        /// The partnership that has the pair.
        existing_id: String,
    },
    /// The revision is not the expected one.
    #[error("partnership {id:?} is at revision {current}, not the expected {expected}")]
    RevisionMismatch {
        /// The partnership.
        id: String,
        /// What the caller expected.
        expected: u64,
        /// What is stored (0 when unknown).
        current: u64,
    },
    /// Other writers kept changing the partnership during an unconditional
    /// update or delete.
    #[error("partnership {id:?} kept changing concurrently; retry")]
    Contended {
        /// The partnership.
        id: String,
    },
    /// A stored partnership does not decode.
    #[error("stored partnership {id:?} cannot be decoded: {source}")]
    Corrupt {
        /// The partnership.
        id: String,
        /// The decoder's complaint.
        source: as2_rpc::prost::DecodeError,
    },
    /// A script answered something it never answers.
    #[error("unexpected answer from redis script: {0:?}")]
    UnexpectedReply(String),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl StoreError {
    /// Whether the failure is Redis being unreachable or slow (worth retrying
    /// later) rather than a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Redis(error)
            if error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal())
    }
}

/// How many entries the audit log keeps (about: Redis trims the stream with `~`).
pub const AUDIT_LOG_LENGTH: usize = 100_000;

/// How the registry's keys move from the layout before hash tags
/// (`{p}:partnership:{id}`, `{p}:partnership-pairs`, ...) to the current one; a
/// partnership kept under both names keeps its higher revision.
pub fn layout_migration(namespace: &KeyNamespace) -> LayoutMigration {
    LayoutMigration::new(
        KeyGroup::Partnerships,
        namespace,
        &["-pairs", "-ids", "-audit"],
        &[(":", Precedence::Number("revision"))],
    )
}

/// One change of a partnership in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (Unix milliseconds; the Redis stream id's time).
    pub at_millis: u64,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// Who: the caller's identity (the common name of its client certificate).
    pub caller: String,
    /// The partnership's id.
    pub partnership: String,
    /// The revision created (for a delete: the revision deleted).
    pub revision: u64,
    /// The AS2 pair, `as2_from` and `as2_to` as the pair index keeps them.
    pub pair: String,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct PartnershipPage {
    /// The partnerships, ordered by id.
    pub partnerships: Vec<Partnership>,
    /// The last id of this page when more may follow.
    pub next_after: Option<String>,
}

const CREATE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index, id set, audit stream
-- ARGV: id, pair, doc, channel, event, caller, audit length
if redis.call('EXISTS', KEYS[1]) == 1 then return 'id_taken' end
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder then return 'pair_taken:' .. holder end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'revision', '1', 'pair', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'action', 'create', 'caller', ARGV[6],
  'partnership', ARGV[1], 'revision', '1', 'pair', ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'ok'
";

const UPDATE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index, audit stream
-- ARGV: id, expected revision, new revision, new pair, doc, channel, event, caller,
--       audit length
local current = redis.call('HMGET', KEYS[1], 'revision', 'pair')
if not current[1] then return 'not_found' end
if current[1] ~= ARGV[2] then return 'conflict:' .. current[1] end
if current[2] ~= ARGV[4] then
  local holder = redis.call('HGET', KEYS[2], ARGV[4])
  if holder and holder ~= ARGV[1] then return 'pair_taken:' .. holder end
  if redis.call('HGET', KEYS[2], current[2]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], current[2])
  end
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[1])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[5], 'revision', ARGV[3], 'pair', ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'action', 'update', 'caller', ARGV[8],
  'partnership', ARGV[1], 'revision', ARGV[3], 'pair', ARGV[4])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 'ok'
";

const DELETE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index, id set, audit stream
-- ARGV: id, expected revision, channel, event, caller, audit length
local current = redis.call('HMGET', KEYS[1], 'revision', 'pair')
if not current[1] then return 'not_found' end
if current[1] ~= ARGV[2] then return 'conflict:' .. current[1] end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[2], current[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], current[2])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'action', 'delete', 'caller', ARGV[5],
  'partnership', ARGV[1], 'revision', ARGV[2], 'pair', current[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 'ok'
";

/// What a write script answered.
enum ScriptReply {
    Ok,
    NotFound,
    IdTaken,
    PairTaken(String),
    Conflict(u64),
}

impl ScriptReply {
    fn parse(reply: &str) -> Result<Self, StoreError> {
        let unexpected = || StoreError::UnexpectedReply(reply.to_owned());
        Ok(match reply.split_once(':') {
            None if reply == "ok" => Self::Ok,
            None if reply == "not_found" => Self::NotFound,
            None if reply == "id_taken" => Self::IdTaken,
            Some(("pair_taken", holder)) => Self::PairTaken(holder.to_owned()),
            Some(("conflict", current)) => {
                Self::Conflict(current.parse().map_err(|_| unexpected())?)
            }
            _ => return Err(unexpected()),
        })
    }
}

/// Reads and writes partnerships in Redis or in the process's memory.
#[derive(Clone)]
pub struct PartnershipStore {
    namespace: KeyNamespace,
    backend: Backend,
}

/// Where a [`PartnershipStore`] keeps its partnerships.
#[derive(Clone)]
enum Backend {
    Redis(RedisBackend),
    Memory(Arc<Mutex<MemoryRegistry>>),
}

/// The Redis connection and the write scripts.
#[derive(Clone)]
struct RedisBackend {
    connection: RedisConnection,
    create_script: Arc<Script>,
    update_script: Arc<Script>,
    delete_script: Arc<Script>,
}

impl PartnershipStore {
    /// A store using `connection`, with keys under `namespace`.
    pub fn new(connection: RedisConnection, namespace: KeyNamespace) -> Self {
        Self {
            namespace,
            backend: Backend::Redis(RedisBackend {
                connection,
                create_script: Arc::new(Script::new(CREATE_SCRIPT)),
                update_script: Arc::new(Script::new(UPDATE_SCRIPT)),
                delete_script: Arc::new(Script::new(DELETE_SCRIPT)),
            }),
        }
    }

    /// An empty store in this process's memory (see the module docs), for
    /// the Redis URL `memory://`. Clones share the partnerships; its change
    /// events reach [`subscribe_in_process`](Self::subscribe_in_process)
    /// instead of Redis pub/sub. `namespace` only names the events channel.
    pub fn in_memory(namespace: KeyNamespace) -> Self {
        let (events, _) = broadcast::channel(IN_PROCESS_EVENT_CAPACITY);
        Self {
            namespace,
            backend: Backend::Memory(Arc::new(Mutex::new(MemoryRegistry {
                partnerships: BTreeMap::new(),
                pairs: HashMap::new(),
                events,
                audit: VecDeque::new(),
            }))),
        }
    }

    /// A short name of the backend for logs: `redis` or `memory`.
    pub fn backend_kind(&self) -> &'static str {
        match self.backend {
            Backend::Redis(_) => "redis",
            Backend::Memory(_) => "memory",
        }
    }

    /// Every change event of an in-memory store from now on, in the order of
    /// the changes; `None` for a Redis store, whose events are published on
    /// [`events_channel`](Self::events_channel) instead.
    pub fn subscribe_in_process(&self) -> Option<broadcast::Receiver<PartnershipEvent>> {
        match &self.backend {
            Backend::Redis(_) => None,
            Backend::Memory(registry) => Some(lock(registry).events.subscribe()),
        }
    }

    /// The pub/sub channel that change events are published on.
    pub fn events_channel(&self) -> String {
        as2_common::redis::acl::partnership_events_channel(&self.namespace)
    }

    fn partnership_key(&self, id: &str) -> String {
        KeyGroup::Partnerships.key(&self.namespace, format_args!(":{id}"))
    }

    fn pair_index_key(&self) -> String {
        KeyGroup::Partnerships.key(&self.namespace, "-pairs")
    }

    fn id_set_key(&self) -> String {
        KeyGroup::Partnerships.key(&self.namespace, "-ids")
    }

    /// The Redis stream of partnership changes (the audit log).
    pub fn audit_key(&self) -> String {
        KeyGroup::Partnerships.key(&self.namespace, "-audit")
    }

    /// The newest `count` audit entries, newest first.
    pub async fn audit_log(&self, count: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => {
                return Ok(lock(registry)
                    .audit
                    .iter()
                    .rev()
                    .take(count)
                    .cloned()
                    .collect());
            }
        };
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.audit_key())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut redis.connection.clone())
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
                // An entry an older replica wrote after the layout migration was
                // appended with its own id in `migrated_id`: that id has its time.
                let id = entry
                    .get::<String>("migrated_id")
                    .unwrap_or(entry.id.clone());
                AuditEntry {
                    at_millis: id
                        .split_once('-')
                        .and_then(|(millis, _)| millis.parse().ok())
                        .unwrap_or_default(),
                    action: field("action"),
                    caller: field("caller"),
                    partnership: field("partnership"),
                    revision: field("revision").parse().unwrap_or_default(),
                    pair: field("pair"),
                }
            })
            .collect())
    }

    /// Stores a new, validated partnership with id and timestamps set; its
    /// revision becomes 1. The change is recorded in the audit log with `caller` in
    /// the same atomic write.
    pub async fn create(
        &self,
        mut partnership: Partnership,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        partnership.revision = 1;
        match &self.backend {
            Backend::Redis(redis) => self.create_in_redis(redis, partnership, caller).await,
            Backend::Memory(registry) => lock(registry).create(partnership, caller),
        }
    }

    async fn create_in_redis(
        &self,
        redis: &RedisBackend,
        partnership: Partnership,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        let event = change_event(PartnershipEventKind::Upserted, &partnership, None);
        let reply: String = redis
            .create_script
            .key(self.partnership_key(&partnership.id))
            .key(self.pair_index_key())
            .key(self.id_set_key())
            .key(self.audit_key())
            .arg(&partnership.id)
            .arg(pair_field(&partnership.as2_from, &partnership.as2_to))
            .arg(partnership.encode_to_vec())
            .arg(self.events_channel())
            .arg(event.encode_to_vec())
            .arg(caller)
            .arg(AUDIT_LOG_LENGTH)
            .invoke_async(&mut redis.connection.clone())
            .await?;
        match ScriptReply::parse(&reply)? {
            ScriptReply::Ok => Ok(partnership),
            ScriptReply::IdTaken => Err(StoreError::IdTaken { id: partnership.id }),
            ScriptReply::PairTaken(existing_id) => Err(pair_taken(partnership, existing_id)),
            ScriptReply::NotFound | ScriptReply::Conflict(_) => {
                Err(StoreError::UnexpectedReply(reply))
            }
        }
    }

    /// Replaces the settings of partnership `replacement.id` with those of
    /// `replacement` (validated), keeping its creation time. With
    /// `expected_revision` 0 the update applies to whatever revision is stored. The
    /// change is recorded in the audit log with `caller`.
    pub async fn update(
        &self,
        replacement: Partnership,
        expected_revision: u64,
        now: SystemTime,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => {
                return lock(registry).update(replacement, expected_revision, now, caller);
            }
        };
        for _ in 0..UNCONDITIONAL_WRITE_ATTEMPTS {
            let current = self.get(&replacement.id).await?;
            check_revision(&current, expected_revision)?;
            let updated = updated_partnership(&current, &replacement, now);
            let event = upsert_event(&current, &updated);
            let reply: String = redis
                .update_script
                .key(self.partnership_key(&updated.id))
                .key(self.pair_index_key())
                .key(self.audit_key())
                .arg(&updated.id)
                .arg(current.revision.to_string())
                .arg(updated.revision.to_string())
                .arg(pair_field(&updated.as2_from, &updated.as2_to))
                .arg(updated.encode_to_vec())
                .arg(self.events_channel())
                .arg(event.encode_to_vec())
                .arg(caller)
                .arg(AUDIT_LOG_LENGTH)
                .invoke_async(&mut redis.connection.clone())
                .await?;
            match ScriptReply::parse(&reply)? {
                ScriptReply::Ok => return Ok(updated),
                ScriptReply::NotFound => return Err(StoreError::NotFound { id: updated.id }),
                ScriptReply::PairTaken(existing_id) => {
                    return Err(pair_taken(updated, existing_id));
                }
                ScriptReply::Conflict(stored) if expected_revision != 0 => {
                    return Err(StoreError::RevisionMismatch {
                        id: updated.id,
                        expected: expected_revision,
                        current: stored,
                    });
                }
                ScriptReply::Conflict(_) => continue,
                ScriptReply::IdTaken => return Err(StoreError::UnexpectedReply(reply)),
            }
        }
        Err(StoreError::Contended { id: replacement.id })
    }

    /// Deletes a partnership and returns it as it was. With
    /// `expected_revision` 0 whatever revision is stored is deleted. The change is
    /// recorded in the audit log with `caller`.
    pub async fn delete(
        &self,
        id: &str,
        expected_revision: u64,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => {
                return lock(registry).delete(id, expected_revision, caller);
            }
        };
        for _ in 0..UNCONDITIONAL_WRITE_ATTEMPTS {
            let current = self.get(id).await?;
            check_revision(&current, expected_revision)?;
            let event = change_event(PartnershipEventKind::Deleted, &current, None);
            let reply: String = redis
                .delete_script
                .key(self.partnership_key(id))
                .key(self.pair_index_key())
                .key(self.id_set_key())
                .key(self.audit_key())
                .arg(id)
                .arg(current.revision.to_string())
                .arg(self.events_channel())
                .arg(event.encode_to_vec())
                .arg(caller)
                .arg(AUDIT_LOG_LENGTH)
                .invoke_async(&mut redis.connection.clone())
                .await?;
            match ScriptReply::parse(&reply)? {
                ScriptReply::Ok => return Ok(current),
                ScriptReply::NotFound => return Err(StoreError::NotFound { id: id.to_owned() }),
                ScriptReply::Conflict(stored) if expected_revision != 0 => {
                    return Err(StoreError::RevisionMismatch {
                        id: id.to_owned(),
                        expected: expected_revision,
                        current: stored,
                    });
                }
                ScriptReply::Conflict(_) => continue,
                ScriptReply::IdTaken | ScriptReply::PairTaken(_) => {
                    return Err(StoreError::UnexpectedReply(reply));
                }
            }
        }
        Err(StoreError::Contended { id: id.to_owned() })
    }

    /// The partnership with this id.
    pub async fn get(&self, id: &str) -> Result<Partnership, StoreError> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => {
                return lock(registry)
                    .partnerships
                    .get(id)
                    .cloned()
                    .ok_or_else(|| StoreError::NotFound { id: id.to_owned() });
            }
        };
        let doc: Option<Vec<u8>> = redis
            .connection
            .clone()
            .hget(self.partnership_key(id), "doc")
            .await?;
        match doc {
            Some(doc) => decode(id, &doc),
            None => Err(StoreError::NotFound { id: id.to_owned() }),
        }
    }

    /// The partnership for an inbound message's (AS2-From, AS2-To) pair.
    pub async fn resolve(&self, as2_from: &str, as2_to: &str) -> Result<Partnership, StoreError> {
        let not_found = || StoreError::PairNotFound {
            as2_from: as2_from.to_owned(),
            as2_to: as2_to.to_owned(),
        };
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => {
                return lock(registry)
                    .resolve(as2_from, as2_to)
                    .ok_or_else(not_found);
            }
        };
        let id: Option<String> = redis
            .connection
            .clone()
            .hget(self.pair_index_key(), pair_field(as2_from, as2_to))
            .await?;
        let Some(id) = id else {
            return Err(not_found());
        };
        match self.get(&id).await {
            // Deleted between the two reads.
            Err(StoreError::NotFound { .. }) => Err(not_found()),
            other => other,
        }
    }

    /// Up to `limit` partnerships with ids after `after` (from the start when
    /// `None`), ordered by id.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PartnershipPage, StoreError> {
        let redis = match &self.backend {
            Backend::Redis(redis) => redis,
            Backend::Memory(registry) => return Ok(lock(registry).list(after, limit)),
        };
        let min = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut connection = redis.connection.clone();
        let mut ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.id_set_key())
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1)
            .query_async(&mut connection)
            .await?;
        let more = ids.len() > limit;
        ids.truncate(limit);
        if ids.is_empty() {
            return Ok(PartnershipPage::default());
        }
        let mut pipeline = redis::pipe();
        for id in &ids {
            pipeline.hget(self.partnership_key(id), "doc");
        }
        let docs: Vec<Option<Vec<u8>>> = pipeline.query_async(&mut connection).await?;
        let mut partnerships = Vec::with_capacity(ids.len());
        for (id, doc) in ids.iter().zip(docs) {
            // A partnership deleted between the two reads is skipped.
            if let Some(doc) = doc {
                partnerships.push(decode(id, &doc)?);
            }
        }
        Ok(PartnershipPage {
            partnerships,
            next_after: more.then(|| ids.last().cloned()).flatten(),
        })
    }
}

/// The in-memory store: what the Redis keys hold, and the sending side of the
/// in-process events channel. Every method runs under the store's one lock,
/// so each change is atomic like a Lua script, and its event is sent before
/// the next change can start.
struct MemoryRegistry {
    /// Every partnership by id, ordered for paging like the id set.
    partnerships: BTreeMap<String, Partnership>,
    /// `pair_field(as2_from, as2_to)` -> id, like the pair index hash.
    pairs: HashMap<String, String>,
    /// Where change events go; sending without a subscriber is no error, like
    /// a PUBLISH nobody listens to.
    events: broadcast::Sender<PartnershipEvent>,
    /// The audit log, oldest first, at most [`AUDIT_LOG_LENGTH`] entries.
    audit: VecDeque<AuditEntry>,
}

impl MemoryRegistry {
    fn record(&mut self, action: &str, caller: &str, partnership: &Partnership) {
        if self.audit.len() >= AUDIT_LOG_LENGTH {
            self.audit.pop_front();
        }
        self.audit.push_back(AuditEntry {
            at_millis: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            action: action.to_owned(),
            caller: caller.to_owned(),
            partnership: partnership.id.clone(),
            revision: partnership.revision,
            pair: pair_field(&partnership.as2_from, &partnership.as2_to),
        });
    }

    fn create(
        &mut self,
        partnership: Partnership,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        if self.partnerships.contains_key(&partnership.id) {
            return Err(StoreError::IdTaken { id: partnership.id });
        }
        let pair = pair_field(&partnership.as2_from, &partnership.as2_to);
        if let Some(holder) = self.pairs.get(&pair) {
            let existing_id = holder.clone();
            return Err(pair_taken(partnership, existing_id));
        }
        self.pairs.insert(pair, partnership.id.clone());
        self.partnerships
            .insert(partnership.id.clone(), partnership.clone());
        self.record("create", caller, &partnership);
        self.publish(change_event(
            PartnershipEventKind::Upserted,
            &partnership,
            None,
        ));
        Ok(partnership)
    }

    fn update(
        &mut self,
        replacement: Partnership,
        expected_revision: u64,
        now: SystemTime,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        let Some(current) = self.partnerships.get(&replacement.id) else {
            return Err(StoreError::NotFound { id: replacement.id });
        };
        check_revision(current, expected_revision)?;
        let updated = updated_partnership(current, &replacement, now);
        let event = upsert_event(current, &updated);
        let current_pair = pair_field(&current.as2_from, &current.as2_to);
        let updated_pair = pair_field(&updated.as2_from, &updated.as2_to);
        if current_pair != updated_pair {
            if let Some(holder) = self.pairs.get(&updated_pair)
                && *holder != updated.id
            {
                let existing_id = holder.clone();
                return Err(pair_taken(updated, existing_id));
            }
            if self.pairs.get(&current_pair) == Some(&updated.id) {
                self.pairs.remove(&current_pair);
            }
            self.pairs.insert(updated_pair, updated.id.clone());
        }
        self.partnerships
            .insert(updated.id.clone(), updated.clone());
        self.record("update", caller, &updated);
        self.publish(event);
        Ok(updated)
    }

    fn delete(
        &mut self,
        id: &str,
        expected_revision: u64,
        caller: &str,
    ) -> Result<Partnership, StoreError> {
        let Some(current) = self.partnerships.get(id) else {
            return Err(StoreError::NotFound { id: id.to_owned() });
        };
        check_revision(current, expected_revision)?;
        let Some(current) = self.partnerships.remove(id) else {
            return Err(StoreError::NotFound { id: id.to_owned() });
        };
        let pair = pair_field(&current.as2_from, &current.as2_to);
        if self.pairs.get(&pair).is_some_and(|holder| holder == id) {
            self.pairs.remove(&pair);
        }
        self.record("delete", caller, &current);
        self.publish(change_event(PartnershipEventKind::Deleted, &current, None));
        Ok(current)
    }

    fn resolve(&self, as2_from: &str, as2_to: &str) -> Option<Partnership> {
        let id = self.pairs.get(&pair_field(as2_from, as2_to))?;
        self.partnerships.get(id).cloned()
    }

    fn list(&self, after: Option<&str>, limit: usize) -> PartnershipPage {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut partnerships: Vec<Partnership> = self
            .partnerships
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(_, partnership)| partnership.clone())
            .collect();
        let more = partnerships.len() > limit;
        partnerships.truncate(limit);
        let next_after = more
            .then(|| partnerships.last().map(|last| last.id.clone()))
            .flatten();
        PartnershipPage {
            partnerships,
            next_after,
        }
    }

    fn publish(&self, event: PartnershipEvent) {
        // An error only means that nobody subscribes right now.
        let _ = self.events.send(event);
    }
}

/// The in-memory store's lock. A panic while it was held cannot leave a
/// half-written change behind (every change checks first, then writes with
/// calls that do not panic), so a poisoned lock is still usable.
fn lock(registry: &Mutex<MemoryRegistry>) -> MutexGuard<'_, MemoryRegistry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fails unless `expected_revision` is 0 (any) or the stored revision.
fn check_revision(current: &Partnership, expected_revision: u64) -> Result<(), StoreError> {
    if expected_revision != 0 && expected_revision != current.revision {
        return Err(StoreError::RevisionMismatch {
            id: current.id.clone(),
            expected: expected_revision,
            current: current.revision,
        });
    }
    Ok(())
}

/// `replacement` as the next revision of `current`, keeping its creation time.
fn updated_partnership(
    current: &Partnership,
    replacement: &Partnership,
    now: SystemTime,
) -> Partnership {
    Partnership {
        revision: current.revision + 1,
        created_at: current.created_at,
        updated_at: Some(now.into()),
        ..replacement.clone()
    }
}

/// The event of replacing `current` with `updated`, naming the previous pair
/// when it changes.
fn upsert_event(current: &Partnership, updated: &Partnership) -> PartnershipEvent {
    let previous_pair = (current.as2_from != updated.as2_from || current.as2_to != updated.as2_to)
        .then_some((current.as2_from.as_str(), current.as2_to.as_str()));
    change_event(PartnershipEventKind::Upserted, updated, previous_pair)
}

fn pair_taken(partnership: Partnership, existing_id: String) -> StoreError {
    StoreError::PairTaken {
        as2_from: partnership.as2_from,
        as2_to: partnership.as2_to,
        existing_id,
    }
}

/// The pair index field: AS2-From and AS2-To separated by a newline, which
/// neither may contain.
fn pair_field(as2_from: &str, as2_to: &str) -> String {
    format!("{as2_from}\n{as2_to}")
}

fn decode(id: &str, doc: &[u8]) -> Result<Partnership, StoreError> {
    Partnership::decode(doc).map_err(|source| StoreError::Corrupt {
        id: id.to_owned(),
        source,
    })
}

fn change_event(
    kind: PartnershipEventKind,
    partnership: &Partnership,
    previous_pair: Option<(&str, &str)>,
) -> PartnershipEvent {
    let (previous_as2_from, previous_as2_to) = previous_pair.unwrap_or_default();
    PartnershipEvent {
        kind: kind as i32,
        id: partnership.id.clone(),
        revision: partnership.revision,
        as2_from: partnership.as2_from.clone(),
        as2_to: partnership.as2_to.clone(),
        previous_as2_from: previous_as2_from.to_owned(),
        previous_as2_to: previous_as2_to.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! The in-memory backend; the Redis backend's answers are covered by the
    //! integration tests, which run the same scenarios on both.

    use std::time::Duration;

    use super::*;

    fn store() -> PartnershipStore {
        PartnershipStore::in_memory(KeyNamespace::new("unit").unwrap())
    }

    fn partnership(id: &str, as2_from: &str, as2_to: &str) -> Partnership {
        Partnership {
            id: id.to_owned(),
            as2_from: as2_from.to_owned(),
            as2_to: as2_to.to_owned(),
            kafka_topic: "topic".to_owned(),
            ..Partnership::default()
        }
    }

    fn later() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn next(events: &mut broadcast::Receiver<PartnershipEvent>) -> PartnershipEvent {
        events.try_recv().unwrap()
    }

    #[tokio::test]
    async fn create_get_resolve_update_delete() {
        let store = store();
        assert_eq!(store.backend_kind(), "memory");
        assert_eq!(store.events_channel(), "unit:partnership-events");
        let created = store
            .create(partnership("a", "from", "to"), "test")
            .await
            .unwrap();
        assert_eq!(created.revision, 1);
        assert_eq!(store.get("a").await.unwrap(), created);
        assert_eq!(store.resolve("from", "to").await.unwrap(), created);
        assert!(matches!(
            store.resolve("from", "TO").await,
            Err(StoreError::PairNotFound { .. })
        ));

        let mut replacement = partnership("a", "from", "to");
        replacement.kafka_topic = "other".to_owned();
        replacement.created_at = None;
        let updated = store.update(replacement, 1, later(), "test").await.unwrap();
        assert_eq!(updated.revision, 2);
        assert_eq!(updated.kafka_topic, "other");
        assert_eq!(updated.created_at, created.created_at);
        assert_eq!(updated.updated_at, Some(later().into()));
        assert_eq!(store.get("a").await.unwrap(), updated);

        assert!(matches!(
            store.delete("a", 1, "test").await,
            Err(StoreError::RevisionMismatch {
                expected: 1,
                current: 2,
                ..
            })
        ));
        assert_eq!(store.delete("a", 2, "test").await.unwrap(), updated);
        assert!(matches!(
            store.get("a").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.resolve("from", "to").await,
            Err(StoreError::PairNotFound { .. })
        ));
        assert!(matches!(
            store.delete("a", 0, "test").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store
                .update(partnership("a", "from", "to"), 0, later(), "test")
                .await,
            Err(StoreError::NotFound { .. })
        ));
        // The pair is free again.
        store
            .create(partnership("b", "from", "to"), "test")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ids_and_pairs_are_unique() {
        let store = store();
        store
            .create(partnership("a", "from", "to"), "test")
            .await
            .unwrap();
        assert!(matches!(
            store.create(partnership("a", "other", "to"), "test").await,
            Err(StoreError::IdTaken { id }) if id == "a"
        ));
        assert!(matches!(
            store.create(partnership("b", "from", "to"), "test").await,
            Err(StoreError::PairTaken { existing_id, .. }) if existing_id == "a"
        ));
        let second = store
            .create(partnership("b", "from", "else"), "test")
            .await
            .unwrap();

        // Moving b onto a's pair is refused and changes nothing.
        let clash = partnership("b", "from", "to");
        assert!(matches!(
            store.update(clash, 0, later(), "test").await,
            Err(StoreError::PairTaken { existing_id, .. }) if existing_id == "a"
        ));
        assert_eq!(store.get("b").await.unwrap(), second);
        assert_eq!(store.resolve("from", "else").await.unwrap().id, "b");

        // Moving b to a free pair moves the index.
        store
            .update(partnership("b", "from", "new"), 0, later(), "test")
            .await
            .unwrap();
        assert!(store.resolve("from", "else").await.is_err());
        assert_eq!(store.resolve("from", "new").await.unwrap().id, "b");
        store
            .create(partnership("c", "from", "else"), "test")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_stale_revision_is_refused() {
        let store = store();
        store
            .create(partnership("a", "from", "to"), "test")
            .await
            .unwrap();
        store
            .update(partnership("a", "from", "to"), 0, later(), "test")
            .await
            .unwrap();
        let stale = store
            .update(partnership("a", "from", "x"), 1, later(), "test")
            .await;
        assert!(
            matches!(
                &stale,
                Err(StoreError::RevisionMismatch {
                    expected: 1,
                    current: 2,
                    ..
                })
            ),
            "{stale:?}"
        );
        assert_eq!(store.get("a").await.unwrap().as2_to, "to");
        assert!(store.resolve("from", "x").await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_creates_of_one_pair_succeed_once() {
        let store = store();
        let attempts: Vec<_> = (0..32)
            .map(|attempt| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .create(
                            partnership(&format!("p{attempt:02}"), "racer", "us"),
                            "test",
                        )
                        .await
                })
            })
            .collect();
        let mut created = Vec::new();
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(partnership) => created.push(partnership.id),
                Err(StoreError::PairTaken { .. }) => {}
                Err(other) => panic!("unexpected failure: {other:?}"),
            }
        }
        assert_eq!(created.len(), 1, "{created:?}");
        let listed = store.list(None, 100).await.unwrap();
        assert_eq!(listed.partnerships.len(), 1);
        assert_eq!(store.resolve("racer", "us").await.unwrap().id, created[0]);
    }

    #[tokio::test]
    async fn listing_pages_in_id_order() {
        let store = store();
        for id in ["p3", "p0", "p4", "p1", "p2"] {
            store
                .create(partnership(id, id, "us"), "test")
                .await
                .unwrap();
        }
        let ids = |page: &PartnershipPage| {
            page.partnerships
                .iter()
                .map(|partnership| partnership.id.clone())
                .collect::<Vec<_>>()
        };
        let first = store.list(None, 2).await.unwrap();
        assert_eq!(ids(&first), ["p0", "p1"]);
        assert_eq!(first.next_after.as_deref(), Some("p1"));
        let second = store.list(Some("p1"), 2).await.unwrap();
        assert_eq!(ids(&second), ["p2", "p3"]);
        assert_eq!(second.next_after.as_deref(), Some("p3"));
        let last = store.list(Some("p3"), 2).await.unwrap();
        assert_eq!(ids(&last), ["p4"]);
        assert_eq!(last.next_after, None);
        // Exactly a page left: no next page.
        let exact = store.list(Some("p2"), 2).await.unwrap();
        assert_eq!(ids(&exact), ["p3", "p4"]);
        assert_eq!(exact.next_after, None);
        // After an id that is not stored, the listing goes on from its place.
        let between = store.list(Some("p10"), 10).await.unwrap();
        assert_eq!(ids(&between), ["p2", "p3", "p4"]);
        assert!(
            store
                .list(Some("p4"), 10)
                .await
                .unwrap()
                .partnerships
                .is_empty()
        );
        let none = store.list(None, 0).await.unwrap();
        assert!(none.partnerships.is_empty() && none.next_after.is_none());
    }

    #[tokio::test]
    async fn every_change_sends_its_event_and_refusals_send_none() {
        let store = store();
        let mut events = store.subscribe_in_process().unwrap();
        store
            .create(partnership("a", "from", "to"), "test")
            .await
            .unwrap();
        let created = next(&mut events);
        assert_eq!(created.kind(), PartnershipEventKind::Upserted);
        assert_eq!((created.id.as_str(), created.revision), ("a", 1));
        assert_eq!(
            (created.as2_from.as_str(), created.as2_to.as_str()),
            ("from", "to")
        );
        assert!(created.previous_as2_from.is_empty());

        assert!(
            store
                .create(partnership("b", "from", "to"), "test")
                .await
                .is_err()
        );
        assert!(
            store
                .update(partnership("a", "x", "y"), 7, later(), "test")
                .await
                .is_err()
        );
        assert!(store.delete("missing", 0, "test").await.is_err());
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));

        store
            .update(partnership("a", "renamed", "to"), 1, later(), "test")
            .await
            .unwrap();
        let moved = next(&mut events);
        assert_eq!(moved.kind(), PartnershipEventKind::Upserted);
        assert_eq!(moved.revision, 2);
        assert_eq!(
            (
                moved.previous_as2_from.as_str(),
                moved.previous_as2_to.as_str()
            ),
            ("from", "to")
        );
        store
            .update(partnership("a", "renamed", "to"), 2, later(), "test")
            .await
            .unwrap();
        let same_pair = next(&mut events);
        assert_eq!(same_pair.revision, 3);
        assert!(same_pair.previous_as2_from.is_empty() && same_pair.previous_as2_to.is_empty());

        store.delete("a", 0, "test").await.unwrap();
        let deleted = next(&mut events);
        assert_eq!(deleted.kind(), PartnershipEventKind::Deleted);
        assert_eq!((deleted.id.as_str(), deleted.revision), ("a", 3));
        assert_eq!(deleted.as2_from, "renamed");
    }

    #[tokio::test]
    async fn separate_stores_share_nothing_and_clones_share_everything() {
        let first = store();
        let clone = first.clone();
        let other = store();
        let mut clone_events = clone.subscribe_in_process().unwrap();
        let mut other_events = other.subscribe_in_process().unwrap();
        first
            .create(partnership("a", "from", "to"), "test")
            .await
            .unwrap();
        assert_eq!(clone.get("a").await.unwrap().id, "a");
        assert_eq!(next(&mut clone_events).id, "a");
        assert!(other.get("a").await.is_err());
        assert!(other_events.try_recv().is_err());
    }
}
