//! A small OTLP/gRPC trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// One received span, with ids as lowercase hex.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service_name: String,
    /// Span name.
    pub name: String,
    /// Trace id (32 hex digits).
    pub trace_id: String,
    /// Span id (16 hex digits).
    pub span_id: String,
    /// Parent span id, empty for a root span.
    pub parent_span_id: String,
    /// Attributes, values as text.
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// What the receiver has been sent; clones share it.
#[derive(Clone, Debug, Default)]
pub struct SinkState {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    count: Arc<AtomicU64>,
    keep_spans: bool,
}

impl SinkState {
    /// A state that keeps every span (`keep_spans`) or only counts them.
    pub fn new(keep_spans: bool) -> Self {
        Self {
            keep_spans,
            ..Self::default()
        }
    }

    /// The spans received so far (none when only counting).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many spans were received.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn receive(&self, request: ExportTraceServiceRequest) {
        let mut received = Vec::new();
        for resource_spans in request.resource_spans {
            let service_name = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| text(attribute.value.as_ref()))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    self.count.fetch_add(1, Ordering::Relaxed);
                    if self.keep_spans {
                        received.push(ReceivedSpan {
                            service_name: service_name.clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            attributes: span.attributes.iter().map(attribute).collect(),
                        });
                    }
                }
            }
        }
        if !received.is_empty() {
            self.spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(received);
        }
    }
}

struct Receiver(SinkState);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.receive(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves the receiver on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: SinkState,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Receiver(state)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

/// A receiver running on a task of the current runtime; stops when dropped.
pub struct RunningSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub state: SinkState,
    stop: tokio::sync::watch::Sender<bool>,
}

impl RunningSink {
    /// Starts a receiver on a free loopback port that keeps every span.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = SinkState::new(true);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let serving = state.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(error) = serve(listener, serving, shutdown).await {
                tracing::warn!(%error, "otlp sink failed");
            }
        });
        Ok(Self { addr, state, stop })
    }

    /// The endpoint to give exporters (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningSink {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(attribute: &KeyValue) -> (String, String) {
    (attribute.key.clone(), text(attribute.value.as_ref()))
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
