//! Sending: one keep-alive HTTP/1.1 connection per worker, workers taking the next
//! prepared message until none is left, each answer checked and timed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use as2_protocol::mdn::{self, MdnVerification};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use openssl::x509::X509;
use tokio::net::TcpStream;

use crate::prepare::PreparedMessage;

/// How answers are checked.
#[derive(Clone, Debug)]
pub struct AnswerCheck {
    /// An MDN is expected in the response.
    pub expect_mdn: bool,
    /// The MDN must be signed (multipart/signed).
    pub expect_signed: bool,
    /// Verify the MDN's signature against these certificates and compare its MIC.
    pub verify_with: Option<Vec<X509>>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Latency of each successful request.
    pub latencies: Vec<Duration>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Request body bytes sent in successful requests.
    pub body_bytes: u64,
    /// From the first request sent to the last answer read.
    pub elapsed: Duration,
}

/// Sends all `messages` to `authority` over `concurrency` connections.
pub async fn run(
    authority: &str,
    messages: Vec<PreparedMessage>,
    concurrency: usize,
    check: &AnswerCheck,
) -> RunOutcome {
    let queue = Mutex::new(messages.into_iter());
    let started = Instant::now();
    let workers = (0..concurrency.max(1)).map(|_| worker(authority, &queue, check));
    let outcomes = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut total = RunOutcome {
        elapsed,
        ..RunOutcome::default()
    };
    for outcome in outcomes {
        total.latencies.extend(outcome.latencies);
        total.body_bytes += outcome.body_bytes;
        for (kind, count) in outcome.errors {
            *total.errors.entry(kind).or_default() += count;
        }
    }
    total
}

async fn worker(
    authority: &str,
    queue: &Mutex<std::vec::IntoIter<PreparedMessage>>,
    check: &AnswerCheck,
) -> RunOutcome {
    let mut outcome = RunOutcome::default();
    let mut connection: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let Some(message) = next(queue) else { break };
        let sender = match &mut connection {
            Some(sender) if !sender.is_closed() => sender,
            _ => match connect(authority).await {
                Ok(sender) => connection.insert(sender),
                Err(kind) => {
                    *outcome.errors.entry(kind).or_default() += 1;
                    continue;
                }
            },
        };
        let body_bytes = message
            .request
            .body()
            .size_hint()
            .exact()
            .unwrap_or_default();
        let started = Instant::now();
        let answer = tokio::time::timeout(check.timeout, exchange(sender, message, check)).await;
        match answer {
            Ok(Ok(())) => {
                outcome.latencies.push(started.elapsed());
                outcome.body_bytes += body_bytes;
            }
            Ok(Err(failure)) => {
                if failure.connection_broken {
                    connection = None;
                }
                *outcome.errors.entry(failure.kind).or_default() += 1;
            }
            Err(_elapsed) => {
                connection = None;
                *outcome.errors.entry("timeout".to_owned()).or_default() += 1;
            }
        }
    }
    outcome
}

fn next(queue: &Mutex<std::vec::IntoIter<PreparedMessage>>) -> Option<PreparedMessage> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .next()
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|error| format!("connect: {}", error.kind()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Why a request did not succeed.
struct Failure {
    kind: String,
    connection_broken: bool,
}

impl Failure {
    fn answer(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            connection_broken: false,
        }
    }

    fn transport(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            connection_broken: true,
        }
    }
}

async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    message: PreparedMessage,
    check: &AnswerCheck,
) -> Result<(), Failure> {
    sender
        .ready()
        .await
        .map_err(|error| Failure::transport(format!("connection: {}", short(&error))))?;
    let response = sender
        .send_request(message.request)
        .await
        .map_err(|error| Failure::transport(format!("request: {}", short(&error))))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| Failure::transport(format!("response body: {}", short(&error))))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(Failure::answer(format!("http {}", status.as_u16())));
    }
    if !check.expect_mdn {
        return Ok(());
    }
    if check.expect_signed
        && !content_type
            .to_ascii_lowercase()
            .starts_with("multipart/signed")
    {
        return Err(Failure::answer("mdn not signed"));
    }
    match disposition(&body) {
        Some(Disposition::Processed) => {}
        Some(Disposition::Other(text)) => {
            return Err(Failure::answer(format!("disposition {text}")));
        }
        None => return Err(Failure::answer("no disposition in the answer")),
    }
    if let Some(certificates) = &check.verify_with {
        let verification = MdnVerification {
            partner_certificates: certificates,
            allow_md5: false,
            check_certificate_validity: true,
            require_signature: check.expect_signed,
        };
        let parsed = mdn::parse_mdn(&content_type, &body, &verification)
            .map_err(|error| Failure::answer(format!("mdn invalid: {error}")))?;
        if !parsed.mic_matches(&message.expected_mic) {
            return Err(Failure::answer("mdn mic mismatch"));
        }
    }
    Ok(())
}

fn short(error: &hyper::Error) -> String {
    if error.is_closed() || error.is_incomplete_message() {
        "closed".to_owned()
    } else {
        error.to_string()
    }
}

/// The disposition an MDN reports, read cheaply from its `Disposition:` field.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Plain `processed`, no modifier.
    Processed,
    /// Anything else (`processed/error: ...`, `processed/warning: ...`, `failed/...`).
    Other(String),
}

/// Finds the `Disposition:` field (at the start of a line) and classifies its value.
fn disposition(body: &[u8]) -> Option<Disposition> {
    const FIELD: &[u8] = b"\ndisposition:";
    let position = memchr::memmem::find_iter(body, b"isposition:")
        .filter_map(|at| at.checked_sub(2))
        .find(|&start| body[start..start + FIELD.len()].eq_ignore_ascii_case(FIELD))?;
    let value_start = position + FIELD.len();
    let value_end =
        memchr::memchr(b'\n', &body[value_start..]).map_or(body.len(), |end| value_start + end);
    let value = String::from_utf8_lossy(&body[value_start..value_end]);
    // `automatic-action/MDN-sent-automatically; processed[/modifier: text]`
    let status = value
        .split_once(';')
        .map_or(value.as_ref(), |(_, status)| status)
        .trim();
    if status.eq_ignore_ascii_case("processed") {
        Some(Disposition::Processed)
    } else {
        Some(Disposition::Other(status.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_read_from_the_field_at_a_line_start() {
        let processed = b"--b\r\nContent-Disposition: attachment\r\n\r\nReporting-UA: x\r\nDisposition: automatic-action/MDN-sent-automatically; processed\r\n\r\n--b--";
        assert_eq!(disposition(processed), Some(Disposition::Processed));
        let error = b"x\r\ndisposition: automatic-action/MDN-sent-automatically; processed/error: decryption-failed\r\n";
        assert_eq!(
            disposition(error),
            Some(Disposition::Other(
                "processed/error: decryption-failed".to_owned()
            ))
        );
        assert_eq!(disposition(b"Content-Disposition: attachment\r\n"), None);
        assert_eq!(disposition(b""), None);
    }
}
