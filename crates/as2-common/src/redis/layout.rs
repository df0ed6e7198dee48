//! Moving a deployment's keys from the layout before hash tags to the current one.
//!
//! Versions before the Redis Cluster support kept every key as `{prefix}:{kind}...`
//! (`as2:partnership:acme`, `as2:mdn:jobs`, `as2:sender:awaiting-mdn`). Now the keys
//! that scripts use together share a hash tag ([`KeyGroup`]): the first word is put in
//! braces (`as2:{partnership}:acme`, `as2:{mdn}:jobs`, `as2:{sender}:awaiting-mdn`).
//! The edge's dedup records (`as2:dedup:...`) did not change.
//!
//! Each service moves its own group when it starts ([`LayoutMigration::run`]), before
//! it serves:
//!
//! - a version key (`{prefix}:{tag}-layout`, the lock beside it `-layout-lock`) says the group was moved; with it set and
//!   none of the group's old fixed keys present, the start costs one `GET` and one
//!   `EXISTS`;
//! - otherwise the replica takes a lock (`SET NX PX`, renewed while it works), so that
//!   replicas starting together move the keys once; the others wait for the lock and
//!   then find nothing left to do;
//! - every key is moved by one script: `RENAMENX` when the new name is free (atomic,
//!   keeps the TTL, a stream keeps its consumer groups and pending entries); when both
//!   names exist (an older replica wrote under the old name after a newer one moved the
//!   group), index hashes and sorted sets are merged (the entries of the new name win),
//!   stream entries are appended (with their old id in a field `migrated_id`), and of a
//!   record kept under both names the one further along wins ([`Precedence`]).
//!
//! While older replicas still run (a rolling upgrade), they go on writing old names.
//! [`LayoutMigration::watch`] therefore looks for the old fixed keys every 30 s and
//! moves whatever appeared, so nothing an older replica writes is left behind.
//!
//! A Redis Cluster never holds the old layout (versions without cluster support could
//! not use one), so there is nothing to move there.

use std::time::{Duration, Instant};

use redis::Script;
use tokio_util::sync::CancellationToken;

use super::{KeyGroup, KeyNamespace, Redis, RedisConnection, glob_escape};

/// The layout version the current code writes.
pub const LAYOUT_VERSION: u32 = 2;

/// How long a migration lock lives without renewal.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// The longest a replica waits for another one's migration.
const LOCK_WAIT: Duration = Duration::from_secs(300);
/// Keys asked for per SCAN round trip.
const SCAN_COUNT: usize = 500;
/// How often [`LayoutMigration::watch`] looks for keys written under old names.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(30);

/// Moves one key (old name to new name) as the module docs say.
///
/// KEYS: old name, new name. ARGV: precedence field ('' for index keys), 'number' or
/// 'rank', then the ranked values, lowest first.
const MOVE_SCRIPT: &str = r"
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 'absent' end
if redis.call('RENAMENX', KEYS[1], KEYS[2]) == 1 then return 'moved' end
local function rank(value)
  if not value then return -1 end
  if ARGV[2] == 'number' then return tonumber(value) or -1 end
  for index = 3, #ARGV do
    if ARGV[index] == value then return index end
  end
  return -1
end
if kind == 'hash' and ARGV[1] ~= '' then
  local old = rank(redis.call('HGET', KEYS[1], ARGV[1]))
  local new = rank(redis.call('HGET', KEYS[2], ARGV[1]))
  if old > new then
    redis.call('RENAME', KEYS[1], KEYS[2])
    return 'replaced'
  end
  redis.call('DEL', KEYS[1])
  return 'dropped'
end
if redis.call('TYPE', KEYS[2]).ok ~= kind then
  return 'conflict:' .. kind .. ' and ' .. redis.call('TYPE', KEYS[2]).ok
end
if kind == 'hash' then
  local fields = redis.call('HGETALL', KEYS[1])
  for index = 1, #fields, 2 do
    redis.call('HSETNX', KEYS[2], fields[index], fields[index + 1])
  end
elseif kind == 'zset' then
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for index = 1, #members, 2 do
    redis.call('ZADD', KEYS[2], 'NX', members[index + 1], members[index])
  end
elseif kind == 'stream' then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    local fields = entry[2]
    table.insert(fields, 'migrated_id')
    table.insert(fields, entry[1])
    redis.call('XADD', KEYS[2], '*', unpack(fields))
  end
else
  return 'conflict:' .. kind
end
redis.call('DEL', KEYS[1])
return 'merged'
";

