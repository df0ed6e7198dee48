//! The sender's configuration: flags, each also an `AS2_*` environment variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use as2_common::config::{
    AdminServerConfig, GrpcServerConfig, RedisConfig, ShutdownConfig, TelemetryConfig,
};
use as2_common::kafka::{KafkaConfig, legacy};
use as2_partner::proxy::EgressProxy;
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
    /// The sender's object store: large messages are built into it and sent from it,
    /// and the outbound archive is kept there. Without `AS2_OBJECT_STORE_URL` there is
    /// none: documents that records reference are read from the store their location
    /// names (with these credentials) and built next to them, and nothing is archived.
    #[command(flatten)]
    pub object_store: as2_store::ObjectStoreArgs,
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
            grpc: GrpcServerConfig::insecure_plaintext(ephemeral),
            admin: AdminServerConfig {
                http_listen: ephemeral,
            },
            redis: RedisConfig::new(redis_url, redis_key_prefix),
            kafka: SenderKafkaConfig::new(bootstrap_servers),
            sending,
            object_store: as2_store::ObjectStoreArgs::default(),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig {
                shutdown_delay_secs: 0,
                shutdown_grace_secs: 5,
            },
        }
    }
}

/// The default topic of the documents to send.
pub const DEFAULT_OUTBOUND_TOPIC: &str = "as2.outbound";
/// The default consumer group of the sender replicas.
pub const DEFAULT_CONSUMER_GROUP: &str = "as2-sender";
/// The default topic of the receipts.
pub const DEFAULT_RECEIPTS_TOPIC: &str = "as2.outbound.receipts";

/// Kafka: the brokers and client settings every service shares, and the sender's outbound
/// topic, consumer group and receipts topic. Each topic setting still answers to its old
/// flag (`--outbound-topic`, ...) and variable (`AS2_SENDER_OUTBOUND_TOPIC`, ...).
#[derive(Args, Clone, Debug)]
pub struct SenderKafkaConfig {
    /// Brokers, publish timeout, record size limit and librdkafka properties (for both
    /// the consumer and the producer).
    #[command(flatten)]
    pub client: KafkaConfig,

    /// Topic of the documents to send (see docs/kafka-records.md for the record); default
    /// `as2.outbound`.
    #[arg(
        long = "kafka-outbound-topic",
        env = "AS2_KAFKA_OUTBOUND_TOPIC",
        alias = "outbound-topic"
    )]
    pub outbound_topic: Option<String>,
    /// The old variable of `--kafka-outbound-topic`.
    #[arg(
        long = "legacy-outbound-topic",
        env = "AS2_SENDER_OUTBOUND_TOPIC",
        hide = true
    )]
    pub legacy_outbound_topic: Option<String>,

    /// Consumer group of the sender replicas; partitions are shared among them. Default
    /// `as2-sender`.
    #[arg(
        long = "kafka-consumer-group",
        env = "AS2_KAFKA_CONSUMER_GROUP",
        alias = "consumer-group"
    )]
    pub consumer_group: Option<String>,
    /// The old variable of `--kafka-consumer-group`.
    #[arg(
        long = "legacy-consumer-group",
        env = "AS2_SENDER_CONSUMER_GROUP",
        hide = true
    )]
    pub legacy_consumer_group: Option<String>,

    /// Topic that receipts (delivered, failed) are published to; default
    /// `as2.outbound.receipts`.
    #[arg(
        long = "kafka-receipts-topic",
        env = "AS2_KAFKA_RECEIPTS_TOPIC",
        alias = "receipts-topic"
    )]
    pub receipts_topic: Option<String>,
    /// The old variable of `--kafka-receipts-topic`.
    #[arg(
        long = "legacy-receipts-topic",
        env = "AS2_SENDER_RECEIPTS_TOPIC",
        hide = true
    )]
    pub legacy_receipts_topic: Option<String>,
}

impl SenderKafkaConfig {
    /// Default topics and group for the given brokers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            client: KafkaConfig::new(bootstrap_servers),
            outbound_topic: None,
            legacy_outbound_topic: None,
            consumer_group: None,
            legacy_consumer_group: None,
            receipts_topic: None,
            legacy_receipts_topic: None,
        }
    }

    /// The brokers (`127.0.0.1:9092` unless configured).
    pub fn bootstrap_servers(&self) -> &str {
        self.client.bootstrap_servers_or_default()
    }

    /// The topic of the documents to send.
    pub fn outbound_topic(&self) -> String {
        legacy::resolve(
            self.outbound_topic.as_ref(),
            self.legacy_outbound_topic.as_ref(),
            DEFAULT_OUTBOUND_TOPIC.to_owned(),
        )
    }

    /// The consumer group.
    pub fn consumer_group(&self) -> String {
        legacy::resolve(
            self.consumer_group.as_ref(),
            self.legacy_consumer_group.as_ref(),
            DEFAULT_CONSUMER_GROUP.to_owned(),
        )
    }

    /// The receipts topic.
    pub fn receipts_topic(&self) -> String {
        legacy::resolve(
            self.receipts_topic.as_ref(),
            self.legacy_receipts_topic.as_ref(),
            DEFAULT_RECEIPTS_TOPIC.to_owned(),
        )
    }
}

