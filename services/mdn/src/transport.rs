//! Sending one MDN: an HTTP(S) POST to the partner's Receipt-Delivery-Option URL, to
//! addresses the partnership allows only ([`as2_partner::target`]), redirects not
//! followed.

use std::path::Path;
use std::time::Duration;

use as2_partner::target::{AddressPolicy, Network};
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
    /// Not attempted: the target is not allowed (no connection was made). Final.
    NotAllowed {
        /// Why.
        reason: String,
    },
    /// A redirect (3xx), which is not followed. Final.
    Redirected {
        /// The status code.
        status: u16,
    },
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
            Self::NotAllowed { .. } => "not_allowed",
            Self::Redirected { .. } => "redirect",
        }
    }

    /// Whether another attempt cannot end otherwise (a target that is not allowed, a
    /// redirect), so the delivery fails now.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::NotAllowed { .. } | Self::Redirected { .. })
    }

    /// The HTTP status received, 0 without a response.
    pub fn http_status(&self) -> u32 {
        match self {
            Self::Accepted { status } | Self::Refused { status } | Self::Redirected { status } => {
                u32::from(*status)
            }
            Self::NoResponse { .. } | Self::TimedOut | Self::NotAllowed { .. } => 0,
        }
    }

    /// The error text recorded for a failed attempt.
    pub fn error_text(&self) -> String {
        match self {
            Self::Accepted { .. } => String::new(),
            Self::Refused { status } => status_text(*status),
            Self::Redirected { status } => format!(
                "{}: redirects are not followed (give the final URL in the Receipt-Delivery-Option)",
                status_text(*status)
            ),
            Self::NoResponse { error } => error.clone(),
            Self::TimedOut => "no response within the attempt timeout".to_owned(),
            Self::NotAllowed { reason } => format!("not delivered: {reason}"),
        }
    }
}

fn status_text(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("");
    format!("the partner answered {status} {reason}")
        .trim_end()
        .to_owned()
}

/// Posts MDNs over HTTP/1.1, plain or TLS ([`PartnerTransport`]: OpenSSL, the system's
/// CA certificates plus an optional extra CA file). One pooled client per
/// [`AddressPolicy`], so a connection made for a partnership that allows private
/// targets never serves one that does not. Cheap to clone.
#[derive(Clone)]
pub struct MdnTransport {
    public_only: PartnerTransport,
    any_address: PartnerTransport,
    attempt_timeout: Duration,
}

impl MdnTransport {
    /// A transport whose attempts (the connect included) give up after
    /// `attempt_timeout`, connecting through `network`.
    pub fn new(
        attempt_timeout: Duration,
        extra_ca_file: Option<&Path>,
        network: Network,
    ) -> Result<Self, TransportSetupError> {
        let limits = TransportLimits {
            connect_timeout: attempt_timeout,
            max_response_bytes: MAX_RESPONSE_BYTES,
        };
        let transport =
            |policy| PartnerTransport::with_network(limits, extra_ca_file, policy, network.clone());
        Ok(Self {
            public_only: transport(AddressPolicy::PublicOnly)?,
            any_address: transport(AddressPolicy::Any)?,
            attempt_timeout,
        })
    }

    /// POSTs `mdn` to `url`, connecting only to addresses `policy` allows, and reports
    /// how it went; never fails otherwise.
    pub async fn post(
        &self,
        url: &str,
        mdn: &PreparedMdn,
        policy: AddressPolicy,
    ) -> AttemptOutcome {
        let transport = match policy {
            AddressPolicy::PublicOnly => &self.public_only,
            AddressPolicy::Any => &self.any_address,
        };
        let answer = transport
            .post_for_status(url, &mdn.headers, &mdn.body, self.attempt_timeout)
            .await;
        match answer {
            Ok(status) if status.is_success() => AttemptOutcome::Accepted {
                status: status.as_u16(),
            },
            Ok(status) if status.is_redirection() => AttemptOutcome::Redirected {
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
            Err(SendError::Refused(refused)) => AttemptOutcome::NotAllowed {
                reason: refused.reason,
            },
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
        let transport =
            MdnTransport::new(Duration::from_secs(2), None, Network::default()).unwrap();
        let port = as2_testkit::free_port();
        let mdn = PreparedMdn {
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: b"x".to_vec(),
        };
        let url = format!("http://127.0.0.1:{port}/mdn");
        let outcome = transport.post(&url, &mdn, AddressPolicy::Any).await;
        assert!(
            matches!(outcome, AttemptOutcome::NoResponse { .. }),
            "{outcome:?}"
        );
        let outcome = transport.post(&url, &mdn, AddressPolicy::PublicOnly).await;
        assert!(outcome.is_final(), "{outcome:?}");
        assert_eq!(
            outcome.error_text(),
            "not delivered: 127.0.0.1 is a loopback address and the partnership does not allow private targets"
        );
    }
}
