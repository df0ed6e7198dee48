//! Redis setup: the shared connection (one server, or a Redis Cluster) and the key
//! namespace.
//!
//! The Redis URL chooses the topology: `redis://` and `rediss://` name one server
//! (standalone, or the current master behind a Sentinel-managed address),
//! `redis+cluster://host:port,host:port,...` the seed nodes of a Redis Cluster, and
//! `memory://` keeps the state in the process. Every service talks to either through
//! [`RedisConnection`].
//!
//! In a cluster, a script or transaction may only touch keys of one hash slot. Each
//! service's keys that its scripts use together therefore share a hash tag
//! ([`KeyGroup`]); [`layout`] moves the keys of a deployment made before the tags
//! existed, and [`acl`] derives the per-service Redis users from the same groups.

pub mod acl;
pub mod layout;

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisConfig;

pub use redis::Client as RedisClient;

/// The scheme of a Redis URL that names the seed nodes of a Redis Cluster:
/// `redis+cluster://[user:password@]host:port[,host:port...]/`.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Why Redis could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not parse.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    /// A `redis+cluster://` URL that names no usable node list.
    #[error("invalid redis cluster url: {0}")]
    InvalidClusterUrl(String),
    /// The key prefix is not usable.
    #[error("invalid redis key prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as configured.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The first connection failed.
    #[error("cannot connect to redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// The TLS settings are incomplete or do not load.
    #[error("redis tls: {0}")]
    Tls(String),
    /// Moving the keys of an older layout failed.
    #[error("redis key layout migration: {0}")]
    Migration(#[source] redis::RedisError),
}

/// The shared connection for commands, to one Redis server or to a Redis Cluster.
///
/// Cheap to clone; clones share the connection. Both kinds reconnect by themselves; a
/// cluster connection also follows slot moves (`MOVED`, `ASK`) and failovers.
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "held once per store and cloned; boxing would only add a deref"
)]
pub enum RedisConnection {
    /// One server (`redis://`, `rediss://`).
    Standalone(ConnectionManager),
    /// A Redis Cluster (`redis+cluster://`).
    Cluster(ClusterConnection),
}

impl RedisConnection {
    /// The connection manager of a standalone server; `None` for a cluster.
    pub fn as_standalone(&self) -> Option<&ConnectionManager> {
        match self {
            Self::Standalone(manager) => Some(manager),
            Self::Cluster(_) => None,
        }
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(manager) => manager.req_packed_command(cmd),
            Self::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(manager) => manager.req_packed_commands(pipeline, offset, count),
            Self::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(manager) => manager.get_db(),
            Self::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// A connected Redis: the shared connection, and what makes further connections (such
/// as pub/sub subscriptions and blocking reads).
#[derive(Clone)]
pub struct Redis {
    /// The shared connection for commands; cheap to clone.
    pub connection: RedisConnection,
    /// Where this service's keys live.
    pub namespace: KeyNamespace,
    topology: Topology,
}

/// What further connections are made from.
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per service, made once at start-up"
)]
enum Topology {
    Standalone(RedisClient),
    Cluster {
        client: ClusterClient,
        /// One client per seed node, for pub/sub: a message published on any node of a
        /// cluster reaches the subscribers of every node.
        nodes: Vec<RedisClient>,
    },
}

