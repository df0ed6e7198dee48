//! POSTing to a partner and reading the answer: AS2 messages (the sender, `as2ctl send`)
//! and asynchronous MDNs (the MDN service) go out through the same client, whose TCP
//! connections are made by a [`CheckedConnector`]: operator-configured URLs with
//! [`AddressPolicy::Any`], URLs from partners' messages with the partnership's policy.
//! TLS on top is set up from the partnership's [`HttpsSettings`] ([`crate::https`]);
//! [`PartnerClients`] keeps one client per policy and settings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::https::{
    self, ConnectionFailure, HttpsSettings, ServerCertificateRefused, ServerTrust,
    VerifyingConnector,
};
use crate::keys::{KeyError, KeyPair, KeyStore};
use crate::proxy::EgressProxy;
use crate::target::{AddressPolicy, CheckedConnector, Network, TargetRefused, refusal_in};

/// How long idle connections to partners are kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest error text kept.
const MAX_ERROR_CHARS: usize = 300;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    /// OpenSSL refused the TLS setup (for example an unreadable CA file, a client
    /// certificate that does not match its key).
    #[error("tls setup failed: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    /// Our key for the TLS client certificate cannot be loaded.
    #[error("our TLS client certificate: {0}")]
    ClientCertificate(#[from] KeyError),
}

/// Limits of a [`PartnerTransport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// Largest response body read (a synchronous MDN is a few KiB).
    pub max_response_bytes: usize,
}

impl Default for TransportLimits {
    /// A 30 s connect timeout and response bodies up to 1 MiB.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// The partner's answer.
#[derive(Clone, Debug)]
pub struct PartnerResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers (values that are not text are dropped).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl PartnerResponse {
    /// The value of the named header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A send that got no (complete) answer.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// Connection refused or reset, TLS failure, a body over the limit.
    #[error("{0}")]
    Connection(String),
    /// No answer within the timeout.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// The request could not be built (a header that is not valid HTTP, a bad URL).
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The target's addresses are not allowed; no connection was attempted.
    #[error("{0}")]
    Refused(TargetRefused),
    /// The partner's TLS server certificate is not trusted (not the pinned one, not of
    /// the partnership's CAs, ...): the handshake was broken off, nothing was sent.
    #[error("{0}; nothing was sent")]
    Untrusted(String),
}

/// An error of a streamed request body (reading the object it comes from).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a request to a partner.
pub enum RequestBody {
    /// Held in memory; sent with a Content-Length unless `chunked`.
    Bytes {
        /// The body.
        body: Bytes,
        /// Send it with chunked transfer coding instead of a Content-Length.
        chunked: bool,
    },
    /// Streamed (from the object store), never held whole: sent with a Content-Length
    /// of `length` when given (the stream must yield exactly that many bytes), chunked
    /// otherwise.
    Stream {
        /// The bytes, in order.
        stream: BoxStream<'static, Result<Bytes, BodyError>>,
        /// The length, when sent with a Content-Length.
        length: Option<u64>,
    },
}

type ClientBody = UnsyncBoxBody<Bytes, BodyError>;

/// Posts to partners over HTTP/1.1, plain or TLS (OpenSSL, the system's CA certificates
/// plus an optional extra CA file, or what a partnership's [`HttpsSettings`] trust).
/// Redirects are never followed (a 3xx is the answer). Cheap to clone; connections are
/// pooled, so one transport serves one [`AddressPolicy`] and one way of connecting
/// ([`Connections`]): a pooled connection was made to an address that policy allows,
/// with that client certificate and that trust.
#[derive(Clone)]
pub struct PartnerTransport {
    client: Client<VerifyingConnector, ClientBody>,
    max_response_bytes: usize,
    /// The key id of the TLS client certificate presented, if any.
    client_certificate: Option<String>,
}

/// How the connections of one [`PartnerTransport`] are made.
#[derive(Clone, Debug, Default)]
pub struct Connections<'a> {
    /// Which addresses they may go to.
    pub policy: AddressPolicy,
    /// The resolver and dialer.
    pub network: Network,
    /// Which server certificates are accepted.
    pub trust: ServerTrust,
    /// More CA certificates trusted under [`ServerTrust::System`].
    pub extra_ca_file: Option<&'a Path>,
    /// Our TLS client certificate, if one is presented.
    pub client_certificate: Option<&'a KeyPair>,
    /// The egress proxy they are tunnelled through, if any.
    pub proxy: Option<EgressProxy>,
}

