//! SIGTERM to an `as2-edge` process while a partner's message is still arriving: the edge
//! reports not ready, finishes the request (its MDN says processed), publishes the
//! document, and exits 0. A real process, so that nothing in flight survives by accident
//! once `main` returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use as2_protocol::headers::MessageId;
use support::{GATEWAY_KEY_ID, PARTNER_ID, Stack, consume, signed_encrypted_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The edge binary against the stack's Redis, broker and routing service.
fn start_edge_process(stack: &Stack, as2: SocketAddr, admin: SocketAddr) -> Child {
    Command::new(env!("CARGO_BIN_EXE_as2-edge"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AS2_EDGE_LISTEN", as2.to_string())
        .env("AS2_HTTP_LISTEN", admin.to_string())
        .env("AS2_REDIS_URL", stack.redis.url())
        .env("AS2_GRPC_INSECURE_PLAINTEXT", "true")
        .env("AS2_REDIS_KEY_PREFIX", "e2e")
        .env(
            "AS2_KAFKA_BOOTSTRAP_SERVERS",
            stack.broker.bootstrap_servers(),
        )
        .env("AS2_ROUTING_URL", &stack.routing.url)
        .env("AS2_KEYS_DIR", stack.keys_dir.path())
        .env("AS2_DEFAULT_SIGNING_KEY_ID", GATEWAY_KEY_ID)
        .env("AS2_SHUTDOWN_DELAY_SECS", "1")
        .env("AS2_SHUTDOWN_GRACE_SECS", "15")
        .env("AS2_LOG_FILTER", "info")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_message_in_flight_finishes_it_and_publishes_it() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "drain"))
        .await;
    let as2: SocketAddr = format!("127.0.0.1:{}", as2_testkit::free_port())
        .parse()
        .unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", as2_testkit::free_port())
        .parse()
        .unwrap();
    let mut edge = start_edge_process(&stack, as2, admin);
    as2_testkit::admin::wait_until_ready("edge", admin).await;

    let message_id = MessageId::parse("<drain-1@partner.example>").unwrap();
    let (headers, body) = signed_encrypted_message(
        &stack.gateway,
        PARTNER_ID,
        &stack.partner,
        &message_id,
        b"UNB+UNOA:1+DRAIN'",
    );
    // The request line, the headers and half of the body go out first.
    let mut stream = TcpStream::connect(as2).await.unwrap();
    let mut head = format!(
        "POST /as2 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in &headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Command::new("kill")
        .args(["-TERM", &edge.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // While draining, the edge reports not ready.
    as2_testkit::admin::wait_for_readyz("edge", admin, 503, Duration::from_secs(10)).await;
    // Past the shutdown delay the listener is closed: new connections are refused.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        TcpStream::connect(as2).await.is_err(),
        "the edge still accepts connections while draining"
    );
    assert!(
        edge.try_wait().unwrap().is_none(),
        "the edge exited with a request in flight"
    );

    // The rest of the body arrives during the drain; the answer is the processed MDN.
    stream.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("the in-flight request was answered")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("Disposition: automatic-action/MDN-sent-automatically; processed\r\n"),
        "the MDN does not say processed: {response}"
    );

    let status = tokio::task::spawn_blocking(move || edge.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the edge exited with {status}");

    let records = consume(
        &stack.broker.bootstrap_servers(),
        "drain",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(records.len(), 1, "exactly one record for the message");
    assert_eq!(records[0].payload, b"UNB+UNOA:1+DRAIN'");
    let id = records[0]
        .headers
        .iter()
        .find(|(name, _)| name == "as2-message-id")
        .map(|(_, value)| value.as_str());
    assert_eq!(id, Some("<drain-1@partner.example>"));
}
