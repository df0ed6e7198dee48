//! Test support: an in-process MDN service, a partner's MDN receiver whose answers the
//! test controls, and request helpers.

#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use as2_mdn::{MdnConfig, MdnServer};
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::mdn::v1::{
    DeliveryState, DeliveryStatus, EnqueueMdnDeliveryRequest, GetDeliveryStatusRequest,
    HeaderField, PreparedMdn, enqueue_mdn_delivery_request,
};
use as2_rpc::routing::v1::AsyncMdnPolicy;
use as2_rpc::tonic::transport::Channel;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Runs each scenario twice: `in_redis::{scenario}` with a Redis started for the test,
/// `in_memory::{scenario}` with the service's state in its own process. The test file
/// imports `MEMORY_URL`.
macro_rules! in_redis_and_in_memory {
    ($($scenario:ident),+ $(,)?) => {
        mod in_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let redis = as2_testkit::RedisServer::start();
                    super::$scenario(&redis.url()).await;
                }
            )+
        }

        mod in_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::MEMORY_URL).await;
                }
            )+
        }
    };
}
pub(crate) use in_redis_and_in_memory;

/// Runs each scenario once more, `in_redis_cluster::{scenario}`, against a three-master
/// Redis Cluster started for the test.
macro_rules! in_redis_cluster {
    ($($scenario:ident),+ $(,)?) => {
        mod in_redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cluster = as2_testkit::RedisCluster::start();
                    super::$scenario(&cluster.url()).await;
                }
            )+
        }
    };
}
#[allow(unused_imports)]
pub(crate) use in_redis_cluster;

/// The Redis URL that keeps the service's state in its own process.
pub const MEMORY_URL: &str = as2_common::redis::IN_MEMORY_URL;

/// An MDN service started through its library entry point.
pub struct RunningMdn {
    pub url: String,
    pub admin_addr: SocketAddr,
    service: as2_common::runtime::ServiceHandle,
}

impl RunningMdn {
    pub async fn start(config: MdnConfig) -> Self {
        Self::start_with_network(config, as2_partner::target::Network::default()).await
    }

    /// Starts the service with its connections made through `network`.
    pub async fn start_with_network(
        config: MdnConfig,
        network: as2_partner::target::Network,
    ) -> Self {
        let server = MdnServer::bind(config).await.unwrap().with_network(network);
        let url = format!("http://{}", server.grpc_addr().unwrap());
        let admin_addr = server.admin_addr().unwrap();
        let service = as2_common::runtime::ServiceHandle::spawn("mdn", |stop| server.serve(stop));
        as2_testkit::admin::wait_until_ready("mdn", admin_addr).await;
        Self {
            url,
            admin_addr,
            service,
        }
    }

    pub async fn client(&self) -> MdnDeliveryServiceClient<Channel> {
        MdnDeliveryServiceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.service
            .stop()
            .await
            .expect("the mdn service stops cleanly");
    }
}

