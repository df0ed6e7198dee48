//! What every service of the AS2 gateway shares.
//!
//! - [`clock`]: the wall clock in Unix milliseconds, as the services store times.
//! - [`config`]: clap argument blocks that each service flattens into its own
//!   configuration; every flag is also an `AS2_*` environment variable and
//!   parsing has no side effects.
//! - [`telemetry`]: logs (text or JSON) and OpenTelemetry trace export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with the W3C trace-context propagator.
//! - [`shutdown`]: SIGTERM / SIGINT as a cancellation token, and the readiness
//!   flag that is cleared first when a service drains.
//! - [`admin`]: the HTTP admin server with `/healthz`, `/readyz` and `/metrics`.
//! - [`health`]: gRPC health (`grpc.health.v1`) wiring.
//! - [`runtime`]: how a service starts, serves and drains (one order for all), and
//!   [`runtime::ServiceHandle`], which the gateway and the tests start services with.
//! - [`grpc`]: the gRPC server and client channel builders (timeouts, keepalive, trace
//!   context).
//! - [`kafka`]: the Kafka flags, and the idempotent producer every service publishes with.
//! - [`redis`]: the Redis connection and the key namespace.

#![forbid(unsafe_code)]

pub mod admin;
pub mod clock;
pub mod config;
pub mod fault;
pub mod grpc;
pub mod health;
pub mod kafka;
pub mod redis;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use prometheus_client;
pub use tokio_util::sync::CancellationToken;

/// An error with its sources, "outer: inner: innermost" (a source whose text the outer
/// message already contains is left out).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
