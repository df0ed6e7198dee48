//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! - `/healthz` answers 200 while the process runs (liveness).
//! - `/readyz` answers 200 while [`Readiness`] is set and 503 otherwise, also
//!   while the service drains (readiness).
//! - `/metrics` renders the service's prometheus-client registry in the
//!   OpenMetrics text format.
//!
//! It serves plain HTTP/1.1 on its own port, which is never exposed outside
//! the cluster.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::shutdown::Readiness;

/// Content type of the `/metrics` response.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long open admin connections get to finish once the server stops.
const CONNECTION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoints report on.
#[derive(Clone)]
pub struct AdminState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

impl AdminState {
    /// Serves `readiness` on `/readyz` and `registry` on `/metrics`.
    pub fn new(readiness: Readiness, registry: Arc<Registry>) -> Self {
        Self {
            readiness,
            registry,
        }
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes, then
/// gives open connections a few seconds to finish.
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Typically EMFILE; back off briefly instead of spinning.
                    tracing::warn!(%error, "admin server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, &request)) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(CONNECTION_DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("admin connections still open after the drain timeout");
    }
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok\n"),
        "/readyz" if state.readiness.is_ready() => text_response(StatusCode::OK, "ready\n"),
        "/readyz" => text_response(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => metrics_response(&state.registry),
        _ => text_response(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn metrics_response(registry: &Registry) -> Response<Full<Bytes>> {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!(%error, "cannot encode metrics");
        return text_response(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    response(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, body)
}

fn text_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::sync::CancellationToken;

    use super::*;

    async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let readiness = Readiness::new();
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("sample_events", "events seen by the test", counter.clone());
        counter.inc();
        let state = AdminState::new(readiness.clone(), Arc::new(registry));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_admin(listener, state, stop.clone().cancelled_owned()));

        assert_eq!(get(address, "/healthz").await.0, 200);
        assert_eq!(get(address, "/readyz").await.0, 503);
        readiness.set_ready();
        assert_eq!(get(address, "/readyz").await.0, 200);
        let (status, body) = get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("sample_events_total 1"), "{body}");
        assert_eq!(get(address, "/nope").await.0, 404);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the admin server stops when asked")
            .unwrap();
    }
}
