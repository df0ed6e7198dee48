//! The sender's configuration: flags, each also an `AS2_*` environment variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use as2_common::config::{
    AdminServerConfig, GrpcServerConfig, RedisConfig, ShutdownConfig, TelemetryConfig,
};
use clap::{Args, Parser};

/// Everything the sender needs to run.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "as2-sender",
    version,
    about = "The AS2 gateway's outbound sender: Kafka documents to partners, MDNs reconciled"
)]
pub struct SenderConfig {
    /// gRPC listener (OutboundService: MDN reconciliation, and health).
    #[command(flatten)]
    pub grpc: GrpcServerConfig,
    /// Admin HTTP listener (/healthz, /readyz, /metrics).
    #[command(flatten)]
    pub admin: AdminServerConfig,
    /// Redis (outbound message records, the async MDN deadline index, the receipt outbox).
    #[command(flatten)]
    pub redis: RedisConfig,
    /// Kafka: the outbound topic consumed and the receipts topic.
    #[command(flatten)]
    pub kafka: SenderKafkaConfig,
    /// How messages are built, sent and retried.
    #[command(flatten)]
    pub sending: SendingConfig,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Draining on SIGTERM.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl SenderConfig {
    /// A configuration for tests and embedding: listeners on ephemeral loopback ports,
    /// the given dependencies, a short grace period.
    pub fn local(
        redis_url: impl Into<String>,
        redis_key_prefix: impl Into<String>,
        bootstrap_servers: impl Into<String>,
        routing_url: impl Into<String>,
        keys_dir: impl Into<PathBuf>,
    ) -> Self {
        let ephemeral = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut sending = SendingConfig::defaults();
        sending.routing_url = routing_url.into();
        sending.keys_dir = keys_dir.into();
        Self {
            grpc: GrpcServerConfig {
                grpc_listen: ephemeral,
            },
            admin: AdminServerConfig {
                http_listen: ephemeral,
            },
            redis: RedisConfig::new(redis_url, redis_key_prefix),
            kafka: SenderKafkaConfig::new(bootstrap_servers),
            sending,
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig {
                shutdown_delay_secs: 0,
                shutdown_grace_secs: 5,
            },
        }
    }
}

/// The outbound topic, the consumer group and the receipts topic.
#[derive(Args, Clone, Debug)]
pub struct SenderKafkaConfig {
    /// Comma-separated bootstrap brokers, `host:port`.
    #[arg(
        long = "kafka-bootstrap-servers",
        env = "AS2_KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,

    /// Topic of the documents to send (see docs/kafka-records.md for the record).
    #[arg(
        long = "outbound-topic",
        env = "AS2_SENDER_OUTBOUND_TOPIC",
        default_value = "as2.outbound"
    )]
    pub outbound_topic: String,

    /// Consumer group of the sender replicas; partitions are shared among them.
    #[arg(
        long = "consumer-group",
        env = "AS2_SENDER_CONSUMER_GROUP",
        default_value = "as2-sender"
    )]
    pub consumer_group: String,

    /// Topic that receipts (delivered, failed, awaiting-mdn) are published to.
    #[arg(
        long = "receipts-topic",
        env = "AS2_SENDER_RECEIPTS_TOPIC",
        default_value = "as2.outbound.receipts"
    )]
    pub receipts_topic: String,

    /// Extra librdkafka properties for both the consumer and the producer, `key=value`,
    /// repeatable (or comma-separated in the environment variable): TLS and SASL.
    #[arg(
        long = "kafka-option",
        env = "AS2_KAFKA_OPTIONS",
        value_delimiter = ',',
        value_parser = as2_common::config::parse_key_value
    )]
    pub kafka_options: Vec<(String, String)>,
}

impl SenderKafkaConfig {
    /// Default topics and group for the given brokers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            outbound_topic: "as2.outbound".to_owned(),
            consumer_group: "as2-sender".to_owned(),
            receipts_topic: "as2.outbound.receipts".to_owned(),
            kafka_options: Vec::new(),
        }
    }
}

/// Partnerships, keys, identifiers, retries and timeouts.
#[derive(Args, Clone, Debug)]
pub struct SendingConfig {
    /// URL of the routing service's gRPC endpoint (partnerships by id).
    #[arg(
        long = "routing-url",
        env = "AS2_ROUTING_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub routing_url: String,

