//! Sending one MDN: an HTTP(S) POST to the partner's Receipt-Delivery-Option URL.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openssl::ssl::{SslConnector, SslMethod};

use crate::job::PreparedMdn;

/// Most of a partner's response body that is read (and then discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long idle connections to partners are kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest error text that is recorded.
const MAX_ERROR_CHARS: usize = 300;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportSetupError {
    /// OpenSSL refused the TLS setup (for example an unreadable CA file).
    #[error("tls setup failed: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx response.
    Accepted {
        /// The status code.
        status: u16,
    },
    /// A response other than 2xx.
    Refused {
        /// The status code.
        status: u16,
    },
    /// No response: connection refused or reset, TLS failure, bad URL.
    NoResponse {
        /// What went wrong.
        error: String,
    },
    /// No response within the attempt timeout.
    TimedOut,
}

impl AttemptOutcome {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "delivered",
            Self::Refused { status } if *status >= 500 => "http_5xx",
            Self::Refused { status } if *status >= 400 => "http_4xx",
            Self::Refused { .. } => "http_other",
            Self::NoResponse { .. } => "connection_error",
            Self::TimedOut => "timeout",
        }
    }

    /// The HTTP status received, 0 without a response.
    pub fn http_status(&self) -> u32 {
        match self {
            Self::Accepted { status } | Self::Refused { status } => u32::from(*status),
            Self::NoResponse { .. } | Self::TimedOut => 0,
        }
    }

    /// The error text recorded for a failed attempt.
    pub fn error_text(&self) -> String {
        match self {
            Self::Accepted { .. } => String::new(),
            Self::Refused { status } => {
                let reason = http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|code| code.canonical_reason())
                    .unwrap_or("");
                format!("the partner answered {status} {reason}")
                    .trim_end()
                    .to_owned()
            }
            Self::NoResponse { error } => error.clone(),
            Self::TimedOut => "no response within the attempt timeout".to_owned(),
        }
    }
}

/// Posts MDNs over HTTP/1.1, plain or TLS (OpenSSL, the system's CA certificates plus
/// an optional extra CA file). Cheap to clone; connections are pooled.
#[derive(Clone)]
pub struct MdnTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    attempt_timeout: Duration,
}

impl MdnTransport {
    /// A transport whose attempts give up after `attempt_timeout`.
    pub fn new(
        attempt_timeout: Duration,
        extra_ca_file: Option<&Path>,
    ) -> Result<Self, TransportSetupError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(attempt_timeout));
        http.set_nodelay(true);
        let mut tls = SslConnector::builder(SslMethod::tls_client())?;
        if let Some(file) = extra_ca_file {
            tls.set_ca_file(file)?;
        }
        let connector = HttpsConnector::with_connector(http, tls)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            client,
            attempt_timeout,
        })
    }

    /// POSTs `mdn` to `url` and reports how it went; never fails otherwise.
    pub async fn post(&self, url: &str, mdn: &PreparedMdn) -> AttemptOutcome {
        let mut request = http::Request::post(url);
        for (name, value) in &mdn.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = match request.body(Full::new(Bytes::copy_from_slice(&mdn.body))) {
            Ok(request) => request,
            Err(error) => {
                return AttemptOutcome::NoResponse {
                    error: bounded(format!("cannot build the request: {error}")),
                };
            }
        };
        let exchange =
            async {
                let response = self.client.request(request).await.map_err(|error| {
                    AttemptOutcome::NoResponse {
                        error: bounded(as2_common::error_chain(&error)),
                    }
                })?;
                let status = response.status();
                // Read (a bounded part of) the body so the connection can be reused.
                let _ = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await;
                Ok::<_, AttemptOutcome>(status)
            };
        match tokio::time::timeout(self.attempt_timeout, exchange).await {
            Err(_elapsed) => AttemptOutcome::TimedOut,
            Ok(Err(outcome)) => outcome,
            Ok(Ok(status)) if status.is_success() => AttemptOutcome::Accepted {
                status: status.as_u16(),
            },
            Ok(Ok(status)) => AttemptOutcome::Refused {
                status: status.as_u16(),
            },
        }
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

    #[test]
    fn outcomes_have_bounded_labels_and_texts() {
        assert_eq!(AttemptOutcome::Refused { status: 503 }.label(), "http_5xx");
        assert_eq!(AttemptOutcome::Refused { status: 404 }.label(), "http_4xx");
        assert_eq!(
            AttemptOutcome::Refused { status: 500 }.error_text(),
            "the partner answered 500 Internal Server Error"
        );
        assert_eq!(AttemptOutcome::TimedOut.http_status(), 0);
        assert_eq!(bounded("x".repeat(1000)).len(), MAX_ERROR_CHARS);
    }

    #[tokio::test]
    async fn a_closed_port_is_no_response() {
        let transport = MdnTransport::new(Duration::from_secs(2), None).unwrap();
        let port = as2_testkit::free_port();
        let mdn = PreparedMdn {
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: b"x".to_vec(),
        };
        let outcome = transport
            .post(&format!("http://127.0.0.1:{port}/mdn"), &mdn)
            .await;
        assert!(
            matches!(outcome, AttemptOutcome::NoResponse { .. }),
            "{outcome:?}"
        );
    }
}