/// Partnerships, keys, identifiers, retries and timeouts.
#[derive(Args, Clone, Debug)]
pub struct SendingConfig {
    /// URL of the routing service's gRPC endpoint (partnerships by id).
    #[arg(
        long = "routing-url",
        env = "AS2_ROUTING_URL",
        default_value = "https://127.0.0.1:50051"
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

    /// Records of one partnership sent at the same time by this replica (0: a quarter
    /// of `sender-max-in-flight`, at least 1). A partner that is down holds no more
    /// than this many; a record read beyond it waits, and its partition pauses, until
    /// one of the partnership's records ends.
    #[arg(
        long = "sender-max-in-flight-per-partnership",
        env = "AS2_SENDER_MAX_IN_FLIGHT_PER_PARTNERSHIP",
        default_value_t = 0
    )]
    pub max_in_flight_per_partnership: usize,

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
    /// system's (not for partnerships that name their own CA certificates or pin the
    /// partner's certificate).
    #[arg(long = "sender-tls-ca-file", env = "AS2_SENDER_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// An HTTP proxy (`http://host:port`) that connections to partners are tunnelled
    /// through with CONNECT, to the address the sender resolved itself; a partnership's
    /// `outbound.https` may name another or bypass it. Unset: direct connections.
    #[arg(
        long = "egress-proxy-url",
        env = "AS2_EGRESS_PROXY_URL",
        value_parser = EgressProxy::parse
    )]
    pub egress_proxy: Option<EgressProxy>,

    /// Days each message sent to a partnership that sets no retention of its own is
    /// archived (the message as sent, the partner's answer and MDN, in the object
    /// store); 0: only partnerships with their own retention are archived. Needs an
    /// object store. The edges' retention sweep deletes expired entries.
    #[arg(
        long = "archive-retention-days",
        env = "AS2_ARCHIVE_RETENTION_DAYS",
        default_value_t = 365
    )]
    pub archive_retention_days: u32,

    /// Large messages (documents that records reference) built at the same time by this
    /// replica; each holds about 29 MiB while it is built (three 1 MiB batches, the output,
    /// and the upload's parts).
    #[arg(
        long = "sender-max-large-builds",
        env = "AS2_SENDER_MAX_LARGE_BUILDS",
        default_value_t = 2
    )]
    pub max_large_builds: usize,
}

impl SendingConfig {
    /// Defaults as the flags have them.
    pub fn defaults() -> Self {
        Self {
            routing_url: "https://127.0.0.1:50051".to_owned(),
            keys_dir: PathBuf::from("/etc/as2/keys"),
            default_signing_key_id: None,
            message_id_domain: "as2-gateway.local".to_owned(),
            max_in_flight: 16,
            max_in_flight_per_partnership: 0,
            initial_backoff_ms: 5_000,
            max_backoff_ms: 300_000,
            async_mdn_timeout_secs: 6 * 3600,
            sweep_interval_ms: 5_000,
            record_ttl_secs: 30 * 24 * 3600,
            tls_ca_file: None,
            egress_proxy: None,
            archive_retention_days: 365,
            max_large_builds: 2,
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
    fn kafka_topics_answer_to_their_old_names() {
        let kafka = |args: &[&str]| SenderConfig::try_parse_from(args).unwrap().kafka;
        let defaults = kafka(&["as2-sender"]);
        assert_eq!(
            (
                defaults.outbound_topic(),
                defaults.consumer_group(),
                defaults.receipts_topic(),
                defaults.bootstrap_servers()
            ),
            (
                "as2.outbound".to_owned(),
                "as2-sender".to_owned(),
                "as2.outbound.receipts".to_owned(),
                "127.0.0.1:9092"
            )
        );
        let old = kafka(&[
            "as2-sender",
            "--outbound-topic",
            "old-out",
            "--consumer-group",
            "old-group",
            "--receipts-topic",
            "old-receipts",
        ]);
        assert_eq!(old.outbound_topic(), "old-out");
        assert_eq!(old.consumer_group(), "old-group");
        assert_eq!(old.receipts_topic(), "old-receipts");
        let both = kafka(&[
            "as2-sender",
            "--legacy-outbound-topic",
            "old-out",
            "--kafka-outbound-topic",
            "new-out",
        ]);
        assert_eq!(both.outbound_topic(), "new-out");
        // The old variables feed the hidden arguments resolved above.
        let command = SenderConfig::command();
        for (variable, id) in [
            ("AS2_SENDER_OUTBOUND_TOPIC", "legacy_outbound_topic"),
            ("AS2_SENDER_CONSUMER_GROUP", "legacy_consumer_group"),
            ("AS2_SENDER_RECEIPTS_TOPIC", "legacy_receipts_topic"),
        ] {
            let found = command
                .get_arguments()
                .find(|arg| arg.get_env().is_some_and(|env| env == variable))
                .map(|arg| arg.get_id().to_string());
            assert_eq!(found.as_deref(), Some(id), "{variable}");
        }
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
