//! W3C trace context across process boundaries: gRPC metadata (client and
//! server side), the `traceparent` text that Kafka records and MDN jobs carry.
//!
//! - [`inject_grpc`] (or [`TraceContextInterceptor`] on a client) writes the
//!   current span's context into a request's metadata;
//! - [`GrpcTraceLayer`] on a tonic server reads it and runs each call in a
//!   `grpc_request` span that continues the caller's trace;
//! - [`current_traceparent`] and [`set_remote_parent`] carry a context as one
//!   `traceparent` string, for records and stored jobs.
//!
//! Everything here is a no-op when no OpenTelemetry layer is installed (trace
//! export is off): nothing is written, and spans have no remote parent.

use std::task::{Context as TaskContext, Poll};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// gRPC service paths that get no span (health probes would flood traces).
const UNTRACED_SERVICE_PREFIX: &str = "/grpc.health.v1.Health/";

/// Writes the current span's trace context into the request's metadata
/// (`traceparent`, and `tracestate` when set).
pub fn inject_grpc<T>(request: &mut tonic::Request<T>) {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
}

/// A tonic client interceptor that calls [`inject_grpc`] on every request:
/// `RoutingServiceClient::with_interceptor(channel, TraceContextInterceptor)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextInterceptor;

impl tonic::service::Interceptor for TraceContextInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_grpc(&mut request);
        Ok(request)
    }
}

/// A tower layer for tonic servers (`Server::builder().layer(GrpcTraceLayer)`):
/// every call runs in a `grpc_request` span (server kind, `rpc.service` and
/// `rpc.method` attributes) whose parent is the trace context the caller sent.
/// Health checks are not traced.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTraceLayer;

impl<S> tower_layer::Layer<S> for GrpcTraceLayer {
    type Service = GrpcTraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTraceService { inner }
    }
}

/// The service [`GrpcTraceLayer`] wraps around a tonic server's routes.
#[derive(Clone, Debug)]
pub struct GrpcTraceService<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for GrpcTraceService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = grpc_server_span(&request);
        self.inner.call(request).instrument(span)
    }
}

/// The span of one gRPC call on the server side, child of the caller's context.
fn grpc_server_span<B>(request: &http::Request<B>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with(UNTRACED_SERVICE_PREFIX) {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc_request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(request.headers()))
    });
    if parent.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
        let _ = span.set_parent(parent);
    }
    span
}

/// The W3C `traceparent` of the current span, when it belongs to a trace
/// (`00-<trace id>-<span id>-<flags>`).
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, when it belongs to a trace.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Makes the context in `traceparent` the parent of `span`, which must not have
/// been entered yet. An empty or malformed `traceparent` leaves `span` a root.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    let Some(parent) = context_from_traceparent(traceparent) else {
        return;
    };
    // Fails only when no OpenTelemetry layer is installed or the span is off.
    let _ = span.set_parent(parent);
}

/// The remote context a `traceparent` names, or `None` when it is not valid.
pub fn context_from_traceparent(traceparent: &str) -> Option<Context> {
    if traceparent.is_empty() {
        return None;
    }
    let carrier = SingleTraceparent(traceparent);
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    context.span().span_context().is_valid().then_some(context)
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct SingleTraceparent<'a>(&'a str);

impl Extractor for SingleTraceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    const REMOTE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn with_tracing(test: impl FnOnce()) {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, test);
    }

    #[test]
    fn a_remote_parent_is_continued_and_injected() {
        with_tracing(|| {
            let span = tracing::info_span!("child");
            set_remote_parent(&span, REMOTE);
            span.in_scope(|| {
                let traceparent = current_traceparent().expect("a traceparent");
                assert!(
                    traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                    "{traceparent}"
                );
                assert_ne!(traceparent, REMOTE, "the child has its own span id");

                let mut request = tonic::Request::new(());
                inject_grpc(&mut request);
                let sent = request
                    .metadata()
                    .get("traceparent")
                    .and_then(|value| value.to_str().ok());
                assert_eq!(sent, Some(traceparent.as_str()));
            });
        });
    }

    #[test]
    fn the_server_span_continues_the_callers_trace() {
        with_tracing(|| {
            let request = http::Request::post("/as2.routing.v1.RoutingService/ResolvePartnership")
                .header("traceparent", REMOTE)
                .body(())
                .expect("a request");
            let span = grpc_server_span(&request);
            let traceparent = traceparent_of(&span).expect("a traceparent");
            assert!(traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));

            let health = http::Request::post("/grpc.health.v1.Health/Check")
                .body(())
                .expect("a request");
            assert!(grpc_server_span(&health).is_none());
        });
    }

    #[test]
    fn malformed_or_missing_traceparents_are_ignored() {
        with_tracing(|| {
            assert!(context_from_traceparent("").is_none());
            assert!(context_from_traceparent("00-zz-yy-01").is_none());
            let span = tracing::info_span!("root");
            set_remote_parent(&span, "garbage");
            let traceparent = traceparent_of(&span).expect("a root span has a trace");
            assert!(!traceparent.contains("0af7651916cd43dd8448eb211c80319c"));
            let mut request = tonic::Request::new(());
            inject_grpc(&mut request);
            assert!(request.metadata().get("traceparent").is_none());
        });
    }
}
