//! The AS2 HTTP endpoint: HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one port.
//!
//! The request headers are judged first ([`InboundProcessor::preflight`]): a request
//! with missing AS2 headers, from an unknown (AS2-From, AS2-To) pair or that needs a
//! dependency that is down is answered without its body being read (a small body is
//! read and discarded first, so that the client sees the answer rather than a reset
//! connection; a client that sent `Expect: 100-continue` is never asked for it).
//! Otherwise the body streams into the unwrap as it arrives (never held whole), bounded
//! in size (the partnership's limit or the global one: 413, decided from
//! Content-Length before any body is read when it is declared) and in time: a header
//! read timeout, a body idle timeout (408 when no body bytes arrive for that long) and
//! a minimum rate (408 when, past a grace period as long as the idle timeout, the body
//! has arrived slower on average than that many bytes per second). Neither limits the
//! total time, so a big body on a slow line is not cut off for its size, while a client
//! that trickles bytes just often enough to dodge the idle timeout (slow loris) cannot
//! hold a request and its memory reservation for long. A `multipart/signed` or
//! `multipart/report` request first has the start of its body read: a partner's MDN
//! (read whole, it is small) goes to the sender.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::rate::{Limited, RateLimiter};
use crate::tls::{EdgeTls, TlsClient};
use tokio_util::sync::CancellationToken;

use crate::inbound::{
    Answer, BodyChunks, BodyFailure, InboundProcessor, InboundRequest, Preflight, RequestBody,
};

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest body, in bytes, for partnerships that set no limit of their own.
    pub max_body_bytes: u64,
    /// Time to receive the request headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Longest time without any body bytes arriving (408 beyond it).
    pub body_idle_timeout: Duration,
    /// Slowest average rate of a body, in bytes per second, once it has taken longer
    /// than `body_idle_timeout` (408 below it); 0: no minimum.
    pub body_min_rate: u64,
    /// Open connections at most; the next is accepted once one closes.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Requests a minute from one source address; 0: no limit.
    pub per_source_per_minute: u32,
}

/// Streams a client may reset before the server sees them, per connection, before the
/// connection is closed (the HTTP/2 rapid-reset attack, CVE-2023-44487).
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors, per connection, before
/// it closes the connection.
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 64;
/// Largest header block of an HTTP/2 request (HTTP/1.1 has the same bound through its
/// read buffer).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// How fast a body is arriving, against the idle timeout and the minimum rate.
///
/// Only the time spent waiting for the client counts: while the edge is busy with what
/// it has (the unwrap or the archive holding the body back), the client cannot send, and
/// that is not held against it. The rate is the body's bytes over that time; it is
/// checked only once that time exceeds the grace period (the idle timeout), so short
/// bodies and slow starts are judged by the idle timeout alone.
#[derive(Clone, Debug)]
struct BodyPace {
    idle: Duration,
    min_rate: u64,
    received: u64,
    waited: Duration,
}

impl BodyPace {
    fn new(limits: &HttpLimits) -> Self {
        Self {
            idle: limits.body_idle_timeout,
            min_rate: limits.body_min_rate,
            received: 0,
            waited: Duration::ZERO,
        }
    }

    /// How long to wait for the next frame, and what it is to fail with when none comes.
    fn next_wait(&self) -> (Duration, BodyFailure) {
        let idle = (
            self.idle,
            BodyFailure::Idle {
                secs: self.idle.as_secs(),
            },
        );
        if self.min_rate == 0 {
            return idle;
        }
        // The waiting time by which the bytes received so far would be below the rate.
        let due = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        let left = due.max(self.idle).saturating_sub(self.waited);
        if left < self.idle {
            (
                left,
                BodyFailure::TooSlow {
                    min_rate: self.min_rate,
                },
            )
        } else {
            idle
        }
    }
}

