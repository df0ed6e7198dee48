//! The HTTP side of the AS2 endpoint: h2c, chunked bodies, the body limit for chunked
//! uploads, slow clients, and methods other than POST.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{GATEWAY_ID, PARTNER_ID, RunningEdge, Stack, edge_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn signed_message(stack: &Stack) -> (Vec<(String, String)>, Vec<u8>) {
    stack.signed_sync_message(PARTNER_ID)
}

fn request_with<B>(url: &str, headers: &[(String, String)], body: B) -> http::Request<B> {
    let mut request = http::Request::post(url);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request.body(body).unwrap()
}

/// A body streamed in 1000-byte frames, so hyper sends it chunked.
type ChunkedBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>>;

fn chunked(body: Vec<u8>) -> ChunkedBody {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = body
        .chunks(1000)
        .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
        .collect();
    StreamBody::new(futures::stream::iter(frames))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_chunked_requests_are_served() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "transport"))
        .await;
    let (headers, body) = signed_message(&stack);

    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = h2c
        .request(request_with(
            &stack.edge.url(),
            &headers,
            Full::new(Bytes::from(body.clone())),
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let mdn = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&mdn).contains("; processed\r\n"));

    let http1 = Client::builder(TokioExecutor::new()).build_http();
    let response = http1
        .request(request_with(&stack.edge.url(), &headers, chunked(body)))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "a chunked resend gets the stored MDN"
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        mdn
    );

    let response = http1
        .request(request_with(
            &stack.edge.url(),
            &headers,
            chunked(vec![b'x'; 4 * 1024 * 1024 + 10]),
        ))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        413,
        "the limit holds without Content-Length"
    );

    let get = http1
        .request(
            http::Request::get(stack.edge.url())
                .body(chunked(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers().get("allow").unwrap(), "POST");
    stack.edge.stop().await;
    stack.routing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "transport"))
        .await;
    let mut config = edge_config(
        &stack.redis.url(),
        "e2e",
        &stack.broker.bootstrap_servers(),
        &stack.routing.url,
        stack.keys_dir.path(),
    );
    config.inbound.header_read_timeout_secs = 1;
    config.inbound.body_read_timeout_secs = 1;
    // The idle timeout alone (the minimum rate has its own test below).
    config.inbound.body_min_rate_bytes_per_sec = 0;
    let edge = RunningEdge::start(config).await;

    // Headers that never end: the connection is closed.
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    stream
        .write_all(b"POST /as2 HTTP/1.1\r\nHost: x\r\nAS2-From: a\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    assert!(
        read.is_ok(),
        "the edge kept a connection with unfinished headers open"
    );

    // A body from a known partner that stops half way: 408 once nothing has arrived
    // for the idle timeout.
    let head = format!(
        "POST /as2 HTTP/1.1\r\nHost: x\r\nAS2-From: \"{PARTNER_ID}\"\r\nAS2-To: {GATEWAY_ID}\r\n\
         Message-ID: <m@x>\r\nContent-Type: application/pkcs7-mime\r\nContent-Length: 100\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(b"only part").await.unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    let answer = String::from_utf8_lossy(&buffer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body that keeps coming, slower than the idle timeout in total but never idle
    // for that long: it is read to the end (and answered as the bad message it is).
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..5 {
        stream.write_all(&[b'x'; 20]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    let answer = String::from_utf8_lossy(&buffer);
    assert!(
        !answer.starts_with("HTTP/1.1 408"),
        "a body that kept arriving got 408: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 "), "no answer: {answer}");
    edge.stop().await;
    stack.edge.stop().await;
    stack.routing.stop().await;
}

/// A body sent in `chunk`-byte frames, one every `interval`: never idle for long, at
/// `chunk / interval` bytes per second.
fn trickled(body: Vec<u8>, chunk: usize, interval: Duration) -> TrickledBody {
    let chunks: Vec<Bytes> = body.chunks(chunk).map(Bytes::copy_from_slice).collect();
    StreamBody::new(Box::pin(futures::stream::unfold(
        chunks.into_iter(),
        move |mut chunks| async move {
            let chunk = chunks.next()?;
            tokio::time::sleep(interval).await;
            Some((Ok(Frame::data(chunk)), chunks))
        },
    )))
}

type TrickledBody = StreamBody<
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>,
>;

/// A body that keeps coming, never idle for the idle timeout but slower than the
/// minimum rate, gets 408 once the grace period (the idle timeout) is over, and nothing
/// of it is published; one that is slow but faster than the minimum goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_the_minimum_rate_gets_408() {
    let stack = Stack::start_with(|config| {
        config.inbound.body_read_timeout_secs = 1;
        config.inbound.body_min_rate_bytes_per_sec = 1000;
    })
    .await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "paced"))
        .await;
    let url = stack.edge.url();
    let message = |id: &str| {
        support::signed_encrypted_message(
            &stack.gateway,
            PARTNER_ID,
            &stack.partner,
            &as2_protocol::headers::MessageId::parse(id).unwrap(),
            &[b'x'; 16 * 1024],
        )
    };

    // 50 bytes every 100 ms: 500 bytes/s, half the minimum.
    let (headers, body) = message("<too-slow@partner.test>");
    let started = std::time::Instant::now();
    let response = support::post_body(
        &url,
        &headers,
        trickled(body, 50, Duration::from_millis(100)),
    )
    .await;
    assert_eq!(response.status, 408, "{}", response.text());
    assert!(
        response
            .text()
            .contains("slower than the minimum of 1000 bytes/s"),
        "{}",
        response.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut off after the grace period, not after the whole body"
    );

    // 1000 bytes every 100 ms: 10 kB/s, a few seconds for the whole body.
    let (headers, body) = message("<slow-enough@partner.test>");
    assert!(body.len() > 16 * 1024);
    let response = support::post_body(
        &url,
        &headers,
        trickled(body, 1000, Duration::from_millis(100)),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .text()
            .contains("Disposition: automatic-action/MDN-sent-automatically; processed\r\n"),
        "{}",
        response.text()
    );

    let records = support::consume(
        &stack.broker.bootstrap_servers(),
        "paced",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "only the message that came fast enough");
    assert_eq!(
        records[0].header("as2-message-id"),
        Some("<slow-enough@partner.test>")
    );
    stack.edge.stop().await;
    stack.routing.stop().await;
}

