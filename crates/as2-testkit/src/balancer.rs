//! A round-robin TCP balancer on loopback, as a load balancer in front of edge replicas:
//! each connection goes to the next backend; a backend that refuses the connection (a
//! replica that is down) is skipped for the next one, as a balancer's health check would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

/// A running balancer; it stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    served: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free loopback port and spreads connections over `backends`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("cannot bind the balancer: {error}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("no balancer address: {error}"));
        let served: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counters = Arc::clone(&served);
        let task = tokio::spawn(async move {
            let next = AtomicUsize::new(0);
            while let Ok((mut client, _)) = listener.accept().await {
                let first = next.fetch_add(1, Ordering::Relaxed);
                let backends = backends.clone();
                let counters = Arc::clone(&counters);
                tokio::spawn(async move {
                    for attempt in 0..backends.len() {
                        let index = (first + attempt) % backends.len();
                        if let Ok(mut upstream) = TcpStream::connect(backends[index]).await {
                            counters[index].fetch_add(1, Ordering::SeqCst);
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, served, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections each backend got, in the order given.
    pub fn served(&self) -> Vec<usize> {
        self.served
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
