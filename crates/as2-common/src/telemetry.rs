//! Logs and traces.
//!
//! Logs go to standard output as text or JSON lines. When an OTLP endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`), spans are also exported over
//! OTLP/gRPC in batches. The W3C trace-context propagator is installed either
//! way, so `traceparent` headers are read and written even when nothing is
//! exported.
//!
//! JSON log lines carry the `trace_id` and `span_id` of the span they were
//! written in ([`TraceIdJson`]); [`propagation`] carries trace context over
//! gRPC, Kafka record headers and stored jobs.

mod json;
pub mod propagation;

pub use json::TraceIdJson;
pub use propagation::{
    GrpcTraceLayer, TraceContextInterceptor, current_traceparent, inject_grpc, set_remote_parent,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, TelemetryConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidFilter {
        /// The filter as configured.
        filter: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was installed already.
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInitialized(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps trace export running; flushes and stops it when shut down or dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes pending spans and stops the exporter. Call it last.
    pub fn shutdown(mut self) {
        self.shutdown_provider();
    }

    fn shutdown_provider(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace exporter did not shut down cleanly");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown_provider();
    }
}

/// The provider [`init_telemetry`] installed, for [`flush`].
static INSTALLED_PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Hands the spans ended so far to the exporter and waits for it (the last step of a
/// service's drain); does nothing when no traces are exported. Blocks: call it from a
/// blocking thread.
pub fn flush() {
    if let Some(provider) = INSTALLED_PROVIDER.get()
        && let Err(error) = provider.force_flush()
    {
        tracing::warn!(%error, "cannot flush pending spans");
    }
}

/// Installs the global tracing subscriber and, when configured, OTLP export.
///
/// Must run inside a tokio runtime when an OTLP endpoint is configured (the
/// exporter's gRPC channel needs it). `service_name` becomes the OpenTelemetry
/// `service.name` resource attribute.
pub fn init_telemetry(
    config: &TelemetryConfig,
    service_name: &'static str,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(&config.log_filter).map_err(|source| TelemetryError::InvalidFilter {
            filter: config.log_filter.clone(),
            source,
        })?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let tracer_provider = match config.otlp_endpoint.as_deref().map(str::trim) {
        Some(endpoint) if !endpoint.is_empty() => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service_name).build())
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            // The first installed provider is the one flush() reaches; a second
            // init fails below anyway (the subscriber is global).
            let _first = INSTALLED_PROVIDER.set(provider.clone());
            Some(provider)
        }
        _ => None,
    };
    let otel_layer = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service_name)));

    let (text_layer, json_layer) = match config.log_format {
        LogFormat::Text => (Some(tracing_subscriber::fmt::layer()), None),
        LogFormat::Json => (None, Some(json_log_layer(std::io::stdout))),
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .with(otel_layer)
        .try_init()?;

    if tracer_provider.is_some() {
        tracing::info!(service = service_name, "exporting traces over otlp");
    }
    Ok(TelemetryGuard { tracer_provider })
}

/// The JSON log layer: one object per line, event fields flattened, the
/// current span's fields, and `trace_id` / `span_id` while a trace is active.
pub fn json_log_layer<S, W>(
    make_writer: W,
) -> tracing_subscriber::fmt::Layer<S, JsonFields, TraceIdJson, W>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .map_event_format(TraceIdJson::new)
        .with_writer(make_writer)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(|line| serde_json::from_str(line).expect("every line is json"))
                .collect()
        }
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids() {
        let captured = Captured::default();
        let writer = captured.clone();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(json_log_layer(move || writer.clone()))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("as2_message", message_id = "<m1@partner>");
            let ids = {
                let context = span.context();
                let otel_span = context.span();
                let span_context = otel_span.span_context();
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            };
            span.in_scope(|| tracing::info!(partner = "acme", "inside the span"));
            ids
        });

        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        let inside = &lines[1];
        assert_eq!(inside["trace_id"], trace_id.as_str(), "{inside}");
        assert_eq!(inside["span_id"], span_id.as_str(), "{inside}");
        assert_eq!(inside["message"], "inside the span");
        assert_eq!(inside["partner"], "acme");
        assert_eq!(inside["span"]["message_id"], "<m1@partner>");
        assert_eq!(trace_id.len(), 32);
    }

    #[test]
    fn a_bad_filter_is_reported() {
        let config = TelemetryConfig {
            log_filter: "info,[".to_owned(),
            ..TelemetryConfig::default()
        };
        let result = init_telemetry(&config, "test");
        assert!(matches!(result, Err(TelemetryError::InvalidFilter { .. })));
    }
}