/// Requests the edge can refuse from their headers are answered without their body:
/// the client that announced a 1 GiB body with `Expect: 100-continue` gets the answer
/// without being asked for a byte, and one that sends a small body still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_partners_and_missing_headers_are_answered_before_the_body() {
    let stack = Stack::start().await;
    let refusals = [
        // An unknown pair.
        (
            "AS2-From: stranger\r\nAS2-To: as2-gateway\r\nMessage-ID: <s@x>\r\n",
            "400",
            "no partnership",
        ),
        // No AS2-From at all.
        (
            "AS2-To: as2-gateway\r\nMessage-ID: <s@x>\r\n",
            "400",
            "AS2-From",
        ),
    ];
    for (as2_headers, status, reason) in refusals {
        let mut stream = tokio::net::TcpStream::connect(stack.edge.addr)
            .await
            .unwrap();
        let head = format!(
            "POST /as2 HTTP/1.1\r\nHost: x\r\n{as2_headers}Content-Type: application/pkcs7-mime\r\n\
             Content-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the answer came without the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&buffer[..read]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "asked for the body or answered wrongly: {answer}"
        );
        assert!(answer.contains(reason), "{answer}");

        // Without Expect, a small body is read and discarded first: the whole answer
        // arrives, not a reset.
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut request = http::Request::post(stack.edge.url());
        for line in as2_headers.split("\r\n").filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(": ").unwrap();
            request = request.header(name, value);
        }
        let response = client
            .request(
                request
                    .header("Content-Type", "application/pkcs7-mime")
                    .body(Full::new(Bytes::from(vec![7u8; 300_000])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status().as_str(), status);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&text).contains(reason));
    }
    stack.edge.stop().await;
    stack.routing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_clients_wait_until_a_connection_closes() {
    let stack = Stack::start().await;
    let mut config = edge_config(
        &stack.redis.url(),
        "cap",
        &stack.broker.bootstrap_servers(),
        &stack.routing.url,
        stack.keys_dir.path(),
    );
    config.inbound.max_connections = 2;
    let edge = RunningEdge::start(config).await;

    let get = b"GET /as2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // Two idle connections hold both slots.
    let first = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The third gets through TCP (the listen backlog) but is not served...
    let mut third = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    third.write_all(get).await.unwrap();
    let mut buffer = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(1), third.read_to_end(&mut buffer)).await;
    assert!(
        early.is_err(),
        "served past the cap: {}",
        String::from_utf8_lossy(&buffer)
    );
    // ...until a slot frees.
    drop(first);
    let _ = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut buffer)).await;
    let answer = String::from_utf8_lossy(&buffer);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_over_their_rate_get_429_with_retry_after_before_their_body() {
    let stack = Stack::start().await;
    let mut limited = stack.partnership(PARTNER_ID, "rate");
    limited
        .security_policy
        .get_or_insert_with(Default::default)
        .max_messages_per_minute = Some(1);
    stack.create_partnership(limited).await;
    let (headers, body) = signed_message(&stack);

    // The partnership's limit: one a minute.
    let first = support::post(&stack.edge.url(), &headers, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = support::post(&stack.edge.url(), &headers, body.clone()).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(
        second.text().trim(),
        "too many messages from this partner, please resend later"
    );
    let retry: u64 = second.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // The per-source limit comes first, for anyone: two a minute from one address.
    let mut config = edge_config(
        &stack.redis.url(),
        "rate",
        &stack.broker.bootstrap_servers(),
        &stack.routing.url,
        stack.keys_dir.path(),
    );
    config.inbound.rate_limit_per_source_per_minute = 2;
    let edge = RunningEdge::start(config).await;
    let unknown = vec![
        ("AS2-From".to_owned(), "nobody".to_owned()),
        ("AS2-To".to_owned(), GATEWAY_ID.to_owned()),
        ("Message-ID".to_owned(), "<r@x>".to_owned()),
        ("Content-Type".to_owned(), "application/edi-x12".to_owned()),
    ];
    for _ in 0..2 {
        let answer = support::post(&edge.url(), &unknown, b"x".to_vec()).await;
        assert_ne!(answer.status, 429);
    }
    let third = support::post(&edge.url(), &unknown, b"x".to_vec()).await;
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(
        third.text().trim(),
        "too many messages from this address, please resend later"
    );
    assert!(third.header("retry-after").is_some());
    edge.stop().await;
}
