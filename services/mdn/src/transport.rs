//! Sending one MDN: an HTTP(S) POST to the partner's Receipt-Delivery-Option URL.

use std::path::Path;
use std::time::Duration;

pub use as2_partner::transport::TransportSetupError;
use as2_partner::transport::{PartnerTransport, SendError, TransportLimits};

use crate::job::PreparedMdn;

/// Most of a partner's response body that is read (and then discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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

/// Posts MDNs over HTTP/1.1, plain or TLS ([`PartnerTransport`]: OpenSSL, the system's
/// CA certificates plus an optional extra CA file). Cheap to clone; connections are
/// pooled.
#[derive(Clone)]
pub struct MdnTransport {
    transport: PartnerTransport,
    attempt_timeout: Duration,
}

impl MdnTransport {
    /// A transport whose attempts (the connect included) give up after
    /// `attempt_timeout`.
    pub fn new(
        attempt_timeout: Duration,
        extra_ca_file: Option<&Path>,
    ) -> Result<Self, TransportSetupError> {
        let limits = TransportLimits {
            connect_timeout: attempt_timeout,
            max_response_bytes: MAX_RESPONSE_BYTES,
        };
        Ok(Self {
            transport: PartnerTransport::with_limits(limits, extra_ca_file)?,
            attempt_timeout,
        })
    }

    /// POSTs `mdn` to `url` and reports how it went; never fails otherwise.
    pub async fn post(&self, url: &str, mdn: &PreparedMdn) -> AttemptOutcome {
        let answer = self
            .transport
            .post_for_status(url, &mdn.headers, &mdn.body, self.attempt_timeout)
            .await;
        match answer {
            Ok(status) if status.is_success() => AttemptOutcome::Accepted {
                status: status.as_u16(),
            },
            Ok(status) => AttemptOutcome::Refused {
                status: status.as_u16(),
            },
            Err(SendError::Timeout(_)) => AttemptOutcome::TimedOut,
            Err(error @ SendError::Request(_)) => AttemptOutcome::NoResponse {
                error: as2_partner::transport::bounded(error.to_string()),
            },
            Err(SendError::Connection(error)) => AttemptOutcome::NoResponse { error },
        }
    }
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