impl Redis {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// Clients for pub/sub subscriptions, to try in turn: the server, or each seed node
    /// of a cluster (classic pub/sub reaches the subscribers of every node).
    pub fn pubsub_clients(&self) -> Vec<RedisClient> {
        match &self.topology {
            Topology::Standalone(client) => vec![client.clone()],
            Topology::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    /// A further connection to the same Redis, for commands that must not share the
    /// multiplexed one (blocking reads), with its own response timeout.
    pub async fn connect_another(
        &self,
        config: &RedisConfig,
        response_timeout: Duration,
    ) -> Result<RedisConnection, redis::RedisError> {
        match &self.topology {
            Topology::Standalone(client) => connect_manager(client, config, response_timeout)
                .await
                .map(RedisConnection::Standalone),
            Topology::Cluster { nodes, .. } => {
                let client = cluster_client(nodes_of(nodes), config, response_timeout)?;
                client
                    .get_async_connection()
                    .await
                    .map(RedisConnection::Cluster)
            }
        }
    }

    /// The cluster client, for tests that need one of their own.
    pub fn cluster_client(&self) -> Option<&ClusterClient> {
        match &self.topology {
            Topology::Standalone(_) => None,
            Topology::Cluster { client, .. } => Some(client),
        }
    }
}

/// The Redis URL that keeps a service's state in its own process instead of Redis.
///
/// Meant for trying the gateway out (the single-process quick start uses it): the state
/// is lost when the process stops and cannot be shared, so a service configured with it
/// must run as a single replica.
pub const IN_MEMORY_URL: &str = "memory://";

/// Where a service keeps its shared state, as its Redis URL selects.
#[derive(Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per service, made once at start-up; boxing would only add a deref"
)]
pub enum StateBackend {
    /// A real Redis (one server or a cluster), shared by every replica.
    Redis(Redis),
    /// The process's own memory ([`IN_MEMORY_URL`]).
    InMemory {
        /// The configured key prefix (kept so that logs and listings look the same).
        namespace: KeyNamespace,
    },
}

impl StateBackend {
    /// The key namespace of either backend.
    pub fn namespace(&self) -> &KeyNamespace {
        match self {
            Self::Redis(redis) => &redis.namespace,
            Self::InMemory { namespace } => namespace,
        }
    }

    /// A short name for logs: `redis`, `redis-cluster` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(redis) if redis.is_cluster() => "redis-cluster",
            Self::Redis(_) => "redis",
            Self::InMemory { .. } => "memory",
        }
    }
}

/// Whether `config` selects in-process state ([`IN_MEMORY_URL`]).
pub fn is_in_memory(config: &RedisConfig) -> bool {
    config.redis_url.trim_end_matches('/') == IN_MEMORY_URL.trim_end_matches('/')
}

/// Connects to Redis as `config` says, or sets up in-process state for
/// [`IN_MEMORY_URL`].
pub async fn connect_state(config: &RedisConfig) -> Result<StateBackend, RedisSetupError> {
    if is_in_memory(config) {
        let namespace = KeyNamespace::new(&config.redis_key_prefix)?;
        tracing::warn!(
            "state is kept in this process (redis url {IN_MEMORY_URL}): it is lost on exit and this \
             service must run as a single replica"
        );
        return Ok(StateBackend::InMemory { namespace });
    }
    connect(config).await.map(StateBackend::Redis)
}

/// Connects to Redis (one server, or a cluster for a `redis+cluster://` URL) as `config`
/// says and checks the connection.
pub async fn connect(config: &RedisConfig) -> Result<Redis, RedisSetupError> {
    let namespace = KeyNamespace::new(&config.redis_key_prefix)?;
    if let Some(nodes) = cluster_nodes(&config.redis_url)? {
        namespace.check_for_cluster()?;
        if [
            &config.redis_tls_ca,
            &config.redis_tls_cert,
            &config.redis_tls_key,
        ]
        .iter()
        .any(|file| file.is_some())
        {
            return Err(RedisSetupError::Tls(
                "TLS to a Redis Cluster is not supported yet: AS2_REDIS_TLS_* files need a \
                 rediss:// url"
                    .to_owned(),
            ));
        }
        let node_clients = nodes
            .iter()
            .map(|node| RedisClient::open(node.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RedisSetupError::InvalidUrl)?;
        let client = cluster_client(nodes, config, config.response_timeout())
            .map_err(RedisSetupError::InvalidUrl)?;
        let connection = client
            .get_async_connection()
            .await
            .map_err(RedisSetupError::Connect)?;
        let mut connection = RedisConnection::Cluster(connection);
        // The cluster connection is made lazily per node; one command shows it works.
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(RedisSetupError::Connect)?;
        return Ok(Redis {
            connection,
            namespace,
            topology: Topology::Cluster {
                client,
                nodes: node_clients,
            },
        });
    }
    let client = client(config)?;
    let connection = connect_manager(&client, config, config.response_timeout())
        .await
        .map_err(RedisSetupError::Connect)?;
    Ok(Redis {
        connection: RedisConnection::Standalone(connection),
        namespace,
        topology: Topology::Standalone(client),
    })
}

/// The node URLs of a `redis+cluster://` URL (`redis://[user:password@]host:port/` each);
/// `None` for any other URL.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, RedisSetupError> {
    let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
        if url.starts_with("rediss+cluster://") {
            return Err(RedisSetupError::Tls(
                "TLS to a Redis Cluster (rediss+cluster://) is not supported yet".to_owned(),
            ));
        }
        return Ok(None);
    };
    let invalid = |reason: &str| RedisSetupError::InvalidClusterUrl(reason.to_owned());
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !path.is_empty() && path != "0" {
        return Err(invalid(
            "a Redis Cluster has database 0 only: end the url with / or nothing",
        ));
    }
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| match credentials {
            Some(credentials) => format!("redis://{credentials}@{host}/"),
            None => format!("redis://{host}/"),
        })
        .collect();
    if nodes.is_empty() {
        return Err(invalid(
            "it names no node (redis+cluster://host:port,host:port/)",
        ));
    }
    Ok(Some(nodes))
}

