//! Sending one MDN: an HTTP(S) POST to the partner's Receipt-Delivery-Option URL, to
//! addresses the partnership allows only ([`as2_partner::target`]), connecting as the
//! partnership's HTTPS settings say (client certificate, trusted server certificates,
//! egress proxy: [`as2_partner::https`]), redirects not followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use as2_partner::https::HttpsSettings;
use as2_partner::keys::KeyStore;
use as2_partner::proxy::EgressProxy;
use as2_partner::target::{AddressPolicy, Network};
pub use as2_partner::transport::TransportSetupError;
use as2_partner::transport::{ClientDefaults, PartnerClients, SendError, TransportLimits};

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
    /// Not sent: the partner's TLS server certificate is not trusted (the handshake was
    /// broken off before any byte of the MDN), or the partnership's HTTPS settings
    /// cannot be used (our client certificate's key is missing). Final: an operator
    /// must act.
    Untrusted {
        /// Why.
        reason: String,
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
            Self::Untrusted { .. } => "tls_refused",
        }
    }

    /// Whether another attempt cannot end otherwise (a target that is not allowed, a
    /// redirect, a server certificate that is not trusted), so the delivery fails now.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::NotAllowed { .. } | Self::Redirected { .. } | Self::Untrusted { .. }
        )
    }

    /// The HTTP status received, 0 without a response.
    pub fn http_status(&self) -> u32 {
        match self {
            Self::Accepted { status } | Self::Refused { status } | Self::Redirected { status } => {
                u32::from(*status)
            }
            Self::NoResponse { .. }
            | Self::TimedOut
            | Self::NotAllowed { .. }
            | Self::Untrusted { .. } => 0,
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
            Self::NotAllowed { reason } | Self::Untrusted { reason } => {
                format!("not delivered: {reason}")
            }
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

/// Where and how the MDN service connects, beyond each partnership's settings.
#[derive(Clone, Debug)]
pub struct MdnConnections {
    /// Timeout of one attempt, the connect included.
    pub attempt_timeout: Duration,
    /// More CA certificates trusted with the system's.
    pub extra_ca_file: Option<PathBuf>,
    /// The service's egress proxy.
    pub egress_proxy: Option<EgressProxy>,
    /// The resolver and dialer.
    pub network: Network,
}

/// Posts MDNs over HTTP/1.1, plain or TLS ([`PartnerClients`]: OpenSSL, the system's
/// CA certificates plus an optional extra CA file, or what the partnership trusts). One
/// pooled client per [`AddressPolicy`] and HTTPS settings, so a connection made for a
/// partnership that allows private targets, or with one partnership's client
/// certificate, never serves another. Cheap to clone.
#[derive(Clone)]
pub struct MdnTransport {
    clients: Arc<PartnerClients>,
    attempt_timeout: Duration,
}

impl MdnTransport {
    /// A transport whose attempts (the connect included) give up after the attempt
    /// timeout, presenting client certificates from `keys`.
    pub fn new(
        connections: MdnConnections,
        keys: Arc<KeyStore>,
    ) -> Result<Self, TransportSetupError> {
        let defaults = ClientDefaults {
            limits: TransportLimits {
                connect_timeout: connections.attempt_timeout,
                max_response_bytes: MAX_RESPONSE_BYTES,
            },
            network: connections.network,
            extra_ca_file: connections.extra_ca_file,
            egress_proxy: connections.egress_proxy,
        };
        Ok(Self {
            clients: Arc::new(PartnerClients::new(defaults, keys)?),
            attempt_timeout: connections.attempt_timeout,
        })
    }

    /// POSTs `mdn` to `url`, connecting only to addresses `policy` allows and as
    /// `https` says, and reports how it went; never fails otherwise.
    pub async fn post(
        &self,
        url: &str,
        mdn: &PreparedMdn,
        policy: AddressPolicy,
        https: &HttpsSettings,
    ) -> AttemptOutcome {
        let transport = match self.clients.client(policy, https) {
            Ok(transport) => transport,
            Err(error) => {
                return AttemptOutcome::Untrusted {
                    reason: as2_partner::transport::bounded(error.to_string()),
                };
            }
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
            Err(error @ SendError::Untrusted(_)) => AttemptOutcome::Untrusted {
                reason: error.to_string(),
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
        let keys = tempfile::tempdir().unwrap();
        let transport = MdnTransport::new(
            MdnConnections {
                attempt_timeout: Duration::from_secs(2),
                extra_ca_file: None,
                egress_proxy: None,
                network: Network::default(),
            },
            Arc::new(KeyStore::new(keys.path())),
        )
        .unwrap();
        let https = HttpsSettings::default();
        let port = as2_testkit::free_port();
        let mdn = PreparedMdn {
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: b"x".to_vec(),
        };
        let url = format!("http://127.0.0.1:{port}/mdn");
        let outcome = transport.post(&url, &mdn, AddressPolicy::Any, &https).await;
        assert!(
            matches!(outcome, AttemptOutcome::NoResponse { .. }),
            "{outcome:?}"
        );
        let outcome = transport
            .post(&url, &mdn, AddressPolicy::PublicOnly, &https)
            .await;
        assert!(outcome.is_final(), "{outcome:?}");
        assert_eq!(
            outcome.error_text(),
            "not delivered: 127.0.0.1 is a loopback address and the partnership does not allow private targets"
        );
    }
}