impl PartnerTransport {
    /// A transport with the default [`TransportLimits`] trusting the system's CA
    /// certificates plus `extra_ca_file`.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<Self, TransportSetupError> {
        Self::with_limits(TransportLimits::default(), extra_ca_file)
    }

    /// A transport with `limits` trusting the system's CA certificates plus
    /// `extra_ca_file`, to any address (for operator-configured URLs).
    pub fn with_limits(
        limits: TransportLimits,
        extra_ca_file: Option<&Path>,
    ) -> Result<Self, TransportSetupError> {
        Self::with_network(
            limits,
            extra_ca_file,
            AddressPolicy::Any,
            Network::default(),
        )
    }

    /// A transport with `limits` trusting the system's CA certificates plus
    /// `extra_ca_file`, connecting through `network` to the addresses `policy` allows
    /// (a target whose host resolves to any other address gets
    /// [`SendError::Refused`] without a connection).
    pub fn with_network(
        limits: TransportLimits,
        extra_ca_file: Option<&Path>,
        policy: AddressPolicy,
        network: Network,
    ) -> Result<Self, TransportSetupError> {
        Self::with_connections(
            limits,
            Connections {
                policy,
                network,
                extra_ca_file,
                ..Connections::default()
            },
        )
    }

    /// A transport with `limits` whose connections are made as `connections` says.
    pub fn with_connections(
        limits: TransportLimits,
        connections: Connections<'_>,
    ) -> Result<Self, TransportSetupError> {
        let tcp = CheckedConnector::new(
            connections.policy,
            connections.network,
            limits.connect_timeout,
        )
        .with_proxy(connections.proxy);
        let tls = https::client_tls(
            &connections.trust,
            connections.extra_ca_file,
            connections.client_certificate,
        )?;
        let connector = VerifyingConnector::new(tcp, tls)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            client,
            max_response_bytes: limits.max_response_bytes,
            client_certificate: connections.client_certificate.map(|key| key.id.clone()),
        })
    }

    /// POSTs `body` with `headers` to `url` and reads the answer within `timeout`; a
    /// body over the limit is a [`SendError::Connection`].
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<PartnerResponse, SendError> {
        let body = RequestBody::Bytes {
            body: Bytes::copy_from_slice(body),
            chunked: false,
        };
        self.post_body(url, headers, body, timeout).await
    }

    /// POSTs `body` with `headers` to `url` and reads the answer. `timeout` bounds the
    /// wait for the answer once the body is sent, and each pause of the body's upload
    /// (the partner not taking bytes), so a large body on a slow line is not cut for
    /// its size. An answer body over the limit is a [`SendError::Connection`].
    pub async fn post_body(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: RequestBody,
        timeout: Duration,
    ) -> Result<PartnerResponse, SendError> {
        let progress = Progress::new();
        let request = build_request(url, headers, body, &progress)?;
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            let body = Limited::new(response.into_body(), self.max_response_bytes)
                .collect()
                .await
                .map_err(|error| {
                    SendError::Connection(bounded(format!("reading the answer: {error}")))
                })?
                .to_bytes()
                .to_vec();
            Ok(PartnerResponse {
                status,
                headers,
                body,
            })
        };
        progress.bound(exchange, timeout).await
    }

    /// POSTs `body` with `headers` to `url` and returns the answer's HTTP status within
    /// `timeout`. Up to the limit of the body is read (so the connection can be reused)
    /// and discarded; a body that cannot be read does not change the status.
    pub async fn post_for_status(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<http::StatusCode, SendError> {
        let body = RequestBody::Bytes {
            body: Bytes::copy_from_slice(body),
            chunked: false,
        };
        let request = build_request(url, headers, body, &Progress::new())?;
        let exchange = async {
            let response = self.send(request).await?;
            let status = response.status();
            let _ = Limited::new(response.into_body(), self.max_response_bytes)
                .collect()
                .await;
            Ok(status)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout(timeout.as_secs())))
    }

    async fn send(
        &self,
        mut request: http::Request<ClientBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let connection = hyper_util::client::legacy::connect::capture_connection(&mut request);
        self.client.request(request).await.map_err(|error| {
            if let Some(refused) = refusal_in(&error) {
                return SendError::Refused(TargetRefused {
                    reason: bounded(refused.reason.clone()),
                });
            }
            if let Some(untrusted) = source_of::<ServerCertificateRefused>(&error) {
                return SendError::Untrusted(bounded(untrusted.reason.clone()));
            }
            // The connection's own failure (a TLS alert) is the cause; hyper's words
            // for the request ("connection was not ready") follow it.
            let mut reason = as2_common::error_chain(&error);
            if let Some(failure) = connection_failure(&connection)
                && !reason.contains(&failure)
            {
                reason = format!("{failure} ({reason})");
            }
            let hint = client_certificate_hint(&reason, self.client_certificate.as_deref());
            SendError::Connection(bounded(format!("{hint}{reason}")))
        })
    }
}

