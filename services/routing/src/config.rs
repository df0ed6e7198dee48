//! Configuration of the routing service.

use std::net::{Ipv4Addr, SocketAddr};

use as2_common::config::{
    AdminServerConfig, GrpcServerConfig, RedisConfig, ShutdownConfig, TelemetryConfig,
};
use clap::Parser;

/// The routing service's configuration: command-line flags, each also an
/// `AS2_*` environment variable.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "as2-routing",
    version,
    about = "The AS2 gateway's partnership registry: partnerships in Redis, served over gRPC"
)]
pub struct RoutingConfig {
    /// gRPC listener.
    #[command(flatten)]
    pub grpc: GrpcServerConfig,
    /// Admin HTTP listener (/healthz, /readyz, /metrics).
    #[command(flatten)]
    pub admin: AdminServerConfig,
    /// Redis connection and key prefix.
    #[command(flatten)]
    pub redis: RedisConfig,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryConfig,
    /// Drain behaviour.
    #[command(flatten)]
    pub shutdown: ShutdownConfig,
}

impl RoutingConfig {
    /// A configuration for tests and embedding: both listeners on ephemeral
    /// loopback ports, the given Redis and key prefix, a short grace period.
    pub fn local(redis_url: impl Into<String>, redis_key_prefix: impl Into<String>) -> Self {
        let ephemeral = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            grpc: GrpcServerConfig::insecure_plaintext(ephemeral),
            admin: AdminServerConfig {
                http_listen: ephemeral,
            },
            redis: RedisConfig::new(redis_url, redis_key_prefix),
            telemetry: TelemetryConfig::default(),
            shutdown: ShutdownConfig {
                shutdown_delay_secs: 0,
                shutdown_grace_secs: 5,
            },
        }
    }
}
