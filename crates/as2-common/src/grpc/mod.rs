//! The gRPC server builder and client channel builder every service uses.
//!
//! One place sets how gRPC connections behave: timeouts, keepalive, the trace-context
//! layer, mutual TLS ([`tls`]) and the authorisation of every call ([`auth`], with the
//! permissions table in [`as2_rpc::authorization`]).

pub mod auth;
pub mod local_ca;
pub mod tls;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};
use tower_layer::{Identity, Stack};

pub use self::tls::{GrpcSecurity, TlsError};
use crate::telemetry::GrpcTraceLayer;
use auth::AuthorizationLayer;

/// The layers every gRPC server runs: trace context, then authorisation.
type Layers = Stack<AuthorizationLayer, Stack<GrpcTraceLayer, Identity>>;

/// A gRPC server with the settings every service shares, before any service is added.
pub type GrpcServer = Server<Layers>;

/// A gRPC server with its services added, ready for
/// [`Runtime::serve_grpc`](crate::runtime::Runtime::serve_grpc).
pub type GrpcRouter = tonic::transport::server::Router<Layers>;

/// How often an idle HTTP/2 connection is pinged, on both sides, so that a peer that
/// vanished without closing (a killed pod, a dropped NAT entry) is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server every service serves its gRPC API with: W3C trace context continued from
/// the caller ([`GrpcTraceLayer`]), every call authorised ([`AuthorizationLayer`]),
/// HTTP/2 keepalive. Its connections come from [`tls::incoming`].
pub fn server() -> GrpcServer {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(GrpcTraceLayer)
        .layer(AuthorizationLayer)
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

/// Why a channel could not be built or connected.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The URL does not parse.
    #[error("invalid {service} url {url:?}: {source}")]
    InvalidUrl {
        /// The service the channel is for, e.g. `routing`.
        service: &'static str,
        /// The URL as configured.
        url: String,
        /// The parser's complaint.
        #[source]
        source: tonic::transport::Error,
    },
    /// The URL's scheme does not match the transport security (`https://` under mutual
    /// TLS, `http://` under the development flag).
    #[error("{service} url {url:?} must start with {expected}:// ({why})")]
    Scheme {
        /// The service the channel is for.
        service: &'static str,
        /// The URL as configured.
        url: String,
        /// The scheme the security needs.
        expected: &'static str,
        /// Which security is configured.
        why: &'static str,
    },
    /// An eager connection failed.
    #[error("cannot reach the {service} service at {url}: {source}")]
    Unreachable {
        /// The service the channel is for.
        service: &'static str,
        /// The URL as configured.
        url: String,
        /// The transport's complaint.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A channel to `service` at `url` that connects on first use and reconnects by
/// itself, so a service can start before its dependencies. Under mutual TLS the URL is
/// `https://host:port` and the server's certificate must name `host`; under the
/// development flag it is `http://host:port`.
pub fn channel(
    service: &'static str,
    url: &str,
    settings: ChannelSettings,
    security: &GrpcSecurity,
) -> Result<Channel, ChannelError> {
    let endpoint = endpoint(service, url, settings, security)?;
    Ok(match security {
        GrpcSecurity::MutualTls(credential) => {
            endpoint.connect_with_connector_lazy(tls::TlsConnector::new(credential.clone()))
        }
        GrpcSecurity::InsecurePlaintext => endpoint.connect_lazy(),
    })
}

/// [`channel`], connected at once: for tools that report an unreachable service right
/// away.
pub async fn connect(
    service: &'static str,
    url: &str,
    settings: ChannelSettings,
    security: &GrpcSecurity,
) -> Result<Channel, ChannelError> {
    let endpoint = endpoint(service, url, settings, security)?;
    let connected = match security {
        GrpcSecurity::MutualTls(credential) => {
            endpoint
                .connect_with_connector(tls::TlsConnector::new(credential.clone()))
                .await
        }
        GrpcSecurity::InsecurePlaintext => endpoint.connect().await,
    };
    connected.map_err(|source| ChannelError::Unreachable {
        service,
        url: url.to_owned(),
        source,
    })
}

fn endpoint(
    service: &'static str,
    url: &str,
    settings: ChannelSettings,
    security: &GrpcSecurity,
) -> Result<Endpoint, ChannelError> {
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|source| ChannelError::InvalidUrl {
            service,
            url: url.to_owned(),
            source,
        })?;
    let expected = security.scheme();
    if endpoint.uri().scheme_str() != Some(expected) {
        return Err(ChannelError::Scheme {
            service,
            url: url.to_owned(),
            expected,
            why: if security.is_plaintext() {
                "gRPC runs in plain text under AS2_GRPC_INSECURE_PLAINTEXT"
            } else {
                "gRPC runs over mutual TLS"
            },
        });
    }
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
        let error = channel(
            "routing",
            "not a url",
            ChannelSettings::default(),
            &GrpcSecurity::InsecurePlaintext,
        )
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
        let plaintext = GrpcSecurity::InsecurePlaintext;
        assert!(
            channel(
                "mdn",
                "http://127.0.0.1:1",
                ChannelSettings::default(),
                &plaintext
            )
            .is_ok()
        );
    }

    #[tokio::test]
    async fn the_scheme_must_match_the_security() {
        let error = channel(
            "mdn",
            "https://127.0.0.1:1",
            ChannelSettings::default(),
            &GrpcSecurity::InsecurePlaintext,
        )
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(error.contains("must start with http://"), "{error}");
    }
}