/// Serves AS2 requests on `listener` (HTTPS with `tls`, each handshake on the
/// connection's own task within the header read timeout) until `stop_accepting` is
/// cancelled, then waits up to `grace_period` for open requests to finish.
pub async fn serve_as2(
    listener: TcpListener,
    tls: Option<Arc<EdgeTls>>,
    processor: Arc<InboundProcessor>,
    limits: HttpLimits,
    stop_accepting: CancellationToken,
    grace_period: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let rates = Arc::new(RateLimiter::default());
    loop {
        // A connection slot first: at the cap, clients wait in the listen backlog.
        let slot = tokio::select! {
            () = stop_accepting.cancelled() => break,
            slot = connections.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let processor = processor.clone();
        let rates = rates.clone();
        let service = move |client: TlsClient| {
            let peer = Arc::new(Peer {
                tls: client,
                source: crate::rate::source_key(peer.ip()),
            });
            service_fn(move |request| {
                let (processor, peer, rates) = (processor.clone(), peer.clone(), rates.clone());
                async move {
                    Ok::<_, Infallible>(handle(request, &processor, limits, &peer, &rates).await)
                }
            })
        };
        let Some(tls) = tls.clone() else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service(TlsClient::default()))
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "as2 connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.accept(stream));
            let (stream, client) = match handshake.await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "as2 TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "as2 TLS handshake timed out");
                    return;
                }
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service(client))
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "as2 connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace_period, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open as2 requests outlived the grace period");
    }
}

/// How much of an oversize body is read and discarded so that the client, still
/// sending, sees the 413 rather than a reset connection. Beyond it the answer is sent
/// at once and the connection closed.
const OVERSIZE_DRAIN_LIMIT: usize = 32 * 1024 * 1024;

/// How much of the body of a request answered from its headers alone is read and
/// discarded before the answer (the same purpose, for a request that is not oversize).
const PREFLIGHT_DRAIN_LIMIT: usize = 1024 * 1024;

/// How much of a `multipart/signed` or `multipart/report` body is read to tell a
/// partner's MDN from a signed message (the first part's header block must be in it).
const MDN_PEEK_BYTES: usize = 64 * 1024;

/// The largest partner's MDN read (MDNs are a few KiB).
const MAX_MDN_BYTES: usize = 1024 * 1024;

/// Who sent a request: what TLS showed, and the rate-limit key of its address.
struct Peer {
    tls: TlsClient,
    source: String,
}