    /// Our keys: `<dir>/<key-id>/tls.key` and `tls.crt` (a mounted `kubernetes.io/tls`
    /// Secret per key).
    #[arg(
        long = "keys-dir",
        env = "AS2_KEYS_DIR",
        default_value = "/etc/as2/keys"
    )]
    pub keys_dir: PathBuf,

    /// Signing key for partnerships that name neither an outbound signing key nor an
    /// MDN signing key.
    #[arg(long = "default-signing-key-id", env = "AS2_DEFAULT_SIGNING_KEY_ID")]
    pub default_signing_key_id: Option<String>,

    /// Right-hand side of the Message-IDs of outbound messages.
    #[arg(
        long = "message-id-domain",
        env = "AS2_MESSAGE_ID_DOMAIN",
        default_value = "as2-gateway.local"
    )]
    pub message_id_domain: String,

    /// Records sent at the same time by this replica.
    #[arg(
        long = "sender-max-in-flight",
        env = "AS2_SENDER_MAX_IN_FLIGHT",
        default_value_t = 16
    )]
    pub max_in_flight: usize,

    /// Delay before the first resend after a transport failure or a 5xx, in
    /// milliseconds; each further delay doubles, with jitter.
    #[arg(
        long = "sender-initial-backoff-ms",
        env = "AS2_SENDER_INITIAL_BACKOFF_MS",
        default_value_t = 5_000
    )]
    pub initial_backoff_ms: u64,

    /// Longest delay between two sends of one message, in milliseconds.
    #[arg(
        long = "sender-max-backoff-ms",
        env = "AS2_SENDER_MAX_BACKOFF_MS",
        default_value_t = 300_000
    )]
    pub max_backoff_ms: u64,

    /// Seconds a message waits for its asynchronous MDN before it is recorded as failed.
    #[arg(
        long = "async-mdn-timeout-secs",
        env = "AS2_SENDER_ASYNC_MDN_TIMEOUT_SECS",
        default_value_t = 6 * 3600
    )]
    pub async_mdn_timeout_secs: u64,

    /// Milliseconds between two looks for overdue asynchronous MDNs and unpublished
    /// receipts.
    #[arg(
        long = "sender-sweep-interval-ms",
        env = "AS2_SENDER_SWEEP_INTERVAL_MS",
        default_value_t = 5_000
    )]
    pub sweep_interval_ms: u64,

    /// Seconds an outbound message's record (state, expected MIC, the partner's MDN) is
    /// kept in Redis after it was created.
    #[arg(long = "sender-record-ttl-secs", env = "AS2_SENDER_RECORD_TTL_SECS", default_value_t = 30 * 24 * 3600)]
    pub record_ttl_secs: u64,

    /// A PEM file of extra CA certificates trusted for https partners, next to the
    /// system's.
    #[arg(long = "sender-tls-ca-file", env = "AS2_SENDER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

impl SendingConfig {
    /// Defaults as the flags have them.
    pub fn defaults() -> Self {
        Self {
            routing_url: "http://127.0.0.1:50051".to_owned(),
            keys_dir: PathBuf::from("/etc/as2/keys"),
            default_signing_key_id: None,
            message_id_domain: "as2-gateway.local".to_owned(),
            max_in_flight: 16,
            initial_backoff_ms: 5_000,
            max_backoff_ms: 300_000,
            async_mdn_timeout_secs: 6 * 3600,
            sweep_interval_ms: 5_000,
            record_ttl_secs: 30 * 24 * 3600,
            tls_ca_file: None,
        }
    }

    /// Interval of the sweeper.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.sweep_interval_ms.max(10))
    }

    /// Checks the values that depend on each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("sender-max-in-flight must be at least 1".to_owned());
        }
        if self.record_ttl_secs <= self.async_mdn_timeout_secs {
            return Err(format!(
                "sender-record-ttl-secs ({}) must exceed async-mdn-timeout-secs ({})",
                self.record_ttl_secs, self.async_mdn_timeout_secs
            ));
        }
        if as2_protocol::MessageId::parse(&format!("<x@{}>", self.message_id_domain)).is_err()
            || self.message_id_domain.contains(['<', '>', '@', ' '])
        {
            return Err(format!(
                "message-id-domain {:?} is not a usable domain",
                self.message_id_domain
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_defaults_function_matches_the_flag_defaults() {
        let parsed = SenderConfig::try_parse_from(["as2-sender"]).unwrap();
        assert_eq!(
            format!("{:?}", parsed.sending),
            format!("{:?}", SendingConfig::defaults())
        );
        assert!(parsed.sending.validate().is_ok());
    }

    #[test]
    fn every_flag_has_an_as2_environment_variable() {
        let missing =
            as2_common::config::flags_without_as2_environment_variable(&SenderConfig::command());
        assert_eq!(missing, Vec::<String>::new());
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let mut config = SendingConfig::defaults();
        config.record_ttl_secs = config.async_mdn_timeout_secs;
        assert!(config.validate().is_err());
        let mut config = SendingConfig::defaults();
        config.message_id_domain = "a b".to_owned();
        assert!(config.validate().is_err());
        let mut config = SendingConfig::defaults();
        config.max_in_flight = 0;
        assert!(config.validate().is_err());
    }
}
