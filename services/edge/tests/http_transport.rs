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
use serde_json::json;
use support::{PARTNER_ID, RunningEdge, Stack, edge_config, message_parts, python};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn signed_message(stack: &Stack) -> (Vec<(String, String)>, Vec<u8>) {
    use base64::Engine as _;
    let mut request = stack.pyas2lib_request(PARTNER_ID);
    let fields = request.as_object_mut().unwrap();
    fields.insert(
        "payload_b64".into(),
        json!(base64::engine::general_purpose::STANDARD.encode("UNB+UNOA:2+P+G'\r\n")),
    );
    fields.insert("sign".into(), json!(true));
    fields.insert("mdn_mode".into(), json!("SYNC"));
    message_parts(&python("pyas2lib_sender.py", "build", &request))
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
    let mut config = edge_config(
        &stack.redis.url(),
        "e2e",
        &stack.broker.bootstrap_servers(),
        &stack.routing.url,
        stack.keys_dir.path(),
    );
    config.inbound.header_read_timeout_secs = 1;
    config.inbound.body_read_timeout_secs = 1;
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

    // A body that stops half way: 408.
    let mut stream = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    stream
        .write_all(b"POST /as2 HTTP/1.1\r\nHost: x\r\nAS2-From: a\r\nAS2-To: b\r\nMessage-ID: <m@x>\r\nContent-Length: 100\r\n\r\nonly part")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
    let answer = String::from_utf8_lossy(&buffer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    edge.stop().await;
    stack.edge.stop().await;
    stack.routing.stop().await;
}
