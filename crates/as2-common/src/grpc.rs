//! The gRPC server builder and client channel builder every service uses.
//!
//! One place sets how gRPC connections behave (timeouts, keepalive, the trace-context
//! layer), so that transport security can later be configured here once for every hop.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};
use tower_layer::{Identity, Stack};

use crate::telemetry::GrpcTraceLayer;

/// A gRPC server with the settings every service shares, before any service is added.
pub type GrpcServer = Server<Stack<GrpcTraceLayer, Identity>>;

/// A gRPC server with its services added, ready for
/// [`Runtime::serve_grpc`](crate::runtime::Runtime::serve_grpc).
pub type GrpcRouter = tonic::transport::server::Router<Stack<GrpcTraceLayer, Identity>>;

/// How often an idle HTTP/2 connection is pinged, on both sides, so that a peer that
/// vanished without closing (a killed pod, a dropped NAT entry) is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server every service serves its gRPC API with: W3C trace context continued from
/// the caller ([`GrpcTraceLayer`]), TCP_NODELAY, HTTP/2 keepalive.
pub fn server() -> GrpcServer {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(GrpcTraceLayer)
}

/// How a client channel to another service behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSettings {
    /// How long establishing the connection may take.
    pub connect_timeout: Duration,
    /// How long one call may take until its response headers arrive (the messages of a
    /// server stream are not limited by it).
    pub request_timeout: Duration,
}

impl Default for ChannelSettings {
    /// 3 s to connect and 10 s per call: the services answer from memory or Redis, so a
    /// call that takes longer is stuck and the caller should fail over or answer 503.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
#[error("invalid {service} url {url:?}: {source}")]
pub struct ChannelError {
    /// The service the channel is for, e.g. `routing`.
    pub service: &'static str,
    /// The URL as configured.
    pub url: String,
    /// The parser's complaint.
    #[source]
    pub source: tonic::transport::Error,
}

/// A channel to `service` at `url` (`http://host:port`) that connects on first use and
/// reconnects by itself, so a service can start before its dependencies.
pub fn channel(
    service: &'static str,
    url: &str,
    settings: ChannelSettings,
) -> Result<Channel, ChannelError> {
    Ok(endpoint(service, url, settings)?.connect_lazy())
}

/// The endpoint behind [`channel`], for callers that want to connect eagerly
/// (`Endpoint::connect`) and report an unreachable service at once.
pub fn endpoint(
    service: &'static str,
    url: &str,
    settings: ChannelSettings,
) -> Result<Endpoint, ChannelError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|source| ChannelError {
        service,
        url: url.to_owned(),
        source,
    })?;
    Ok(endpoint
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_names_the_service_and_the_url() {
        let error = channel("routing", "not a url", ChannelSettings::default())
            .err()
            .map(|error| crate::error_chain(&error));
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("invalid routing url \"not a url\""),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_lazy_channel_is_built_without_a_server() {
        assert!(channel("mdn", "http://127.0.0.1:1", ChannelSettings::default()).is_ok());
    }
}
