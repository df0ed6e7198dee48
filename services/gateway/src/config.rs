//! The single-process gateway's configuration: flags, each also an `AS2_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use as2_common::config::TelemetryConfig;
use clap::Parser;

/// The quick start's data directory unless configured (relative to the working
/// directory, where as2ctl looks for the operator's credential).
pub const DEFAULT_DATA_DIR: &str = ".as2-gateway";

/// Everything the single-process gateway needs. The defaults run the quick start:
/// in-process state, an embedded Kafka cluster, loopback ports.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "as2-gateway",
    version,
    about = "The whole AS2 gateway in one process: edge, routing and MDN service"
)]
pub struct GatewayConfig {
    /// Directory for the generated demo keys (created when missing, reused later).
    #[arg(
        long = "data-dir",
        env = "AS2_GATEWAY_DATA_DIR",
        default_value = DEFAULT_DATA_DIR
    )]
    pub data_dir: PathBuf,

    /// Where documents too large for their Kafka record are stored: by default the
    /// directory `objects` in the data directory (`AS2_OBJECT_STORE_URL` for another
    /// store, S3 for instance).
    #[command(flatten)]
    pub object_store: as2_store::ObjectStoreArgs,

    /// Address of the AS2 endpoint.
    #[arg(
        long = "as2-listen",
        env = "AS2_GATEWAY_AS2_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub as2_listen: SocketAddr,

    /// Address of the routing service's gRPC endpoint (`as2ctl partnership ...`).
    #[arg(
        long = "routing-listen",
        env = "AS2_GATEWAY_ROUTING_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub routing_listen: SocketAddr,

    /// Address of the MDN service's gRPC endpoint (`as2ctl mdn ...`).
    #[arg(
        long = "mdn-listen",
        env = "AS2_GATEWAY_MDN_LISTEN",
        default_value = "127.0.0.1:50052"
    )]
    pub mdn_listen: SocketAddr,

    /// Address of the edge's admin endpoints (`/healthz`, `/readyz`, `/metrics`).
    #[arg(
        long = "edge-admin-listen",
        env = "AS2_GATEWAY_EDGE_ADMIN_LISTEN",
        default_value = "127.0.0.1:9180"
    )]
    pub edge_admin_listen: SocketAddr,

    /// Address of the routing service's admin endpoints.
    #[arg(
        long = "routing-admin-listen",
        env = "AS2_GATEWAY_ROUTING_ADMIN_LISTEN",
        default_value = "127.0.0.1:9181"
    )]
    pub routing_admin_listen: SocketAddr,

    /// Address of the MDN service's admin endpoints.
    #[arg(
        long = "mdn-admin-listen",
        env = "AS2_GATEWAY_MDN_ADMIN_LISTEN",
        default_value = "127.0.0.1:9182"
    )]
    pub mdn_admin_listen: SocketAddr,

    /// Where state is kept: `memory://` (this process; lost on exit) or a Redis URL.
    #[arg(long = "redis-url", env = "AS2_REDIS_URL", default_value = "memory://")]
    pub redis_url: String,

    /// Prefix of the Redis keys (with a real Redis).
    #[arg(
        long = "redis-key-prefix",
        env = "AS2_REDIS_KEY_PREFIX",
        default_value = "as2"
    )]
    pub redis_key_prefix: String,

    /// Kafka bootstrap servers. Without them an embedded single-broker cluster
    /// (librdkafka's mock cluster: in memory, about 5 MiB kept per partition) is started
    /// and its address printed.
    #[arg(long = "kafka-bootstrap-servers", env = "AS2_KAFKA_BOOTSTRAP_SERVERS")]
    pub kafka_bootstrap_servers: Option<String>,

    /// Topic the demo partnership's documents go to.
    #[arg(
        long = "demo-topic",
        env = "AS2_GATEWAY_DEMO_TOPIC",
        default_value = "as2.quickstart.inbound"
    )]
    pub demo_topic: String,

    /// Do not create the demo partnership.
    #[arg(long = "no-demo", env = "AS2_GATEWAY_NO_DEMO")]
    pub no_demo: bool,

    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_flag_has_an_as2_environment_variable() {
        let missing =
            as2_common::config::flags_without_as2_environment_variable(&GatewayConfig::command());
        assert_eq!(missing, Vec::<String>::new());
    }

    #[test]
    fn defaults_are_the_quick_start() {
        let command = GatewayConfig::command();
        let default_of = |id: &str| {
            let argument = command
                .get_arguments()
                .find(|argument| argument.get_id() == id)
                .unwrap();
            argument
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(default_of("redis_url"), ["memory://"]);
        assert!(default_of("kafka_bootstrap_servers").is_empty());
        assert_eq!(default_of("as2_listen"), ["127.0.0.1:8080"]);
    }
}
