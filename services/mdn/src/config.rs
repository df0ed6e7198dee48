//! The MDN service's configuration: flags, each also an `AS2_*` environment variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use as2_common::config::{
    AdminServerConfig, GrpcServerConfig, RedisConfig, ShutdownConfig, TelemetryConfig,
};
use as2_common::kafka::KafkaConfig;
use as2_partner::proxy::EgressProxy;
use clap::{Args, Parser};

/// Everything the MDN service needs to run.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "as2-mdn",
    version,
    about = "The AS2 gateway's asynchronous MDN delivery service"
)]
pub struct MdnConfig {
    /// gRPC listener (MdnDeliveryService and health).
    #[command(flatten)]
    pub grpc: GrpcServerConfig,
    /// Admin HTTP listener (/healthz, /readyz, /metrics).
    #[command(flatten)]
    pub admin: AdminServerConfig,
    /// Redis (jobs, schedule, status).
    #[command(flatten)]
    pub redis: RedisConfig,
    /// How deliveries are made and retried.
    #[command(flatten)]
    pub delivery: DeliveryConfig,
    /// Kafka brokers and client settings (status events).
    #[command(flatten)]
    pub kafka: KafkaConfig,
    /// Where status events go.
    #[command(flatten)]
    pub tracking: TrackingConfig,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Draining on SIGTERM.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl MdnConfig {
    /// A configuration for tests and embedding: listeners on ephemeral loopback ports,
    /// the given Redis and key prefix, no tracking topic, a short grace period.
    pub fn local(redis_url: impl Into<String>, redis_key_prefix: impl Into<String>) -> Self {
        let ephemeral = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            grpc: GrpcServerConfig::insecure_plaintext(ephemeral),
            admin: AdminServerConfig {
                http_listen: ephemeral,
            },
            redis: RedisConfig::new(redis_url, redis_key_prefix),
            delivery: DeliveryConfig::defaults(),
            kafka: KafkaConfig::default(),
            tracking: TrackingConfig::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig {
                shutdown_delay_secs: 0,
                shutdown_grace_secs: 5,
            },
        }
    }
}

/// Workers, timeouts and the retry policy.
#[derive(Args, Clone, Debug)]
pub struct DeliveryConfig {
    /// Deliveries this replica attempts at the same time. 0: this replica serves the
    /// gRPC API only and delivers nothing.
    #[arg(long = "mdn-workers", env = "AS2_MDN_WORKERS", default_value_t = 32)]
    pub workers: usize,

    /// Attempts per MDN (the first one included) before the delivery is recorded as
    /// failed.
    #[arg(
        long = "mdn-max-attempts",
        env = "AS2_MDN_MAX_ATTEMPTS",
        default_value_t = 10
    )]
    pub max_attempts: u32,

    /// Seconds after the enqueue when no further attempt is started; the delivery is
    /// then recorded as failed.
    #[arg(long = "mdn-max-age-secs", env = "AS2_MDN_MAX_AGE_SECS", default_value_t = 24 * 3600)]
    pub max_age_secs: u64,

    /// Delay before the second attempt, in milliseconds; each further delay doubles,
    /// with random jitter of up to half the delay.
    #[arg(
        long = "mdn-initial-backoff-ms",
        env = "AS2_MDN_INITIAL_BACKOFF_MS",
        default_value_t = 30_000
    )]
    pub initial_backoff_ms: u64,

    /// Longest delay between two attempts, in milliseconds.
    #[arg(
        long = "mdn-max-backoff-ms",
        env = "AS2_MDN_MAX_BACKOFF_MS",
        default_value_t = 3_600_000
    )]
    pub max_backoff_ms: u64,

    /// Milliseconds one attempt (connect, send, response) may take.
    #[arg(
        long = "mdn-attempt-timeout-ms",
        env = "AS2_MDN_ATTEMPT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub attempt_timeout_ms: u64,

    /// Milliseconds a job may stay unacknowledged by the replica that took it before
    /// another replica takes it over (the replica is presumed dead). Must exceed the
    /// attempt timeout.
    #[arg(
        long = "mdn-reclaim-idle-ms",
        env = "AS2_MDN_RECLAIM_IDLE_MS",
        default_value_t = 90_000
    )]
    pub reclaim_idle_ms: u64,

    /// Milliseconds between two looks for due retries and abandoned jobs.
    #[arg(
        long = "mdn-poll-interval-ms",
        env = "AS2_MDN_POLL_INTERVAL_MS",
        default_value_t = 500
    )]
    pub poll_interval_ms: u64,

    /// Seconds a delivery's record (status, and the MDN until it is sent) is kept.
    #[arg(long = "mdn-status-ttl-secs", env = "AS2_MDN_STATUS_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub status_ttl_secs: u64,

    /// Name of this replica in the Redis consumer group; default: the host name plus
    /// a random suffix, so a restarted pod never mistakes old jobs for its own.
    #[arg(long = "mdn-consumer-name", env = "AS2_MDN_CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// A PEM file of extra CA certificates trusted for https deliveries, next to the
    /// system's (not for partnerships that name their own CA certificates or pin the
    /// partner's certificate).
    #[arg(long = "mdn-tls-ca-file", env = "AS2_MDN_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Our keys: `<dir>/<key-id>/tls.key` and `tls.crt` (a mounted `kubernetes.io/tls`
    /// Secret per key). Only the TLS client certificates that partnerships name
    /// (`async_mdn.https.client_certificate_key_id`) are read from here.
    #[arg(
        long = "keys-dir",
        env = "AS2_KEYS_DIR",
        default_value = "/etc/as2/keys"
    )]
    pub keys_dir: PathBuf,

    /// An HTTP proxy (`http://host:port`) that deliveries are tunnelled through with
    /// CONNECT, to the address the service resolved and checked itself; a partnership's
    /// `async_mdn.https` may name another or bypass it. Unset: direct connections.
    #[arg(
        long = "egress-proxy-url",
        env = "AS2_EGRESS_PROXY_URL",
        value_parser = EgressProxy::parse
    )]
    pub egress_proxy: Option<EgressProxy>,
}

