//! Partnerships in Redis.
//!
//! Key layout (`{p}` is the configured key prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:partnership:{id}` | hash | `doc` (the protobuf-encoded `Partnership`), `revision`, `pair` |
//! | `{p}:partnership-pairs` | hash | field `"{as2_from}\n{as2_to}"` -> id (the resolve index) |
//! | `{p}:partnership-ids` | sorted set | every id with score 0, ordered for paging |
//! | `{p}:partnership-events` | pub/sub channel | protobuf-encoded `PartnershipEvent`s |
//!
//! A newline separates the pair because AS2 IDs are printable ASCII and cannot
//! contain one. Every change runs as one Lua script that checks the revision
//! and the pair index, writes the hash, the index and the id set, and publishes
//! the change event: two replicas racing to create the same pair cannot both
//! succeed, and no change is stored without its event being published.

use std::time::SystemTime;

use as2_common::redis::KeyNamespace;
use as2_rpc::prost::Message as _;
use as2_rpc::routing::v1::{Partnership, PartnershipEvent, PartnershipEventKind};
use redis::AsyncCommands as _;
use redis::Script;
use redis::aio::ConnectionManager;

/// How often an unconditional update or delete is retried when another writer
/// changes the partnership between our read and our write.
const UNCONDITIONAL_WRITE_ATTEMPTS: usize = 5;

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

/// One page of a listing.
#[derive(Debug, Default)]
pub struct PartnershipPage {
    /// The partnerships, ordered by id.
    pub partnerships: Vec<Partnership>,
    /// The last id of this page when more may follow.
    pub next_after: Option<String>,
}

const CREATE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index, id set
-- ARGV: id, pair, doc, channel, event
if redis.call('EXISTS', KEYS[1]) == 1 then return 'id_taken' end
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder then return 'pair_taken:' .. holder end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'revision', '1', 'pair', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 'ok'
";

const UPDATE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index
-- ARGV: id, expected revision, new revision, new pair, doc, channel, event
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
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 'ok'
";

const DELETE_SCRIPT: &str = r"
-- KEYS: partnership hash, pair index, id set
-- ARGV: id, expected revision, channel, event
local current = redis.call('HMGET', KEYS[1], 'revision', 'pair')
if not current[1] then return 'not_found' end
if current[1] ~= ARGV[2] then return 'conflict:' .. current[1] end
redis.call('DEL', KEYS[1])
if redis.call('HGET', KEYS[2], current[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], current[2])
end
redis.call('ZREM', KEYS[3], ARGV[1])
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

/// Reads and writes partnerships in Redis.
#[derive(Clone)]
pub struct PartnershipStore {
    connection: ConnectionManager,
    namespace: KeyNamespace,
    create_script: std::sync::Arc<Script>,
    update_script: std::sync::Arc<Script>,
    delete_script: std::sync::Arc<Script>,
}

impl PartnershipStore {
    /// A store using `connection`, with keys under `namespace`.
    pub fn new(connection: ConnectionManager, namespace: KeyNamespace) -> Self {
        Self {
            connection,
            namespace,
            create_script: std::sync::Arc::new(Script::new(CREATE_SCRIPT)),
            update_script: std::sync::Arc::new(Script::new(UPDATE_SCRIPT)),
            delete_script: std::sync::Arc::new(Script::new(DELETE_SCRIPT)),
        }
    }

    /// The pub/sub channel that change events are published on.
    pub fn events_channel(&self) -> String {
        self.namespace.key("partnership-events")
    }

    fn partnership_key(&self, id: &str) -> String {
        self.namespace.key(format_args!("partnership:{id}"))
    }

    fn pair_index_key(&self) -> String {
        self.namespace.key("partnership-pairs")
    }

    fn id_set_key(&self) -> String {
        self.namespace.key("partnership-ids")
    }