/// The I/O error the request's connection noted, if it got one.
fn connection_failure(
    connection: &hyper_util::client::legacy::connect::CaptureConnection,
) -> Option<String> {
    let metadata = connection.connection_metadata();
    let mut extras = http::Extensions::new();
    metadata.as_ref()?.get_extras(&mut extras);
    extras.get::<ConnectionFailure>()?.noted()
}

/// What a TLS alert of the partner's server about client certificates means for us,
/// to lead the error text ("" for other errors).
fn client_certificate_hint(reason: &str, presented: Option<&str>) -> String {
    const CLIENT_CERTIFICATE_ALERTS: [&str; 4] = [
        "alert certificate required",
        "alert bad certificate",
        "alert unknown ca",
        "alert certificate unknown",
    ];
    if !CLIENT_CERTIFICATE_ALERTS
        .iter()
        .any(|alert| reason.contains(alert))
    {
        return String::new();
    }
    match presented {
        None => "the partner requires a TLS client certificate and the partnership names none (https.client_certificate_key_id): ".to_owned(),
        Some(id) => format!("the partner did not accept our TLS client certificate (key {id:?}): "),
    }
}

/// The `T` somewhere in `error`'s source chain.
fn source_of<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// Most clients one [`PartnerClients`] keeps; past it they are all dropped and made
/// again on use (their pooled connections close).
const MAX_CLIENTS: usize = 256;

/// What every client of a [`PartnerClients`] shares.
#[derive(Clone, Debug)]
pub struct ClientDefaults {
    /// Connect timeout and response size limit.
    pub limits: TransportLimits,
    /// The resolver and dialer.
    pub network: Network,
    /// More CA certificates trusted with the system's (for partnerships that name no CA
    /// bundle and pin no certificate).
    pub extra_ca_file: Option<PathBuf>,
    /// The service's egress proxy (`AS2_EGRESS_PROXY_URL`), for partnerships that name
    /// none and do not bypass it.
    pub egress_proxy: Option<EgressProxy>,
}

/// A service's HTTP clients to partners: one [`PartnerTransport`] per address policy
/// and [`HttpsSettings`], made on first use and kept, so a connection opened with one
/// partnership's client certificate, trust or proxy never serves another's. The TLS
/// client certificates are our keys from `keys`, by key id.
pub struct PartnerClients {
    defaults: ClientDefaults,
    keys: Arc<KeyStore>,
    made: Mutex<HashMap<(AddressPolicy, HttpsSettings), PartnerTransport>>,
}

impl PartnerClients {
    /// Clients sharing `defaults`, with client certificates from `keys`. Fails when the
    /// extra CA file does not load.
    pub fn new(defaults: ClientDefaults, keys: Arc<KeyStore>) -> Result<Self, TransportSetupError> {
        let clients = Self {
            defaults,
            keys,
            made: Mutex::new(HashMap::new()),
        };
        clients.client(AddressPolicy::Any, &HttpsSettings::default())?;
        Ok(clients)
    }