/// 429 with Retry-After.
fn too_many(what: &str, limited: Limited) -> Response<Full<Bytes>> {
    let mut response = to_response(Answer::text(
        429,
        format!("too many messages {what}, please resend later"),
    ));
    if let Ok(value) = HeaderValue::from_str(&limited.retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn handle(
    request: Request<Incoming>,
    processor: &InboundProcessor,
    limits: HttpLimits,
    peer: &Peer,
    rates: &RateLimiter,
) -> Response<Full<Bytes>> {
    // Before anything else, unknown senders included.
    if let Err(limited) = rates.check(
        &format!("source {}", peer.source),
        limits.per_source_per_minute,
    ) {
        return too_many("from this address", limited);
    }
    let client = &peer.tls;
    if request.method() != Method::POST {
        let mut response = to_response(Answer::text(405, "AS2 messages are sent with POST"));
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let declared = declared_length(&request);
    let expects_continue = expects_continue(&request);
    let (parts, mut body) = request.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    // A partner's MDN and a signed message share a Content-Type: the start of the body
    // tells them apart. An MDN goes to the sender whatever the pair.
    let mut prefix = Peeked::default();
    let mut pace = BodyPace::new(&limits);
    if crate::partner_mdn::may_be_mdn(&headers) {
        prefix = match peek(&mut body, MDN_PEEK_BYTES, &mut pace).await {
            Ok(peeked) => peeked,
            Err(failure) => return to_response(failure.answer()),
        };
        if crate::partner_mdn::is_mdn(&headers, &prefix.bytes) {
            let whole = if prefix.ended {
                Ok(prefix.bytes)
            } else {
                collect(&mut body, prefix.bytes, MAX_MDN_BYTES, &mut pace).await
            };
            let answer = match whole {
                Ok(whole) => {
                    processor
                        .process(InboundRequest {
                            headers,
                            body: RequestBody::Whole(whole),
                            admitted: None,
                        })
                        .await
                }
                Err(failure) => failure.answer(),
            };
            return to_response(answer);
        }
    }
    // The partnership is judged before the size: the limit is the partnership's.
    let admitted = match processor.preflight(&headers).await {
        Preflight::ReadBody(admitted) => {
            let refused = match admitted.check_tls_client(client) {
                Err(answer) => Some(to_response(answer)),
                Ok(()) => {
                    let (key, per_minute) = admitted.rate_limit();
                    rates
                        .check(&key, per_minute)
                        .err()
                        .map(|limited| too_many("from this partner", limited))
                }
            };
            if let Some(response) = refused {
                if !expects_continue && !prefix.ended {
                    drain(body, pace, PREFLIGHT_DRAIN_LIMIT).await;
                }
                return response;
            }
            admitted
        }
        Preflight::Answered(answer) => {
            // With `Expect: 100-continue` the body is never asked for: hyper sends the
            // 100 only when the body is first read.
            if !expects_continue
                && declared.is_none_or(|declared| declared <= PREFLIGHT_DRAIN_LIMIT as u64)
                && !prefix.ended
            {
                drain(body, pace, PREFLIGHT_DRAIN_LIMIT).await;
            }
            return to_response(answer);
        }
    };
    let limit = admitted.max_body_bytes(limits.max_body_bytes);
    if let Some(declared) = declared.filter(|&declared| declared > limit) {
        if declared <= OVERSIZE_DRAIN_LIMIT as u64 && !prefix.ended {
            drain(body, pace, OVERSIZE_DRAIN_LIMIT).await;
        }
        return to_response(BodyFailure::TooLarge { limit }.answer());
    }
    let body = (!prefix.ended).then_some(body);
    let chunks = body_chunks(prefix.bytes, body, limit, pace);
    to_response(
        processor
            .process(InboundRequest {
                headers,
                body: RequestBody::Streaming(chunks),
                admitted: Some(admitted),
            })
            .await,
    )
}

/// The first bytes of a body.
#[derive(Default)]
struct Peeked {
    bytes: Bytes,
    /// The body ended within them.
    ended: bool,
}

/// Reads at least `wanted` bytes of the body (fewer when it ends first).
async fn peek(
    body: &mut Incoming,
    wanted: usize,
    pace: &mut BodyPace,
) -> Result<Peeked, BodyFailure> {
    let mut buffer = bytes::BytesMut::new();
    while buffer.len() < wanted {
        match next_data(body, pace).await? {
            Some(data) => buffer.extend_from_slice(&data),
            None => {
                return Ok(Peeked {
                    bytes: buffer.freeze(),
                    ended: true,
                });
            }
        }
    }
    Ok(Peeked {
        bytes: buffer.freeze(),
        ended: false,
    })
}

/// The next data frame of the body, `None` at its end; fails when it does not come in
/// time (the idle timeout, or the minimum rate).
async fn next_data(body: &mut Incoming, pace: &mut BodyPace) -> Result<Option<Bytes>, BodyFailure> {
    loop {
        let (wait, failure) = pace.next_wait();
        let started = tokio::time::Instant::now();
        let frame = tokio::time::timeout(wait, body.frame()).await;
        pace.waited += started.elapsed();
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(_elapsed) => return Err(failure),
        };
        let frame = frame.map_err(|error| {
            tracing::debug!(%error, "reading the request body failed");
            BodyFailure::Read(error.to_string())
        })?;
        if let Ok(data) = frame.into_data() {
            pace.received += data.len() as u64;
            return Ok(Some(data));
        }
    }
}

/// Reads the rest of a body after `start` into one buffer, failing once the whole grows
/// beyond `limit` bytes or when the body comes too slowly (`pace`).
async fn collect(
    body: &mut Incoming,
    start: Bytes,
    limit: usize,
    pace: &mut BodyPace,
) -> Result<Bytes, BodyFailure> {
    let mut buffer = bytes::BytesMut::from(start.as_ref());
    while let Some(data) = next_data(body, pace).await? {
        if buffer.len() + data.len() > limit {
            return Err(BodyFailure::TooLarge {
                limit: limit as u64,
            });
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

struct ChunkState {
    prefix: Option<Bytes>,
    body: Option<Incoming>,
    received: u64,
    limit: u64,
    pace: BodyPace,
}

/// The body as it arrives, after the bytes already read (`prefix`): each chunk as hyper
/// hands it over, with the size limit (413, after discarding a bounded tail so the
/// client sees the answer), the idle timeout and the minimum rate (408) applied; `pace`
/// goes on from the bytes already read.
fn body_chunks(prefix: Bytes, body: Option<Incoming>, limit: u64, pace: BodyPace) -> BodyChunks {
    let state = ChunkState {
        prefix: Some(prefix),
        body,
        received: 0,
        limit,
        pace,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let chunk = match state.prefix.take().filter(|prefix| !prefix.is_empty()) {
            Some(prefix) => Ok(prefix),
            None => match next_data(state.body.as_mut()?, &mut state.pace).await {
                Ok(Some(data)) => Ok(data),
                Ok(None) => return None,
                Err(failure) => Err(failure),
            },
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(failure) => {
                state.body = None;
                return Some((Err(failure), state));
            }
        };
        state.received += chunk.len() as u64;
        if state.received > state.limit {
            if let Some(body) = state.body.take() {
                drain(body, state.pace.clone(), OVERSIZE_DRAIN_LIMIT).await;
            }
            let failure = BodyFailure::TooLarge { limit: state.limit };
            return Some((Err(failure), state));
        }
        Some((Ok(chunk), state))
    }))
}

/// Reads and discards what remains of a body, up to `limit` bytes, giving up when it
/// comes too slowly (`pace`).
async fn drain(mut body: Incoming, mut pace: BodyPace, limit: usize) {
    let mut discarded = 0_usize;
    while let Ok(Some(data)) = next_data(&mut body, &mut pace).await {
        discarded += data.len();
        if discarded > limit {
            break;
        }
    }
}

fn expects_continue(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("100-continue"))
}

fn declared_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn to_response(answer: Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in answer.headers {
        let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            tracing::warn!(
                header = name,
                "dropping a response header that is not valid HTTP"
            );
            continue;
        };
        headers.append(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(idle_secs: u64, min_rate: u64) -> BodyPace {
        BodyPace::new(&HttpLimits {
            max_body_bytes: 1,
            header_read_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(idle_secs),
            body_min_rate: min_rate,
            max_connections: 1,
            http2_max_concurrent_streams: 1,
            per_source_per_minute: 0,
        })
    }

    #[test]
    fn the_idle_timeout_rules_until_the_grace_period_is_over() {
        let mut pace = pace(10, 1000);
        assert_eq!(
            pace.next_wait(),
            (Duration::from_secs(10), BodyFailure::Idle { secs: 10 })
        );
        // 4 s in, 100 bytes: the average is already too low, but the grace period is
        // the idle timeout: the body must arrive 10 s in, or 100 s of data by then.
        pace.waited = Duration::from_secs(4);
        pace.received = 100;
        assert_eq!(
            pace.next_wait(),
            (
                Duration::from_secs(6),
                BodyFailure::TooSlow { min_rate: 1000 }
            )
        );
    }

    #[test]
    fn a_body_ahead_of_the_rate_gets_the_idle_timeout_then_what_it_has_earned() {
        let mut pace = pace(10, 1000);
        pace.waited = Duration::from_secs(30);
        pace.received = 100_000;
        assert_eq!(
            pace.next_wait(),
            (Duration::from_secs(10), BodyFailure::Idle { secs: 10 })
        );
        pace.received = 35_000;
        assert_eq!(
            pace.next_wait(),
            (
                Duration::from_secs(5),
                BodyFailure::TooSlow { min_rate: 1000 }
            )
        );
        pace.received = 20_000;
        assert_eq!(
            pace.next_wait(),
            (Duration::ZERO, BodyFailure::TooSlow { min_rate: 1000 })
        );
    }

    #[test]
    fn no_minimum_rate_leaves_the_idle_timeout() {
        let mut pace = pace(10, 0);
        pace.waited = Duration::from_secs(1000);
        pace.received = 1;
        assert_eq!(
            pace.next_wait(),
            (Duration::from_secs(10), BodyFailure::Idle { secs: 10 })
        );
    }
}