    /// Stores a new, validated partnership with id and timestamps set; its
    /// revision becomes 1.
    pub async fn create(&self, mut partnership: Partnership) -> Result<Partnership, StoreError> {
        partnership.revision = 1;
        let event = change_event(PartnershipEventKind::Upserted, &partnership, None);
        let reply: String = self
            .create_script
            .key(self.partnership_key(&partnership.id))
            .key(self.pair_index_key())
            .key(self.id_set_key())
            .arg(&partnership.id)
            .arg(pair_field(&partnership.as2_from, &partnership.as2_to))
            .arg(partnership.encode_to_vec())
            .arg(self.events_channel())
            .arg(event.encode_to_vec())
            .invoke_async(&mut self.connection.clone())
            .await?;
        match ScriptReply::parse(&reply)? {
            ScriptReply::Ok => Ok(partnership),
            ScriptReply::IdTaken => Err(StoreError::IdTaken { id: partnership.id }),
            ScriptReply::PairTaken(existing_id) => Err(StoreError::PairTaken {
                as2_from: partnership.as2_from,
                as2_to: partnership.as2_to,
                existing_id,
            }),
            ScriptReply::NotFound | ScriptReply::Conflict(_) => {
                Err(StoreError::UnexpectedReply(reply))
            }
        }
    }

    /// Replaces the settings of partnership `replacement.id` with those of
    /// `replacement` (validated), keeping its creation time. With
    /// `expected_revision` 0 the update applies to whatever revision is stored.
    pub async fn update(
        &self,
        replacement: Partnership,
        expected_revision: u64,
        now: SystemTime,
    ) -> Result<Partnership, StoreError> {
        for _ in 0..UNCONDITIONAL_WRITE_ATTEMPTS {
            let current = self.get(&replacement.id).await?;
            if expected_revision != 0 && expected_revision != current.revision {
                return Err(StoreError::RevisionMismatch {
                    id: current.id,
                    expected: expected_revision,
                    current: current.revision,
                });
            }
            let updated = Partnership {
                revision: current.revision + 1,
                created_at: current.created_at,
                updated_at: Some(now.into()),
                ..replacement.clone()
            };
            let previous_pair = (current.as2_from != updated.as2_from
                || current.as2_to != updated.as2_to)
                .then_some((current.as2_from.as_str(), current.as2_to.as_str()));
            let event = change_event(PartnershipEventKind::Upserted, &updated, previous_pair);
            let reply: String = self
                .update_script
                .key(self.partnership_key(&updated.id))
                .key(self.pair_index_key())
                .arg(&updated.id)
                .arg(current.revision.to_string())
                .arg(updated.revision.to_string())
                .arg(pair_field(&updated.as2_from, &updated.as2_to))
                .arg(updated.encode_to_vec())
                .arg(self.events_channel())
                .arg(event.encode_to_vec())
                .invoke_async(&mut self.connection.clone())
                .await?;
            match ScriptReply::parse(&reply)? {
                ScriptReply::Ok => return Ok(updated),
                ScriptReply::NotFound => return Err(StoreError::NotFound { id: updated.id }),
                ScriptReply::PairTaken(existing_id) => {
                    return Err(StoreError::PairTaken {
                        as2_from: updated.as2_from,
                        as2_to: updated.as2_to,
                        existing_id,
                    });
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
    /// `expected_revision` 0 whatever revision is stored is deleted.
    pub async fn delete(
        &self,
        id: &str,
        expected_revision: u64,
    ) -> Result<Partnership, StoreError> {
        for _ in 0..UNCONDITIONAL_WRITE_ATTEMPTS {
            let current = self.get(id).await?;
            if expected_revision != 0 && expected_revision != current.revision {
                return Err(StoreError::RevisionMismatch {
                    id: current.id,
                    expected: expected_revision,
                    current: current.revision,
                });
            }
            let event = change_event(PartnershipEventKind::Deleted, &current, None);
            let reply: String = self
                .delete_script
                .key(self.partnership_key(id))
                .key(self.pair_index_key())
                .key(self.id_set_key())
                .arg(id)
                .arg(current.revision.to_string())
                .arg(self.events_channel())
                .arg(event.encode_to_vec())
                .invoke_async(&mut self.connection.clone())
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
        let doc: Option<Vec<u8>> = self
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
        let id: Option<String> = self
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
        let min = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut connection = self.connection.clone();
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
