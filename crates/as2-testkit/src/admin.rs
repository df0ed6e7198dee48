//! The admin endpoints of a service under test (`/healthz`, `/readyz`, `/metrics`).
//!
//! Async, because the service usually runs on the test's own runtime: a blocking request
//! on a current-thread runtime would wait for a server that cannot run.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// GETs `path` from the admin server at `address`: the status and the body.
pub async fn get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let status = raw
        .get(9..12)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The status `/readyz` answers, `None` while nothing answers.
pub async fn readyz(address: SocketAddr) -> Option<u16> {
    get(address, "/readyz").await.ok().map(|(status, _)| status)
}

/// Waits until `/readyz` at `address` answers `status` (200: ready, 503: draining).
///
/// # Panics
///
/// When it does not within `timeout`, naming `service`.
pub async fn wait_for_readyz(service: &str, address: SocketAddr, status: u16, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if readyz(address).await == Some(status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} at {address}: /readyz did not answer {status} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the service with its admin server at `address` is ready (up to 20 s).
///
/// # Panics
///
/// When it is not, naming `service`.
pub async fn wait_until_ready(service: &str, address: SocketAddr) {
    wait_for_readyz(service, address, 200, Duration::from_secs(20)).await;
}