    /// The client for targets `policy` allows, connecting as `https` says.
    pub fn client(
        &self,
        policy: AddressPolicy,
        https: &HttpsSettings,
    ) -> Result<PartnerTransport, TransportSetupError> {
        let key = (policy, https.clone());
        if let Some(client) = self.lock().get(&key) {
            return Ok(client.clone());
        }
        let client_certificate = match &https.client_certificate_key_id {
            Some(id) => Some(self.keys.get(id)?),
            None => None,
        };
        let client = PartnerTransport::with_connections(
            self.defaults.limits,
            Connections {
                policy,
                network: self.defaults.network.clone(),
                trust: https.trust.clone(),
                extra_ca_file: self.defaults.extra_ca_file.as_deref(),
                client_certificate: client_certificate.as_deref(),
                proxy: https.proxy.effective(self.defaults.egress_proxy.as_ref()),
            },
        )?;
        let mut made = self.lock();
        if made.len() >= MAX_CLIENTS {
            made.clear();
        }
        made.insert(key, client.clone());
        Ok(client)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(AddressPolicy, HttpsSettings), PartnerTransport>> {
        self.made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn build_request(
    url: &str,
    headers: &[(String, String)],
    body: RequestBody,
    progress: &Progress,
) -> Result<http::Request<ClientBody>, SendError> {
    let mut request = http::Request::post(url);
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        request = request.header(name.as_str(), value.as_str());
    }
    let body = match body {
        RequestBody::Bytes {
            body,
            chunked: false,
        } => {
            progress.moved();
            Full::new(body)
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        RequestBody::Bytes {
            body,
            chunked: true,
        } => {
            // A body of one unsized frame goes out chunked.
            let stream = futures::stream::iter([Ok::<_, BodyError>(body)]);
            let stream = Tracked::new(Box::pin(stream), progress.clone());
            StreamBody::new(stream).boxed_unsync()
        }
        RequestBody::Stream { stream, length } => {
            if let Some(length) = length {
                request = request.header(http::header::CONTENT_LENGTH, length);
            }
            StreamBody::new(Tracked::new(stream, progress.clone())).boxed_unsync()
        }
    };
    request
        .body(body)
        .map_err(|error| SendError::Request(bounded(error.to_string())))
}

/// When the request body last moved: hyper took a chunk of it (a partner that stops
/// reading stops hyper from asking for more), or all of it for a body in memory.
#[derive(Clone)]
struct Progress(Arc<Mutex<tokio::time::Instant>>);

impl Progress {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(tokio::time::Instant::now())))
    }

    fn moved(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = tokio::time::Instant::now();
        }
    }

    fn last(&self) -> tokio::time::Instant {
        self.0
            .lock()
            .map(|last| *last)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }

    /// Runs `exchange` until it ends, or `timeout` passes without the body moving (or,
    /// once the body is sent, without the answer).
    async fn bound<T>(
        &self,
        exchange: impl Future<Output = Result<T, SendError>>,
        timeout: Duration,
    ) -> Result<T, SendError> {
        tokio::pin!(exchange);
        loop {
            let deadline = self.last() + timeout;
            tokio::select! {
                outcome = &mut exchange => return outcome,
                () = tokio::time::sleep_until(deadline) => {
                    if self.last() + timeout <= tokio::time::Instant::now() {
                        return Err(SendError::Timeout(timeout.as_secs()));
                    }
                }
            }
        }
    }
}

/// A body stream that marks [`Progress`] as hyper takes its chunks.
struct Tracked {
    stream: BoxStream<'static, Result<Bytes, BodyError>>,
    progress: Progress,
}

impl Tracked {
    fn new(stream: BoxStream<'static, Result<Bytes, BodyError>>, progress: Progress) -> Self {
        progress.moved();
        Self { stream, progress }
    }
}

impl Stream for Tracked {
    type Item = Result<Frame<Bytes>, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.stream.as_mut().poll_next(cx);
        if polled.is_ready() {
            self.progress.moved();
        }
        polled.map(|item| item.map(|result| result.map(Frame::data)))
    }
}

