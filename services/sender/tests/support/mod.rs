//! The outbound stack for end-to-end tests: real Redis, a real Kafka-protocol broker, the
//! routing service, the sender (in process or as the real binary), and django-pyas2 as
//! the receiving partner (tests/interop/django_partner).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use as2_common::runtime::ServiceHandle;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use as2_edge::{EdgeConfig, EdgeServer};
use as2_routing::{RoutingConfig, RoutingServer};
use as2_rpc::routing::v1::{OutboundSettings, PartnerCertificate, Partnership};
use as2_sender::{SenderConfig, SenderServer};
pub use as2_testkit::certificates::KeyMaterial;
use base64::Engine as _;
use clap::Parser as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Our AS2 id in the tests.
pub const GATEWAY_ID: &str = "as2-gateway";
/// Our key id.
pub const GATEWAY_KEY_ID: &str = "gateway-key";
pub const OUTBOUND_TOPIC: &str = "as2.outbound";
pub const RECEIPTS_TOPIC: &str = "as2.outbound.receipts";

/// django-pyas2 on a loopback port, killed on drop.
pub struct DjangoPartner {
    pub port: u16,
    data: tempfile::TempDir,
    child: Option<Child>,
    pub key: KeyMaterial,
}

impl DjangoPartner {
    /// Sets up a partner whose organisations are `org_ids` (all with `key`), with the
    /// gateway (`gateway_cert_pem`) as its partner, and starts serving.
    pub fn start(org_ids: &[&str], key: KeyMaterial, gateway_cert_pem: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "org_ids": org_ids,
            "org_key_pem": key.key_pem,
            "org_cert_pem": key.cert_pem,
            "sender_id": GATEWAY_ID,
            "sender_cert_pem": gateway_cert_pem,
        });
        run_partner_script(data.path(), &["setup"], Some(&config));
        let mut partner = Self {
            port: as2_testkit::free_port(),
            data,
            child: None,
            key,
        };
        partner.serve();
        partner
    }

    fn serve(&mut self) {
        let log = std::fs::File::create(self.data.path().join("serve.log")).unwrap();
        let child = partner_command(self.data.path())
            .args(["serve", &self.port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            as2_testkit::wait_for_port(addr, Duration::from_secs(30)),
            "django-pyas2 did not start: {}",
            std::fs::read_to_string(self.data.path().join("serve.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/pyas2/as2receive", self.port)
    }

    /// Kills the server (the partner is down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Serves again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    /// The messages the partner received.
    pub fn received(&self) -> Vec<ReceivedMessage> {
        let value = run_partner_script(self.data.path(), &["received"], None);
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|message| ReceivedMessage {
                message_id: message["message_id"].as_str().unwrap().to_owned(),
                status: message["status"].as_str().unwrap_or_default().to_owned(),
                signed: message["signed"].as_bool().unwrap_or_default(),
                encrypted: message["encrypted"].as_bool().unwrap_or_default(),
                compressed: message["compressed"].as_bool().unwrap_or_default(),
                payload: base64::engine::general_purpose::STANDARD
                    .decode(message["payload_b64"].as_str().unwrap())
                    .unwrap(),
            })
            .collect()
    }

    /// Sends the pending asynchronous MDNs (django-pyas2's `manageas2server --async-mdns`).
    pub fn send_async_mdns(&self) {
        run_partner_script(self.data.path(), &["send-async-mdns"], None);
    }
}

impl Drop for DjangoPartner {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.data.path().join("serve.log")).unwrap_or_default();
            let tail: String = log
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            #[allow(clippy::print_stderr)]
            {
                eprintln!("django-pyas2 log:\n{tail}");
            }
        }
    }
}

/// A message django-pyas2 stored.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub status: String,
    pub signed: bool,
    pub encrypted: bool,
    pub compressed: bool,
    pub payload: Vec<u8>,
}

fn partner_command(data: &Path) -> Command {
    let mut command = Command::new(as2_testkit::python());
    command
        .arg(as2_testkit::interop_dir().join("django_partner/partner.py"))
        .env("AS2_DJANGO_DATA", data)
        .stdin(Stdio::null());
    command
}

