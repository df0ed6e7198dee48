//! POSTing an AS2 message to a partner and reading the answer.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openssl::ssl::{SslConnector, SslMethod};

/// Largest response body read (a synchronous MDN is a few KiB).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long idle connections to partners are kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest error text kept.
const MAX_ERROR_CHARS: usize = 300;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("tls setup failed: {0}")]
pub struct TransportSetupError(#[from] openssl::error::ErrorStack);

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
}

/// Posts AS2 messages over HTTP/1.1, plain or TLS. Cheap to clone.
#[derive(Clone)]
pub struct PartnerTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl PartnerTransport {
    /// A transport trusting the system's CA certificates plus `extra_ca_file`.
    pub fn new(extra_ca_file: Option<&Path>) -> Result<Self, TransportSetupError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(30)));
        http.set_nodelay(true);
        let mut tls = SslConnector::builder(SslMethod::tls_client())?;
        if let Some(file) = extra_ca_file {
            tls.set_ca_file(file)?;
        }
        let connector = HttpsConnector::with_connector(http, tls)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self { client })
    }

    /// POSTs `body` with `headers` to `url` and reads the answer within `timeout`.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<PartnerResponse, SendError> {
        let mut request = http::Request::post(url);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|error| SendError::Request(bounded(error.to_string())))?;
        let exchange = async {
            let response =
                self.client.request(request).await.map_err(|error| {
                    SendError::Connection(bounded(as2_common::error_chain(&error)))
                })?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
                })
                .collect();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
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
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout(timeout.as_secs())))
    }
}

fn bounded(text: String) -> String {
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
        let outcome = transport
            .post(
                &format!("http://127.0.0.1:{port}/as2"),
                &[("Content-Type".to_owned(), "text/plain".to_owned())],
                b"x",
                Duration::from_secs(2),
            )
            .await;
        assert!(
            matches!(outcome, Err(SendError::Connection(_))),
            "{outcome:?}"
        );
    }
}
