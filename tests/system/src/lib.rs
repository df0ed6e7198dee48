//! Tests that run the gateway's services as separate processes, the way they run
//! in production, and what those tests need:
//!
//! - the `as2-service` binary starts one service (`edge`, `routing` or `mdn`)
//!   exactly as its own binary does (configuration from flags and `AS2_*`
//!   variables, telemetry, run until SIGTERM). Cargo only hands a crate's tests
//!   the binaries of that crate, so this crate has its own;
//! - [`service::ServiceProcess`] runs one of them as a child process (killed, restarted
//!   and reaped by the tests, its output in a log file);
//! - [`otlp_sink`] is an OTLP/gRPC trace receiver that keeps or counts the spans
//!   it is sent (the `as2-otlp-sink` binary serves it for benchmarks).
//!
//! OpenTelemetry export is process-global, so one process per service is also
//! what makes "spans from edge, routing and mdn" mean three exporters.

#![forbid(unsafe_code)]

pub mod otlp_sink;
pub mod service;