/// The URLs of the seed nodes that `clients` were made from.
fn nodes_of(clients: &[RedisClient]) -> Vec<redis::ConnectionInfo> {
    clients
        .iter()
        .map(|client| client.get_connection_info().clone())
        .collect()
}

/// A cluster client over `nodes` with the timeouts of `config` (commands: `response_timeout`).
fn cluster_client(
    nodes: impl IntoIterator<Item = impl redis::IntoConnectionInfo>,
    config: &RedisConfig,
    response_timeout: Duration,
) -> Result<ClusterClient, redis::RedisError> {
    ClusterClient::builder(nodes)
        .connection_timeout(config.connect_timeout())
        .response_timeout(response_timeout)
        .build()
}

/// The client for `config`: `rediss://` with the configured CA bundle and client
/// certificate (TLS through OpenSSL), or plain `redis://`.
fn client(config: &RedisConfig) -> Result<RedisClient, RedisSetupError> {
    let url = config.redis_url.as_str();
    let tls_files = [
        &config.redis_tls_ca,
        &config.redis_tls_cert,
        &config.redis_tls_key,
    ];
    if tls_files.iter().all(|file| file.is_none()) {
        return RedisClient::open(url).map_err(RedisSetupError::InvalidUrl);
    }
    if !url.starts_with("rediss://") {
        return Err(RedisSetupError::Tls(
            "AS2_REDIS_TLS_* files are set but the redis url is not rediss://".to_owned(),
        ));
    }
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|error| {
            RedisSetupError::Tls(format!("cannot read {}: {error}", path.display()))
        })
    };
    let client_tls = match (&config.redis_tls_cert, &config.redis_tls_key) {
        (Some(certificate), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(certificate)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(RedisSetupError::Tls(
                "AS2_REDIS_TLS_CERT and AS2_REDIS_TLS_KEY go together".to_owned(),
            ));
        }
    };
    let root_cert = config.redis_tls_ca.as_ref().map(read).transpose()?;
    RedisClient::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(RedisSetupError::InvalidUrl)
}

/// A reconnecting connection to one server with its own response timeout.
async fn connect_manager(
    client: &RedisClient,
    config: &RedisConfig,
    response_timeout: Duration,
) -> Result<ConnectionManager, redis::RedisError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_response_timeout(Some(response_timeout))
        // A reconnect whose attempts all fail leaves the manager holding the failed
        // attempt, and redis-rs starts a new one only after an I/O error (not after a
        // timeout), so retry long enough to ride out a Redis restart.
        .set_number_of_retries(8)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), manager_config).await
}

/// The groups of keys that scripts use together: in a Redis Cluster each group's keys
/// share a hash tag, so they live in one slot.
///
/// | group | keys | hash tag |
/// |---|---|---|
/// | [`Partnerships`](Self::Partnerships) | routing: partnerships, the pair index, the id set, the audit stream | `{partnership}` |
/// | [`MdnDelivery`](Self::MdnDelivery) | mdn: deliveries, the job stream, retries, the indexes | `{mdn}` |
/// | [`Outbound`](Self::Outbound) | sender: messages, awaiting MDNs, the receipt outbox | `{sender}` |
/// | [`Dedup`](Self::Dedup) | edge: one record per message, every script touches one key | none: spread over all slots |
///
/// One slot per group keeps each group's atomic scripts possible in a cluster (the
/// pair index, the job stream and the outbox are shared by all of a group's records);
/// the dedup records, which carry most of the inbound traffic, stay spread over every
/// node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyGroup {
    /// The routing service's partnerships.
    Partnerships,
    /// The mdn service's delivery jobs.
    MdnDelivery,
    /// The sender's outbound messages.
    Outbound,
    /// The edge's dedup records.
    Dedup,
}

