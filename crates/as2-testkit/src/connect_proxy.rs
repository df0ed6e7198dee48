//! An egress proxy on a loopback port that speaks HTTP `CONNECT` and records what it
//! was asked: each request's target (`127.0.0.1:8443`) in order, whether it tunnelled
//! or refused it. It tunnels to any target it is given (the tests decide what reaches
//! it), or refuses every request with 403 when started with [`ConnectProxy::refusing`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stops when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    requested: Arc<Mutex<Vec<String>>>,
    serving: JoinHandle<()>,
}

impl ConnectProxy {
    /// A proxy that tunnels every `CONNECT`.
    pub async fn start() -> Self {
        Self::serve(false).await
    }

    /// A proxy that answers every request 403 Forbidden.
    pub async fn refusing() -> Self {
        Self::serve(true).await
    }

    async fn serve(refuse: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let requested = Arc::new(Mutex::new(Vec::new()));
        let recorded = requested.clone();
        let serving = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(tunnel(client, refuse, recorded.clone()));
            }
        });
        Self {
            addr,
            requested,
            serving,
        }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request lines received so far, e.g. `CONNECT 127.0.0.1:8443 HTTP/1.1`.
    pub fn requested(&self) -> Vec<String> {
        self.requested
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn tunnel(mut client: TcpStream, refuse: bool, requested: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match client.read_u8().await {
            Ok(byte) if head.len() < 16 * 1024 => head.push(byte),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    requested
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next(), parts.next());
    let target = match (method, target) {
        (Some("CONNECT"), Some(target)) if !refuse => target.to_owned(),
        (Some("CONNECT"), _) => {
            let _ = client
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        _ => {
            let _ = client
                .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
    };
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