impl DeliveryConfig {
    /// Defaults as the flags have them.
    pub fn defaults() -> Self {
        Self {
            workers: 32,
            max_attempts: 10,
            max_age_secs: 24 * 3600,
            initial_backoff_ms: 30_000,
            max_backoff_ms: 3_600_000,
            attempt_timeout_ms: 30_000,
            reclaim_idle_ms: 90_000,
            poll_interval_ms: 500,
            status_ttl_secs: 7 * 24 * 3600,
            consumer_name: None,
            tls_ca_file: None,
            keys_dir: PathBuf::from("/etc/as2/keys"),
            egress_proxy: None,
        }
    }

    /// Timeout of one attempt.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    /// Idle time after which a job is taken over.
    pub fn reclaim_idle(&self) -> Duration {
        Duration::from_millis(self.reclaim_idle_ms)
    }

    /// Interval of the scheduler and the reclaimer.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }

    /// Checks the values that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("mdn-max-attempts must be at least 1".to_owned());
        }
        if self.reclaim_idle_ms <= self.attempt_timeout_ms {
            return Err(format!(
                "mdn-reclaim-idle-ms ({}) must exceed mdn-attempt-timeout-ms ({}), or live replicas lose their jobs to others",
                self.reclaim_idle_ms, self.attempt_timeout_ms
            ));
        }
        if self.status_ttl_secs < self.max_age_secs {
            return Err(format!(
                "mdn-status-ttl-secs ({}) must be at least mdn-max-age-secs ({})",
                self.status_ttl_secs, self.max_age_secs
            ));
        }
        Ok(())
    }
}

/// The default topic of the status events.
pub const DEFAULT_TRACKING_TOPIC: &str = "as2.mdn.tracking";

/// The Kafka topic that delivery status events are published to (the brokers are
/// [`MdnConfig::kafka`]; without them no events are published, the status in Redis is kept
/// either way).
#[derive(Args, Clone, Debug, Default)]
pub struct TrackingConfig {
    /// Topic of the status events (queued, delivered, retry-scheduled, failed); default
    /// `as2.mdn.tracking`. `--mdn-tracking-topic` and `AS2_MDN_TRACKING_TOPIC` are its old
    /// names and still work.
    #[arg(
        long = "kafka-tracking-topic",
        env = "AS2_KAFKA_TRACKING_TOPIC",
        alias = "mdn-tracking-topic"
    )]
    pub tracking_topic: Option<String>,

    /// The old variable of `--kafka-tracking-topic`.
    #[arg(
        long = "legacy-mdn-tracking-topic",
        env = "AS2_MDN_TRACKING_TOPIC",
        hide = true
    )]
    pub legacy_tracking_topic: Option<String>,
}

impl TrackingConfig {
    /// Events on `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            tracking_topic: Some(topic.into()),
            legacy_tracking_topic: None,
        }
    }

    /// The topic in force: the current name, else the old one, else the default.
    pub fn topic(&self) -> String {
        as2_common::kafka::legacy::resolve(
            self.tracking_topic.as_ref(),
            self.legacy_tracking_topic.as_ref(),
            DEFAULT_TRACKING_TOPIC.to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_defaults_function_matches_the_flag_defaults() {
        let parsed = MdnConfig::try_parse_from(["as2-mdn"]).unwrap();
        assert_eq!(
            format!("{:?}", parsed.delivery),
            format!("{:?}", DeliveryConfig::defaults())
        );
        assert!(parsed.delivery.validate().is_ok());
    }

    #[test]
    fn every_flag_has_an_as2_environment_variable() {
        let missing =
            as2_common::config::flags_without_as2_environment_variable(&MdnConfig::command());
        assert_eq!(missing, Vec::<String>::new());
    }

    #[test]
    fn the_tracking_topic_answers_to_its_old_names() {
        let topic = |args: &[&str]| MdnConfig::try_parse_from(args).unwrap().tracking.topic();
        assert_eq!(topic(&["as2-mdn"]), "as2.mdn.tracking");
        assert_eq!(topic(&["as2-mdn", "--kafka-tracking-topic", "new"]), "new");
        assert_eq!(topic(&["as2-mdn", "--mdn-tracking-topic", "old"]), "old");
        assert_eq!(
            topic(&[
                "as2-mdn",
                "--legacy-mdn-tracking-topic",
                "old",
                "--kafka-tracking-topic",
                "new"
            ]),
            "new"
        );
        // The old variable feeds the hidden argument resolved above.
        let command = MdnConfig::command();
        let legacy = command
            .get_arguments()
            .find(|arg| {
                arg.get_env()
                    .is_some_and(|env| env == "AS2_MDN_TRACKING_TOPIC")
            })
            .map(|arg| arg.get_id().to_string());
        assert_eq!(legacy.as_deref(), Some("legacy_tracking_topic"));
    }

    #[test]
    fn reclaiming_faster_than_an_attempt_is_refused() {
        let mut config = DeliveryConfig::defaults();
        config.reclaim_idle_ms = config.attempt_timeout_ms;
        assert!(config.validate().is_err());
        config.reclaim_idle_ms += 1;
        assert!(config.validate().is_ok());
        config.max_attempts = 0;
        assert!(config.validate().is_err());
    }
}