impl KeyGroup {
    /// Every group.
    pub const ALL: [Self; 4] = [
        Self::Partnerships,
        Self::MdnDelivery,
        Self::Outbound,
        Self::Dedup,
    ];

    /// The word after the prefix: inside braces as the hash tag for the tagged groups.
    fn word(self) -> &'static str {
        match self {
            Self::Partnerships => "partnership",
            Self::MdnDelivery => "mdn",
            Self::Outbound => "sender",
            Self::Dedup => "dedup",
        }
    }

    /// The group's hash tag (`partnership`, `mdn`, `sender`); `None` for dedup records,
    /// which are spread over all slots.
    pub fn hash_tag(self) -> Option<&'static str> {
        match self {
            Self::Dedup => None,
            _ => Some(self.word()),
        }
    }

    /// `{prefix}:{tag}{rest}` (for dedup `{prefix}:dedup{rest}`): `rest` starts with the
    /// separator, e.g. `:jobs` or `-pairs`.
    pub fn key(self, namespace: &KeyNamespace, rest: impl fmt::Display) -> String {
        match self.hash_tag() {
            Some(tag) => format!("{}:{{{tag}}}{rest}", namespace.prefix()),
            None => format!("{}:{}{rest}", namespace.prefix(), self.word()),
        }
    }

    /// The glob (as ACL key patterns and SCAN take it) of every key of the group.
    pub fn pattern(self, namespace: &KeyNamespace) -> String {
        let prefix = glob_escape(namespace.prefix());
        match self.hash_tag() {
            Some(tag) => format!("{prefix}:{{{tag}}}*"),
            None => format!("{prefix}:{}:*", self.word()),
        }
    }

    /// The glob of the group's keys in the layout before hash tags (what
    /// [`layout`] moves); `None` for dedup records, whose keys did not change.
    pub fn legacy_pattern(self, namespace: &KeyNamespace) -> Option<String> {
        let prefix = glob_escape(namespace.prefix());
        match self {
            // `{p}:partnership:{id}`, `{p}:partnership-pairs`, `-ids`, `-audit`.
            Self::Partnerships => Some(format!("{prefix}:partnership*")),
            Self::MdnDelivery | Self::Outbound => Some(format!("{prefix}:{}:*", self.word())),
            Self::Dedup => None,
        }
    }
}

/// `text` with the glob characters of Redis patterns (`*?[]\`) escaped.
pub fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// The prefix that every key and channel of one gateway starts with.
///
/// Keys are `{prefix}:{kind}:{rest}`; see each service's docs for its kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyNamespace {
    prefix: String,
}