fn run_partner_script(
    data: &Path,
    args: &[&str],
    input: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut child = partner_command(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let input = input
        .map(|value| serde_json::to_vec(value).unwrap())
        .unwrap_or_default();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let mut stdin = stdin;
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        output.status.success(),
        "partner.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Redis, a broker, routing and our key.
pub struct OutboundStack {
    pub redis: as2_testkit::RedisServer,
    pub broker: as2_testkit::KafkaBroker,
    pub routing: RunningRouting,
    pub keys_dir: tempfile::TempDir,
    pub gateway: KeyMaterial,
}

impl OutboundStack {
    pub async fn start() -> Self {
        let redis = as2_testkit::RedisServer::start();
        let broker = as2_testkit::KafkaBroker::start();
        let routing = RunningRouting::start(&redis.url(), "out").await;
        create_topics(&broker.bootstrap_servers()).await;
        let keys_dir = tempfile::tempdir().unwrap();
        let gateway = KeyMaterial::generate("as2 gateway sender test");
        gateway.write_key_dir(keys_dir.path(), GATEWAY_KEY_ID);
        Self {
            redis,
            broker,
            routing,
            keys_dir,
            gateway,
        }
    }

    /// The sender's configuration against this stack (short retries for tests).
    pub fn sender_config(&self) -> SenderConfig {
        let mut config = SenderConfig::local(
            self.redis.url(),
            "out",
            self.broker.bootstrap_servers(),
            self.routing.url.clone(),
            self.keys_dir.path(),
        );
        config.sending.initial_backoff_ms = 200;
        config.sending.max_backoff_ms = 1_000;
        config.sending.sweep_interval_ms = 200;
        config.kafka.client.options = vec![
            ("session.timeout.ms".to_owned(), "6000".to_owned()),
            ("heartbeat.interval.ms".to_owned(), "500".to_owned()),
        ];
        config
    }

    /// A partnership with the partner `partner_id` (certificate `partner_cert_pem`) at
    /// `url`, sending as `outbound` says.
    pub async fn partnership(
        &self,
        id: &str,
        partner_id: &str,
        partner_cert_pem: &str,
        url: &str,
        outbound: OutboundSettings,
    ) -> Partnership {
        let partnership = Partnership {
            id: id.to_owned(),
            as2_from: partner_id.to_owned(),
            as2_to: GATEWAY_ID.to_owned(),
            kafka_topic: "as2.inbound".to_owned(),
            partner_certificates: vec![PartnerCertificate {
                pem: partner_cert_pem.to_owned(),
                ..Default::default()
            }],
            decryption_key_id: GATEWAY_KEY_ID.to_owned(),
            mdn_signing_key_id: GATEWAY_KEY_ID.to_owned(),
            outbound: Some(OutboundSettings {
                url: url.to_owned(),
                ..outbound
            }),
            ..Default::default()
        };
        self.routing
            .client()
            .await
            .create_partnership(as2_rpc::routing::v1::CreatePartnershipRequest {
                partnership: Some(partnership),
            })
            .await
            .unwrap()
            .into_inner()
            .partnership
            .unwrap()
    }

    /// Publishes one outbound document.
    pub async fn produce(&self, partnership_id: &str, filename: &str, payload: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.bootstrap_servers())
            .set("acks", "all")
            .create()
            .unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "as2-partnership-id",
                value: Some(partnership_id),
            })
            .insert(Header {
                key: "as2-filename",
                value: Some(filename),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/edi-x12"),
            });
        producer
            .send(
                FutureRecord::to(OUTBOUND_TOPIC)
                    .key(partnership_id)
                    .payload(payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    /// Reads `count` receipts (plus any extra arriving within `quiet`).
    pub async fn receipts(&self, count: usize, quiet: Duration) -> Vec<serde_json::Value> {
        as2_testkit::kafka::consume(
            &self.broker.bootstrap_servers(),
            RECEIPTS_TOPIC,
            count,
            quiet,
        )
        .await
        .into_iter()
        .map(|record| serde_json::from_slice(&record.payload).unwrap())
        .collect()
    }
}

/// A running routing service.
pub struct RunningRouting {
    pub url: String,
    service: ServiceHandle,
}

impl RunningRouting {
    pub async fn start(redis_url: &str, prefix: &str) -> Self {
        let server = RoutingServer::bind(RoutingConfig::local(redis_url, prefix))
            .await
            .unwrap();
        let url = format!("http://{}", server.grpc_addr().unwrap());
        let service = ServiceHandle::spawn("routing", |stop| server.serve(stop));
        Self { url, service }
    }

    pub async fn client(
        &self,
    ) -> as2_rpc::routing::v1::routing_service_client::RoutingServiceClient<
        as2_rpc::tonic::transport::Channel,
    > {
        as2_rpc::routing::v1::routing_service_client::RoutingServiceClient::connect(
            self.url.clone(),
        )
        .await
        .unwrap()
    }
}

/// The real edge, for asynchronous MDNs that come back through it.
pub struct RunningEdge {
    pub url: String,
    service: ServiceHandle,
}

impl RunningEdge {
    /// Starts the edge against `stack`, handing asynchronous MDNs to the sender at
    /// `sender_url`.
    pub async fn start(stack: &OutboundStack, sender_url: &str) -> Self {
        let mut config = EdgeConfig::try_parse_from(["as2-edge"]).unwrap();
        config.grpc_tls = as2_common::config::GrpcTlsConfig::insecure_plaintext();
        config.as2_listen = "127.0.0.1:0".parse().unwrap();
        config.admin.http_listen = "127.0.0.1:0".parse().unwrap();
        config.redis = as2_common::config::RedisConfig::new(stack.redis.url(), "out");
        config.kafka = as2_edge::kafka::KafkaConfig::new(stack.broker.bootstrap_servers());
        config.kafka.publish_timeout_ms = Some(5_000);
        config.routing_url = stack.routing.url.clone();
        config.keys.keys_dir = stack.keys_dir.path().to_path_buf();
        config.keys.default_signing_key_id = Some(GATEWAY_KEY_ID.to_owned());
        config.shutdown.shutdown_grace_secs = 2;
        config.inbound.max_body_bytes = 4 * 1024 * 1024;
        config.sender_url = Some(sender_url.to_owned());
        let server = EdgeServer::bind(config).await.unwrap();
        let url = format!("http://{}/as2", server.as2_addr().unwrap());
        let service = ServiceHandle::spawn("edge", |stop| server.serve(stop));
        Self { url, service }
    }

    pub async fn stop(self) {
        self.service.stop().await.unwrap();
    }
}

/// The sender running in this process.
pub struct RunningSender {
    pub grpc_url: String,
    service: ServiceHandle,
}

impl RunningSender {
    pub async fn start(config: SenderConfig) -> Self {
        let server = SenderServer::bind(config).await.unwrap();
        let grpc_url = format!("http://{}", server.grpc_addr().unwrap());
        let service = ServiceHandle::spawn("sender", |stop| server.serve(stop));
        Self { grpc_url, service }
    }

    pub async fn stop(self) {
        self.service.stop().await.expect("the sender stops cleanly");
    }
}

/// The default outbound settings of the tests: sign, encrypt, sync signed MDN.
pub fn signed_encrypted_sync() -> OutboundSettings {
    use as2_rpc::routing::v1::{MdnMode, SigningDigest};
    OutboundSettings {
        sign: true,
        signing_digest: SigningDigest::Sha256.into(),
        encrypt: true,
        mdn_mode: MdnMode::Sync.into(),
        request_signed_mdn: true,
        timeout_seconds: 20,
        max_retries: 3,
        ..Default::default()
    }
}

/// The binary's path.
pub fn sender_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_as2-sender"))
}

/// The `as2-sender` binary against `stack`, its output going to the file `log`: only the
/// environment set here (listeners on ephemeral ports, the stack's Redis, broker and
/// routing service, fast consumer-group failover, short backoffs); a test adds its own
/// variables and spawns it.
pub fn sender_process(stack: &OutboundStack, log: &Path) -> Command {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(sender_binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AS2_GRPC_LISTEN", "127.0.0.1:0")
        .env("AS2_HTTP_LISTEN", "127.0.0.1:0")
        .env("AS2_REDIS_URL", stack.redis.url())
        .env("AS2_GRPC_INSECURE_PLAINTEXT", "true")
        .env("AS2_REDIS_KEY_PREFIX", "out")
        .env(
            "AS2_KAFKA_BOOTSTRAP_SERVERS",
            stack.broker.bootstrap_servers(),
        )
        .env(
            "AS2_KAFKA_OPTIONS",
            "session.timeout.ms=6000,heartbeat.interval.ms=500",
        )
        .env("AS2_ROUTING_URL", &stack.routing.url)
        .env("AS2_KEYS_DIR", stack.keys_dir.path())
        .env("AS2_SENDER_INITIAL_BACKOFF_MS", "200")
        .env("AS2_SENDER_MAX_BACKOFF_MS", "1000")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// Waits until `check` holds, for at most `timeout`.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check()
}

async fn create_topics(bootstrap: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics = [
        NewTopic::new(OUTBOUND_TOPIC, 2, TopicReplication::Fixed(1)),
        NewTopic::new(RECEIPTS_TOPIC, 1, TopicReplication::Fixed(1)),
    ];
    admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap();
}

const MIB: u64 = 1024 * 1024;

/// Uploads `size` pseudo-random bytes (no MiB like another) as `key`; returns the
/// SHA-256 in hex.
pub async fn upload_document(store: &as2_store::Store, key: &str, size: u64) -> String {
    let mut upload = store
        .upload(
            key,
            as2_store::ObjectAttributes::content_type("application/edi-x12"),
        )
        .unwrap();
    let mut digest = openssl::sha::Sha256::new();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; MIB as usize];
    for index in 0..size.div_ceil(MIB) {
        for byte in &mut block {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state.to_le_bytes()[0];
        }
        block[..8].copy_from_slice(&index.to_be_bytes());
        let take = (size - index * MIB).min(MIB) as usize;
        digest.update(&block[..take]);
        upload.write(&block[..take]).await.unwrap();
    }
    upload.complete().await.unwrap();
    hex(&digest.finish())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Publishes a record that references `key` in `store`.
pub async fn produce_reference(
    stack: &OutboundStack,
    partnership_id: &str,
    store: &as2_store::Store,
    key: &str,
    size: u64,
    sha256: &str,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.broker.bootstrap_servers())
        .set("acks", "all")
        .create()
        .unwrap();
    let location = store.object_url(key);
    let size = size.to_string();
    let mut headers = OwnedHeaders::new();
    for (name, value) in [
        ("as2-partnership-id", partnership_id),
        ("as2-filename", "catalogue.edi"),
        ("content-type", "application/edi-x12"),
        ("as2-record-version", "2"),
        ("as2-document-location", location.as_str()),
        ("as2-document-key", key),
        ("as2-document-size", size.as_str()),
        ("as2-document-sha256", sha256),
    ] {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    producer
        .send(
            FutureRecord::to(OUTBOUND_TOPIC)
                .key(partnership_id)
                .payload(&[][..])
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}