/// A configuration with short backoffs for tests.
pub fn fast_config(redis_url: &str, prefix: &str) -> MdnConfig {
    let mut config = MdnConfig::local(redis_url, prefix);
    config.delivery.initial_backoff_ms = 100;
    config.delivery.max_backoff_ms = 400;
    config.delivery.max_attempts = 4;
    config.delivery.attempt_timeout_ms = 2_000;
    config.delivery.reclaim_idle_ms = 3_000;
    config.delivery.poll_interval_ms = 50;
    config.delivery.workers = 8;
    config.shutdown.shutdown_grace_secs = 2;
    config
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct ReceivedMdn {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ReceivedMdn {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A partner's MDN endpoint: answers every POST with the status the test sets, or
/// holds requests unanswered while `hold` is on. Records every request it read.
pub struct Receiver {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    location: Arc<Mutex<Option<String>>>,
    hold: watch::Sender<bool>,
    received: Arc<Mutex<Vec<ReceivedMdn>>>,
    requests_seen: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Starts on `port` (for a receiver that was "down" until now).
    pub async fn start_on_port(port: u16) -> Self {
        Self::start_on(TcpListener::bind(("127.0.0.1", port)).await.unwrap())
    }

    fn start_on(listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let location: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let (hold, hold_watch) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let requests_seen = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let state = (
            (status.clone(), location.clone()),
            hold_watch,
            received.clone(),
            requests_seen.clone(),
            arrived.clone(),
        );
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let (status, hold, received, seen, arrived) = state.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let ((status, location), mut hold, received, seen, arrived) = (
                        status.clone(),
                        hold.clone(),
                        received.clone(),
                        seen.clone(),
                        arrived.clone(),
                    );
                    async move {
                        let headers = request
                            .headers()
                            .iter()
                            .map(|(n, v)| {
                                (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        seen.fetch_add(1, Ordering::SeqCst);
                        arrived.notify_waiters();
                        let _ = hold.wait_for(|held| !*held).await;
                        let code = status.load(Ordering::SeqCst);
                        if code < 300 {
                            received.lock().unwrap().push(ReceivedMdn {
                                headers,
                                body: body.to_vec(),
                            });
                            arrived.notify_waiters();
                        }
                        let mut response = http::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        if let Some(target) = location.lock().unwrap().clone() {
                            response
                                .headers_mut()
                                .insert(http::header::LOCATION, target.parse().unwrap());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let connection =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            status,
            location,
            hold,
            received,
            requests_seen,
            arrived,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mdn", self.addr)
    }

    /// The status every following request gets.
    pub fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Answers every following request with `status` and a Location of `target`.
    pub fn redirect_to(&self, status: u16, target: &str) {
        *self.location.lock().unwrap() = Some(target.to_owned());
        self.answer_with(status);
    }

    /// Holds requests unanswered (`true`) or releases them.
    pub fn hold(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// MDNs accepted (answered 2xx) so far.
    pub fn accepted(&self) -> Vec<ReceivedMdn> {
        self.received.lock().unwrap().clone()
    }

    /// Requests read so far, whatever the answer.
    pub fn requests_seen(&self) -> usize {
        self.requests_seen.load(Ordering::SeqCst)
    }

    /// Waits until `condition` holds for this receiver, up to `timeout`.
    pub async fn wait_until(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !condition(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver condition not met within {timeout:?} ({} accepted, {} seen)",
                self.accepted().len(),
                self.requests_seen()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), self.arrived.notified()).await;
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An enqueue request for a small unsigned MDN to `url`.
pub fn enqueue_request(message_id: &str, url: &str) -> EnqueueMdnDeliveryRequest {
    EnqueueMdnDeliveryRequest {
        original_message_id: format!("<{message_id}@partner.example>"),
        partnership_id: "partner-a".to_owned(),
        as2_from: "gateway".to_owned(),
        as2_to: "partner".to_owned(),
        delivery_url: url.to_owned(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        // The test receivers listen on loopback: the partnership opts in.
        policy: Some(AsyncMdnPolicy {
            allow_private_targets: true,
            ..AsyncMdnPolicy::default()
        }),
        mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(PreparedMdn {
            headers: vec![
                header("AS2-From", "gateway"),
                header("AS2-To", "partner"),
                header("AS2-Version", "1.2"),
                header("Message-ID", &format!("<mdn-{message_id}@gateway>")),
                header(
                    "Content-Type",
                    "multipart/report; report-type=disposition-notification; boundary=\"b\"",
                ),
            ],
            body: format!("--b\r\n\r\nMDN for {message_id}\r\n--b--\r\n").into_bytes(),
        })),
    }
}

fn header(name: &str, value: &str) -> HeaderField {
    HeaderField {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

pub async fn status(
    client: &mut MdnDeliveryServiceClient<Channel>,
    delivery_id: &str,
) -> DeliveryStatus {
    client
        .get_delivery_status(GetDeliveryStatusRequest {
            delivery_id: delivery_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
}

/// Polls the delivery's status until it is in `state`, up to `timeout`.
pub async fn wait_for_state(
    client: &mut MdnDeliveryServiceClient<Channel>,
    delivery_id: &str,
    state: DeliveryState,
    timeout: Duration,
) -> DeliveryStatus {
    wait_for_status(client, delivery_id, timeout, |current| {
        current.state == state as i32
    })
    .await
}

/// Polls the delivery's status until `condition` holds for it, up to `timeout`.
pub async fn wait_for_status(
    client: &mut MdnDeliveryServiceClient<Channel>,
    delivery_id: &str,
    timeout: Duration,
    condition: impl Fn(&DeliveryStatus) -> bool,
) -> DeliveryStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = status(client, delivery_id).await;
        if condition(&current) {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery {delivery_id} not as expected within {timeout:?}: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueues `request` and returns its delivery id.
pub async fn enqueue(
    client: &mut MdnDeliveryServiceClient<Channel>,
    request: EnqueueMdnDeliveryRequest,
) -> String {
    client
        .enqueue_mdn_delivery(request)
        .await
        .unwrap()
        .into_inner()
        .delivery_id
}

/// A network for the service under test that never leaves the machine: names in the
/// test's table resolve to its addresses (every other name fails), and every connection
/// attempt is recorded; attempts to addresses outside loopback fail without a packet.
#[derive(Clone, Default)]
pub struct RecordingNetwork {
    names: Arc<Mutex<Vec<(String, std::net::IpAddr)>>>,
    lookups: Arc<Mutex<Vec<String>>>,
    dials: Arc<Mutex<Vec<SocketAddr>>>,
}

impl RecordingNetwork {
    /// Makes `name` resolve to `ip`.
    pub fn add_name(&self, name: &str, ip: &str) {
        self.names
            .lock()
            .unwrap()
            .push((name.to_owned(), ip.parse().unwrap()));
    }

    /// The names looked up so far.
    pub fn lookups(&self) -> Vec<String> {
        self.lookups.lock().unwrap().clone()
    }

    /// The addresses connections were attempted to so far.
    pub fn dials(&self) -> Vec<SocketAddr> {
        self.dials.lock().unwrap().clone()
    }

    /// The service's network.
    pub fn network(&self) -> as2_partner::target::Network {
        as2_partner::target::Network {
            resolver: Arc::new(self.clone()),
            dialer: Arc::new(self.clone()),
        }
    }
}

impl as2_partner::target::Resolve for RecordingNetwork {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        self.lookups.lock().unwrap().push(host.to_owned());
        let found: Vec<SocketAddr> = self
            .names
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name == host)
            .map(|(_, ip)| SocketAddr::new(*ip, port))
            .collect();
        Box::pin(async move {
            if found.is_empty() {
                Err(std::io::Error::other(
                    "the test resolver knows no such name",
                ))
            } else {
                Ok(found)
            }
        })
    }
}

impl as2_partner::target::Dial for RecordingNetwork {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> futures::future::BoxFuture<'static, std::io::Result<tokio::net::TcpStream>> {
        self.dials.lock().unwrap().push(addr);
        Box::pin(async move {
            if !addr.ip().is_loopback() {
                return Err(std::io::Error::other(
                    "the test dialer connects to loopback only",
                ));
            }
            tokio::net::TcpStream::connect(addr).await
        })
    }
}