impl KeyNamespace {
    /// Accepts 1 to 64 printable ASCII characters without spaces.
    pub fn new(prefix: &str) -> Result<Self, RedisSetupError> {
        let invalid = |reason| RedisSetupError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        };
        if prefix.is_empty() || prefix.len() > 64 {
            return Err(invalid("must be 1 to 64 characters"));
        }
        if !prefix.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(invalid("must be printable ascii without spaces"));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:{suffix}`.
    pub fn key(&self, suffix: impl fmt::Display) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// In a Redis Cluster, braces in the prefix would take the place of the groups' hash
    /// tags (and `{}` would leave keys without one), so they are refused there.
    fn check_for_cluster(&self) -> Result<(), RedisSetupError> {
        if self.prefix.contains(['{', '}']) {
            return Err(RedisSetupError::InvalidPrefix {
                prefix: self.prefix.clone(),
                reason: "must not contain { or } with a Redis Cluster (they are hash tags)",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed() {
        let namespace = KeyNamespace::new("as2").unwrap();
        assert_eq!(namespace.key("partnership:abc"), "as2:partnership:abc");
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        assert!(KeyNamespace::new("").is_err());
        assert!(KeyNamespace::new("has space").is_err());
        assert!(KeyNamespace::new(&"x".repeat(65)).is_err());
    }

    #[tokio::test]
    async fn memory_url_selects_in_process_state() {
        for url in ["memory://", "memory:///"] {
            let state = connect_state(&RedisConfig::new(url, "quick"))
                .await
                .unwrap();
            assert_eq!(state.kind(), "memory");
            assert_eq!(state.namespace().prefix(), "quick");
        }
        let bad_prefix = connect_state(&RedisConfig::new("memory://", "has space")).await;
        assert!(matches!(
            bad_prefix,
            Err(RedisSetupError::InvalidPrefix { .. })
        ));
    }

    #[tokio::test]
    async fn rediss_verifies_the_server_and_presents_a_client_certificate() {
        use crate::grpc::local_ca::{LocalCa, Validity};
        use crate::grpc::tls::CredentialFiles;
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path(), "redis test CA").unwrap();
        let server_files = ca
            .ensure_credential(dir.path(), "redis", "redis", &["127.0.0.1"])
            .unwrap();
        let client_files = ca
            .ensure_credential(dir.path(), "edge", "edge", &[])
            .unwrap();
        let server = as2_testkit::RedisServer::start_tls(
            &server_files.certificate,
            &server_files.key,
            &server_files.ca,
            true,
        );
        assert!(server.url().starts_with("rediss://"));
        let mut config = RedisConfig::new(server.url(), "tls");
        config.redis_tls_ca = Some(client_files.ca.clone());
        config.redis_tls_cert = Some(client_files.certificate.clone());
        config.redis_tls_key = Some(client_files.key.clone());
        let redis = connect(&config).await.unwrap();
        let pong: String = redis::cmd("PING")
            .query_async(&mut redis.connection.clone())
            .await
            .unwrap();
        assert_eq!(pong, "PONG");

        // Without the client certificate the server refuses; without our CA the server's
        // certificate does not verify; TLS files with a redis:// URL are a mistake.
        let mut fast = RedisConfig::new(server.url(), "tls");
        fast.redis_connect_timeout_ms = 1_000;
        fast.redis_response_timeout_ms = 1_000;
        let without_client = RedisConfig {
            redis_tls_ca: Some(client_files.ca.clone()),
            ..fast.clone()
        };
        assert!(connect(&without_client).await.is_err());
        let other = tempfile::tempdir().unwrap();
        let other_ca = LocalCa::load_or_create(other.path(), "another CA").unwrap();
        let stranger = CredentialFiles {
            certificate: client_files.certificate.clone(),
            key: client_files.key.clone(),
            ca: other.path().join("ca.crt"),
        };
        other_ca
            .write_credential(
                &CredentialFiles {
                    certificate: other.path().join("x.crt"),
                    key: other.path().join("x.key"),
                    ca: stranger.ca.clone(),
                },
                "x",
                &[],
                Validity::default(),
            )
            .unwrap();
        std::fs::write(&stranger.ca, other_ca.certificate_pem().unwrap()).unwrap();
        let wrong_ca = RedisConfig {
            redis_tls_ca: Some(stranger.ca.clone()),
            redis_tls_cert: Some(stranger.certificate.clone()),
            redis_tls_key: Some(stranger.key.clone()),
            ..fast.clone()
        };
        assert!(connect(&wrong_ca).await.is_err());
        let plain_url = RedisConfig {
            redis_url: "redis://127.0.0.1:1/".to_owned(),
            redis_tls_ca: Some(client_files.ca),
            ..fast
        };
        assert!(matches!(
            connect(&plain_url).await,
            Err(RedisSetupError::Tls(_))
        ));
    }

    #[tokio::test]
    async fn connects_to_a_real_redis() {
        let server = as2_testkit::RedisServer::start();
        let redis = connect(&RedisConfig::new(server.url(), "test"))
            .await
            .unwrap();
        let mut connection = redis.connection.clone();
        let pong: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(pong, "PONG");
    }

    #[tokio::test]
    async fn unreachable_redis_is_a_connect_error() {
        let port = as2_testkit::free_port();
        let mut config = RedisConfig::new(format!("redis://127.0.0.1:{port}/"), "test");
        config.redis_connect_timeout_ms = 500;
        let result = connect(&config).await;
        assert!(matches!(result, Err(RedisSetupError::Connect(_))));
    }
}
