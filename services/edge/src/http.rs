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
//! read timeout, and a body idle timeout (408 when no body bytes arrive for that long;
//! a big body on a slow line is not cut off for its size). A `multipart/signed` or
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
}

/// Serves AS2 requests on `listener` until `stop_accepting` is cancelled, then waits up
/// to `grace_period` for open requests to finish.
pub async fn serve_as2(
    listener: TcpListener,
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
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    loop {
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
        let service = service_fn(move |request| {
            let processor = processor.clone();
            async move { Ok::<_, Infallible>(handle(request, &processor, limits).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "as2 connection ended with an error");
            }
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

async fn handle(
    request: Request<Incoming>,
    processor: &InboundProcessor,
    limits: HttpLimits,
) -> Response<Full<Bytes>> {
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
    if crate::partner_mdn::may_be_mdn(&headers) {
        prefix = match peek(&mut body, MDN_PEEK_BYTES, limits.body_idle_timeout).await {
            Ok(peeked) => peeked,
            Err(failure) => return to_response(failure.answer()),
        };
        if crate::partner_mdn::is_mdn(&headers, &prefix.bytes) {
            let whole = if prefix.ended {
                Ok(prefix.bytes)
            } else {
                collect(
                    &mut body,
                    prefix.bytes,
                    MAX_MDN_BYTES,
                    limits.body_idle_timeout,
                )
                .await
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
        Preflight::ReadBody(admitted) => admitted,
        Preflight::Answered(answer) => {
            // With `Expect: 100-continue` the body is never asked for: hyper sends the
            // 100 only when the body is first read.
            if !expects_continue
                && declared.is_none_or(|declared| declared <= PREFLIGHT_DRAIN_LIMIT as u64)
                && !prefix.ended
            {
                drain(body, limits.body_idle_timeout, PREFLIGHT_DRAIN_LIMIT).await;
            }
            return to_response(answer);
        }
    };
    let limit = admitted.max_body_bytes(limits.max_body_bytes);
    if let Some(declared) = declared.filter(|&declared| declared > limit) {
        if declared <= OVERSIZE_DRAIN_LIMIT as u64 && !prefix.ended {
            drain(body, limits.body_idle_timeout, OVERSIZE_DRAIN_LIMIT).await;
        }
        return to_response(BodyFailure::TooLarge { limit }.answer());
    }
    let body = (!prefix.ended).then_some(body);
    let chunks = body_chunks(prefix.bytes, body, limit, limits.body_idle_timeout);
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
async fn peek(body: &mut Incoming, wanted: usize, idle: Duration) -> Result<Peeked, BodyFailure> {
    let mut buffer = bytes::BytesMut::new();
    while buffer.len() < wanted {
        match next_data(body, idle).await? {
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

/// The next data frame of the body, `None` at its end.
async fn next_data(body: &mut Incoming, idle: Duration) -> Result<Option<Bytes>, BodyFailure> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(None),
            Err(_elapsed) => {
                return Err(BodyFailure::Idle {
                    secs: idle.as_secs(),
                });
            }
        };
        let frame = frame.map_err(|error| {
            tracing::debug!(%error, "reading the request body failed");
            BodyFailure::Read(error.to_string())
        })?;
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// Reads the rest of a body after `start` into one buffer, failing once the whole grows
/// beyond `limit` bytes or when no frame arrives for `idle`.
async fn collect(
    body: &mut Incoming,
    start: Bytes,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, BodyFailure> {
    let mut buffer = bytes::BytesMut::from(start.as_ref());
    while let Some(data) = next_data(body, idle).await? {
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
    idle: Duration,
}

/// The body as it arrives, after the bytes already read (`prefix`): each chunk as hyper
/// hands it over, with the size limit (413, after discarding a bounded tail so the
/// client sees the answer) and the idle timeout (408) applied.
fn body_chunks(prefix: Bytes, body: Option<Incoming>, limit: u64, idle: Duration) -> BodyChunks {
    let state = ChunkState {
        prefix: Some(prefix),
        body,
        received: 0,
        limit,
        idle,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let chunk = match state.prefix.take().filter(|prefix| !prefix.is_empty()) {
            Some(prefix) => Ok(prefix),
            None => match next_data(state.body.as_mut()?, state.idle).await {
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
                drain(body, state.idle, OVERSIZE_DRAIN_LIMIT).await;
            }
            let failure = BodyFailure::TooLarge { limit: state.limit };
            return Some((Err(failure), state));
        }
        Some((Ok(chunk), state))
    }))
}

/// Reads and discards what remains of a body, up to `limit` bytes, giving up when no
/// frame arrives for `idle`.
async fn drain(mut body: Incoming, idle: Duration, limit: usize) {
    let mut discarded = 0_usize;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            discarded += data.len();
            if discarded > limit {
                break;
            }
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