/// Deletes the lock if it is still ours. KEYS: lock. ARGV: token.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Renews the lock if it is still ours. KEYS: lock. ARGV: token, ttl ms.
const RENEW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// Which of two records of one entity (under the old and the new name) is kept.
#[derive(Clone, Copy, Debug)]
pub enum Precedence {
    /// Not records but index keys (sorted sets, hashes of fields): merged.
    Merge,
    /// The one with the larger number in this field (a revision).
    Number(&'static str),
    /// The one whose value of this field comes later in the list (states in the order
    /// a record goes through them).
    Rank(&'static str, &'static [&'static str]),
}

/// One fixed key: its old and its new name.
#[derive(Clone, Debug)]
struct KeyMove {
    old: String,
    new: String,
}

/// Keys of one kind found by SCAN: `{old_prefix}{rest}` becomes `{new_prefix}{rest}`.
#[derive(Clone, Debug)]
struct KeyFamily {
    old_prefix: String,
    new_prefix: String,
    precedence: Precedence,
}

/// How one service's key group moves to the tagged layout.
#[derive(Clone, Debug)]
pub struct LayoutMigration {
    group: KeyGroup,
    version_key: String,
    lock_key: String,
    fixed: Vec<KeyMove>,
    families: Vec<KeyFamily>,
}

/// What a migration did, by what the move script answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Renamed to a free new name.
    pub moved: u64,
    /// Merged into an existing key of the new name.
    pub merged: u64,
    /// A record under the old name that was further along replaced the new one.
    pub replaced: u64,
    /// A record under the old name that the new one superseded, deleted.
    pub dropped: u64,
    /// Old and new name of different types (left in place and logged).
    pub conflicts: u64,
    /// Nothing was looked at: the group was moved before and no old key is back, or
    /// this is a cluster, or another replica did the work.
    pub up_to_date: bool,
}

impl MigrationReport {
    /// Keys that changed name.
    pub fn changed(&self) -> u64 {
        self.moved + self.merged + self.replaced + self.dropped
    }
}

impl LayoutMigration {
    /// The migration of `group` in `namespace`: `fixed` are the group's keys of fixed
    /// names (`rest` as [`KeyGroup::key`] takes it, the old name being `{prefix}:{word}{rest}`
    /// with the hash tag's braces removed), `families` the kinds of per-record keys
    /// (`rest` prefixes such as `:delivery:`) and which record wins when both exist.
    pub fn new(
        group: KeyGroup,
        namespace: &KeyNamespace,
        fixed: &[&str],
        families: &[(&str, Precedence)],
    ) -> Self {
        let old = |rest: &str| format!("{}:{}{rest}", namespace.prefix(), group.word());
        Self {
            group,
            version_key: group.key(namespace, "-layout"),
            lock_key: group.key(namespace, "-layout-lock"),
            fixed: fixed
                .iter()
                .map(|rest| KeyMove {
                    old: old(rest),
                    new: group.key(namespace, rest),
                })
                .collect(),
            families: families
                .iter()
                .map(|(rest, precedence)| KeyFamily {
                    old_prefix: old(rest),
                    new_prefix: group.key(namespace, rest),
                    precedence: *precedence,
                })
                .collect(),
        }
    }

    /// The group it moves.
    pub fn group(&self) -> KeyGroup {
        self.group
    }

    /// The old names of the fixed keys (for tests that write the old layout).
    pub fn old_fixed_keys(&self) -> Vec<String> {
        self.fixed.iter().map(|key| key.old.clone()).collect()
    }

    /// Moves the group's keys unless that was done and none came back; see the module
    /// docs. Safe to run from several replicas at once.
    pub async fn run(&self, redis: &Redis) -> Result<MigrationReport, redis::RedisError> {
        let mut connection = redis.connection.clone();
        if connection.is_cluster() || self.is_up_to_date(&mut connection).await? {
            return Ok(MigrationReport {
                up_to_date: true,
                ..MigrationReport::default()
            });
        }
        let token = lock_token();
        let waited_since = Instant::now();
        loop {
            let locked: Option<String> = redis::cmd("SET")
                .arg(&self.lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis(LOCK_TTL))
                .query_async(&mut connection)
                .await?;
            if locked.is_some() {
                break;
            }
            if waited_since.elapsed() > LOCK_WAIT {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "another replica holds the key layout migration lock",
                    format!("{} held for over {LOCK_WAIT:?}", self.lock_key),
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let result = self.move_keys(&mut connection, &token).await;
        let _: i64 = Script::new(UNLOCK_SCRIPT)
            .key(&self.lock_key)
            .arg(&token)
            .invoke_async(&mut connection)
            .await?;
        let report = result?;
        if report.changed() > 0 || report.conflicts > 0 {
            tracing::info!(
                group = ?self.group,
                moved = report.moved,
                merged = report.merged,
                replaced = report.replaced,
                dropped = report.dropped,
                conflicts = report.conflicts,
                "moved redis keys to the hash-tagged layout"
            );
        }
        Ok(report)
    }

    /// Every [`WATCH_INTERVAL`] until `stop`: moves keys that older replicas wrote under
    /// the old names after the start's migration (a rolling upgrade).
    pub async fn watch(self, redis: Redis, stop: CancellationToken) {
        if redis.is_cluster() {
            return;
        }
        let mut connection = redis.connection.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            match self.old_keys_exist(&mut connection).await {
                Ok(false) => continue,
                Ok(true) => {}
                Err(error) => {
                    tracing::debug!(%error, "cannot look for keys of the old layout");
                    continue;
                }
            }
            match self.run(&redis).await {
                Ok(report) if report.changed() > 0 => tracing::warn!(
                    group = ?self.group,
                    keys = report.changed(),
                    "moved keys written under the old layout's names: is a replica of an \
                     older version still running?"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, group = ?self.group, "key layout migration failed")
                }
            }
        }
    }

    async fn is_up_to_date(
        &self,
        connection: &mut RedisConnection,
    ) -> Result<bool, redis::RedisError> {
        let version: Option<u32> = redis::cmd("GET")
            .arg(&self.version_key)
            .query_async(connection)
            .await?;
        Ok(version.is_some_and(|version| version >= LAYOUT_VERSION)
            && !self.old_keys_exist(connection).await?)
    }

    async fn old_keys_exist(
        &self,
        connection: &mut RedisConnection,
    ) -> Result<bool, redis::RedisError> {
        if self.fixed.is_empty() {
            return Ok(false);
        }
        let mut exists = redis::cmd("EXISTS");
        for key in &self.fixed {
            exists.arg(&key.old);
        }
        let count: u64 = exists.query_async(connection).await?;
        Ok(count > 0)
    }

    async fn move_keys(
        &self,
        connection: &mut RedisConnection,
        token: &str,
    ) -> Result<MigrationReport, redis::RedisError> {
        let script = Script::new(MOVE_SCRIPT);
        let mut report = MigrationReport::default();
        let mut last_renewal = Instant::now();
        for key in &self.fixed {
            let answer: String = script
                .key(&key.old)
                .key(&key.new)
                .arg("")
                .arg("")
                .invoke_async(connection)
                .await?;
            self.count(&mut report, &answer, &key.old);
        }
        for family in &self.families {
            let pattern = format!("{}*", glob_escape(&family.old_prefix));
            let mut cursor = 0_u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(connection)
                    .await?;
                for old in keys {
                    let Some(rest) = old.strip_prefix(&family.old_prefix) else {
                        continue;
                    };
                    let new = format!("{}{rest}", family.new_prefix);
                    let mut invocation = script.key(&old);
                    invocation.key(&new);
                    match family.precedence {
                        Precedence::Merge => {
                            invocation.arg("").arg("");
                        }
                        Precedence::Number(field) => {
                            invocation.arg(field).arg("number");
                        }
                        Precedence::Rank(field, order) => {
                            invocation.arg(field).arg("rank");
                            for value in order {
                                invocation.arg(*value);
                            }
                        }
                    }
                    let answer: String = invocation.invoke_async(connection).await?;
                    self.count(&mut report, &answer, &old);
                }
                if last_renewal.elapsed() > LOCK_TTL / 3 {
                    let _: i64 = Script::new(RENEW_SCRIPT)
                        .key(&self.lock_key)
                        .arg(token)
                        .arg(millis(LOCK_TTL))
                        .invoke_async(connection)
                        .await?;
                    last_renewal = Instant::now();
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let () = redis::cmd("SET")
            .arg(&self.version_key)
            .arg(LAYOUT_VERSION)
            .query_async(connection)
            .await?;
        Ok(report)
    }

    fn count(&self, report: &mut MigrationReport, answer: &str, old: &str) {
        match answer {
            "moved" => report.moved += 1,
            "merged" => report.merged += 1,
            "replaced" => report.replaced += 1,
            "dropped" => report.dropped += 1,
            "absent" => {}
            other => {
                report.conflicts += 1;
                tracing::warn!(
                    group = ?self.group,
                    key = old,
                    answer = other,
                    "a key of the old layout was left in place"
                );
            }
        }
    }
}

fn lock_token() -> String {
    let mut bytes = [0_u8; 16];
    openssl::rand::rand_bytes(&mut bytes).expect("openssl's random generator works");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Puts every key of `group` back under its name before hash tags and removes the
/// version key: the state a version before hash tags left behind (it wrote the same
/// values under those names). For upgrade tests; standalone Redis only. Returns how
/// many keys were renamed.
pub async fn rename_to_legacy_layout(
    redis: &Redis,
    group: KeyGroup,
) -> Result<u64, redis::RedisError> {
    let Some(tag) = group.hash_tag() else {
        return Ok(0);
    };
    let mut connection = redis.connection.clone();
    let tagged = format!("{}:{{{tag}}}", redis.namespace.prefix());
    let legacy = format!("{}:{tag}", redis.namespace.prefix());
    let migration_keys = [
        group.key(&redis.namespace, "-layout"),
        group.key(&redis.namespace, "-layout-lock"),
    ];
    let _: u64 = redis::cmd("DEL")
        .arg(&migration_keys)
        .query_async(&mut connection)
        .await?;
    let mut keys = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(group.pattern(&redis.namespace))
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut connection)
            .await?;
        keys.extend(found);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut renamed = 0;
    for key in keys {
        let Some(rest) = key.strip_prefix(&tagged) else {
            continue;
        };
        let () = redis::cmd("RENAME")
            .arg(&key)
            .arg(format!("{legacy}{rest}"))
            .query_async(&mut connection)
            .await?;
        renamed += 1;
    }
    Ok(renamed)
}
