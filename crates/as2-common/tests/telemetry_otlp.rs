//! Trace export is switched on by an OTLP endpoint and stops cleanly even when
//! no collector listens. (Its own test binary: the global subscriber can be
//! installed once per process.)

use std::time::{Duration, Instant};

use as2_common::config::{LogFormat, TelemetryConfig};
use as2_common::telemetry::init_telemetry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_is_enabled_by_an_endpoint() {
    let port = as2_testkit::free_port();
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        log_filter: "info".to_owned(),
        otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
    };
    let guard = init_telemetry(&config, "as2-test").expect("telemetry starts");
    assert!(guard.exports_traces());
    tracing::info_span!("test span", partner = "acme").in_scope(|| {
        tracing::info!("inside a span");
    });

    let started = Instant::now();
    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .expect("shutdown does not panic");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        started.elapsed()
    );

    // A second installation is refused rather than silently ignored.
    let again = init_telemetry(&TelemetryConfig::default(), "as2-test");
    assert!(again.is_err());
}
