//! Stopping an edge while a partner's message is still arriving: the request is finished
//! (its MDN says processed), its document is in Kafka, and the edge reports not ready
//! while it drains. The stop comes from the same trigger SIGTERM fires in the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use as2_protocol::headers::MessageId;
use support::{PARTNER_ID, Stack, consume, signed_encrypted_message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn readyz(admin: std::net::SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(admin).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    std::str::from_utf8(raw.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_flight_when_the_edge_stops_is_finished_and_published() {
    let stack = Stack::start().await;
    stack
        .create_partnership(stack.partnership(PARTNER_ID, "drain"))
        .await;
    let message_id = MessageId::parse("<drain-1@partner.example>").unwrap();
    let (headers, body) = signed_encrypted_message(
        &stack.gateway,
        PARTNER_ID,
        &stack.partner,
        &message_id,
        b"UNB+UNOA:1+DRAIN'",
    );

    // The request line, the headers and half of the body go out first.
    let mut stream = TcpStream::connect(stack.edge.addr).await.unwrap();
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

    // Stop the edge with the request in flight.
    let admin = stack.edge.admin_addr;
    let Stack {
        edge,
        broker,
        routing,
        redis,
        keys_dir,
        ..
    } = stack;
    let mut stopping = edge.begin_stop();
    let mut not_ready = false;
    for _ in 0..50 {
        if readyz(admin).await == Some(503) {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        not_ready,
        "the edge did not report not ready while draining"
    );
    assert!(
        !stopping.is_finished(),
        "the edge stopped with a request in flight"
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
    tokio::time::timeout(Duration::from_secs(20), stopping.finished())
        .await
        .expect("the edge finished its drain")
        .expect("the edge stopped cleanly");

    let records = consume(
        &broker.bootstrap_servers(),
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
    routing.stop().await;
    drop((redis, keys_dir));
}
