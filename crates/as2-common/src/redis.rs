//! Redis setup: the shared connection and the key namespace.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisConfig;

pub use redis::Client as RedisClient;

/// Why Redis could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not parse.
    #[error("invalid redis url: {0}")]
    InvalidUrl(#[source] redis::RedisError),
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
}

/// A connected Redis: the client (for dedicated connections such as pub/sub)
/// and the shared multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct Redis {
    /// For connections that cannot be shared, such as pub/sub subscriptions.
    pub client: RedisClient,
    /// The shared connection for commands; cheap to clone.
    pub connection: ConnectionManager,
    /// Where this service's keys live.
    pub namespace: KeyNamespace,
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
    /// A real Redis, shared by every replica.
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

    /// A short name for logs: `redis` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self {
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

/// Connects to Redis as `config` says and checks the connection.
pub async fn connect(config: &RedisConfig) -> Result<Redis, RedisSetupError> {
    let namespace = KeyNamespace::new(&config.redis_key_prefix)?;
    let client = client(config)?;
    let connection = connect_manager(&client, config, config.response_timeout())
        .await
        .map_err(RedisSetupError::Connect)?;
    Ok(Redis {
        client,
        connection,
        namespace,
    })
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

/// A further reconnecting connection to the same Redis, for commands that must not share
/// the multiplexed one (blocking reads), with its own response timeout.
pub async fn connect_manager(
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