/// `text`, cut to the longest error text kept (300 characters).
pub fn bounded(text: String) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text;
    }
    text.chars().take(MAX_ERROR_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let transport = PartnerTransport::new(None).unwrap();
        let port = as2_testkit::free_port();
        let url = format!("http://127.0.0.1:{port}/as2");
        let headers = [("Content-Type".to_owned(), "text/plain".to_owned())];
        let outcome = transport
            .post(&url, &headers, b"x", Duration::from_secs(2))
            .await;
        assert!(
            matches!(outcome, Err(SendError::Connection(_))),
            "{outcome:?}"
        );
        let outcome = transport
            .post_for_status(&url, &headers, b"x", Duration::from_secs(2))
            .await;
        assert!(
            matches!(outcome, Err(SendError::Connection(_))),
            "{outcome:?}"
        );
    }

    #[test]
    fn error_texts_are_bounded() {
        assert_eq!(bounded("x".repeat(1000)).len(), MAX_ERROR_CHARS);
        assert_eq!(bounded("short".to_owned()), "short");
    }

    #[tokio::test]
    async fn a_header_that_is_not_http_is_a_request_error() {
        let transport = PartnerTransport::new(None).unwrap();
        let outcome = transport
            .post(
                "http://127.0.0.1:1/as2",
                &[("Bad Name".to_owned(), "x".to_owned())],
                b"x",
                Duration::from_secs(2),
            )
            .await;
        assert!(matches!(outcome, Err(SendError::Request(_))), "{outcome:?}");
    }

    /// A partner on a loopback port that takes one request: reads its head, then its
    /// body at `read_rate` bytes per 100 ms (`None`: never reads the body), answers 200.
    /// Returns the URL and what it received: the head (lowercase) and the body's length.
    async fn partner(
        read_rate: Option<usize>,
    ) -> (String, tokio::task::JoinHandle<(String, usize)>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/as2", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = vec![0u8; 64 * 1024];
            let head_end = loop {
                let read = socket.read(&mut buffer).await.unwrap();
                received.extend_from_slice(&buffer[..read]);
                if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
            let Some(rate) = read_rate else {
                std::future::pending::<()>().await;
                unreachable!()
            };
            let mut body = received[head_end..].to_vec();
            let chunked = head.contains("transfer-encoding: chunked");
            let length: Option<usize> = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map(|value| value.trim().parse().unwrap());
            let mut slice = vec![0u8; rate];
            loop {
                let done = match length {
                    Some(length) => body.len() >= length,
                    None => chunked && body.ends_with(b"0\r\n\r\n"),
                };
                if done {
                    break;
                }
                let read = socket.read(&mut slice).await.unwrap();
                assert!(read > 0, "the client closed before the body was sent");
                body.extend_from_slice(&slice[..read]);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            (head, body.len())
        });
        (url, served)
    }

    fn stream_of(size: usize) -> RequestBody {
        let pieces = size.div_ceil(64 * 1024);
        let stream = futures::stream::iter((0..pieces).map(move |index| {
            let length = (size - index * 64 * 1024).min(64 * 1024);
            Ok::<_, BodyError>(Bytes::from(vec![b'x'; length]))
        }));
        RequestBody::Stream {
            stream: Box::pin(stream),
            length: Some(size as u64),
        }
    }

    #[tokio::test]
    async fn bodies_go_with_a_content_length_or_chunked() {
        let transport = PartnerTransport::new(None).unwrap();
        let headers = [(
            "Content-Type".to_owned(),
            "application/pkcs7-mime".to_owned(),
        )];
        let timeout = Duration::from_secs(5);
        for chunked in [false, true] {
            let (url, served) = partner(Some(1024 * 1024)).await;
            let body = RequestBody::Bytes {
                body: Bytes::from_static(b"a message"),
                chunked,
            };
            let response = transport
                .post_body(&url, &headers, body, timeout)
                .await
                .unwrap();
            assert_eq!((response.status, &response.body[..]), (200, &b"ok"[..]));
            let (head, _) = served.await.unwrap();
            assert_eq!(
                head.contains("transfer-encoding: chunked"),
                chunked,
                "{head}"
            );
            assert_eq!(head.contains("content-length: 9"), !chunked, "{head}");
        }
        let (url, served) = partner(Some(1024 * 1024)).await;
        let response = transport
            .post_body(&url, &headers, stream_of(300_000), timeout)
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        let (head, length) = served.await.unwrap();
        assert!(head.contains("content-length: 300000"), "{head}");
        assert_eq!(length, 300_000);
    }

    #[tokio::test]
    async fn a_body_that_keeps_moving_is_not_cut_by_the_timeout_one_that_stalls_is() {
        let transport = PartnerTransport::new(None).unwrap();
        let headers = [(
            "Content-Type".to_owned(),
            "application/pkcs7-mime".to_owned(),
        )];
        // 48 MiB read at about 5 MiB/s: about 10 s in all, never long without progress;
        // the timeout is 4 s (longer than what the socket buffers hold takes to drain, a
        // few MiB, which the partner reads after the last byte left).
        let size = 48 * 1024 * 1024;
        let (url, served) = partner(Some(512 * 1024)).await;
        let started = std::time::Instant::now();
        let response = transport
            .post_body(&url, &headers, stream_of(size), Duration::from_secs(4))
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(served.await.unwrap().1, size);
        assert!(
            started.elapsed() > Duration::from_secs(8),
            "the partner read slowly: {:?}",
            started.elapsed()
        );
        // A partner that stops reading: the send ends one timeout after the socket's
        // buffers are full.
        let (url, _served) = partner(None).await;
        let outcome = transport
            .post_body(
                &url,
                &headers,
                stream_of(256 * 1024 * 1024),
                Duration::from_secs(1),
            )
            .await;
        assert!(matches!(outcome, Err(SendError::Timeout(1))), "{outcome:?}");
    }
}
