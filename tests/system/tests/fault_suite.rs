//! The fault suite: signed and encrypted messages through two edge processes behind a
//! round-robin balancer while the edges crash (SIGKILL at random moments, and a crash
//! right after the broker's acknowledgement, before the receipt is stored, at a
//! deterministic fault point), the broker stalls (SIGSTOP for 3 s), the broker is killed
//! and restarted (Tansu on SQLite storage, so a restart keeps what it acknowledged) and
//! Redis restarts (killed, restarted from its append-only file). The partner resends
//! whatever was not answered with a processed MDN, as a partner does. Then every record
//! of the topic is counted per Message-ID: each message must be there exactly once.
//!
//! Outbound, two sender processes crash right after the broker acknowledged a receipt
//! (a fault point of `as2-sender`) and one is SIGKILLed with documents in flight, while
//! they send to the gateway's own edges: each document must get exactly one receipt and
//! reach the edges' topic once.
//!
//! Documents in the object store: an edge that dies after making a document visible and
//! before arming its claim, and one that dies after the publish, leave objects that the
//! other edge's orphan sweep settles (deleted, and kept) when no resend comes.
//!
//! `AS2_FAULT_SUITE_MESSAGES` sets the number of messages (a soak runs it with many
//! more, with `AS2_FAULT_SUITE_MEMORY_BROKER=1`: see [`memory_broker`]); the counts of
//! each run are printed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, MessageId, MicAlgorithm, ReceiptDeliveryOption};
use as2_protocol::outbound::{Encryption, MdnRequest, OutboundMessage, Signing, build_message};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{CreatePartnershipRequest, PartnerCertificate, Partnership};
use as2_system_tests::service::{ServiceProcess, grpc_channel};
use as2_testkit::certificates::TestCertificate;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use openssl::x509::X509;
use tokio::sync::Mutex;

const GATEWAY_ID: &str = "faults-gateway";
const PARTNER_ID: &str = "faults-partner";
const KEY_ID: &str = "gateway-key";
const TOPIC: &str = "fault-documents";
const CONCURRENCY: usize = 12;
/// A message not answered within this long fails the suite: something hangs.
const GIVE_UP: Duration = Duration::from_secs(120);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], as2_testkit::free_port()))
}

fn service(name: &str, dir: &Path, service: &str, env: &[(&str, String)]) -> ServiceProcess {
    ServiceProcess::start(
        Path::new(env!("CARGO_BIN_EXE_as2-service")),
        service,
        name,
        dir,
        env,
    )
}

/// A number in `range` from OpenSSL's generator.
fn random_in(range: std::ops::Range<u64>) -> u64 {
    range.start + u64::from(as2_testkit::random_u32()) % (range.end - range.start)
}

/// Prints a fault with the time (seconds since the epoch), to be read beside the
/// services' logs when a run fails.
fn log_fault(what: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    println!("fault at {:.3}: {what}", now.as_secs_f64());
}

/// Sends SIGSTOP or SIGCONT.
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// One prepared message: its Message-ID, headers and body.
struct Prepared {
    message_id: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

/// What the partner saw for one message.
#[derive(Default)]
struct Sent {
    attempts: usize,
    /// Not processed within [`GIVE_UP`]: something hangs.
    gave_up: bool,
    /// From the first answer that was not "processed" to the processed one.
    recovery: Option<Duration>,
}

/// Counters of the faults that were injected.
#[derive(Default)]
struct Faults {
    edge_kills: AtomicUsize,
    fault_point_crashes: AtomicUsize,
    broker_stalls: AtomicUsize,
    broker_restarts: AtomicUsize,
    redis_restarts: AtomicUsize,
}

/// Everything running: Redis, the broker, routing, two edges behind a balancer, and the
/// prepared messages.
struct Gateway {
    redis: Arc<Mutex<as2_testkit::RedisServer>>,
    broker: Arc<Mutex<as2_testkit::KafkaBroker>>,
    bootstrap_servers: String,
    _routing: ServiceProcess,
    edge_a: ServiceProcess,
    edge_b: ServiceProcess,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    balancer: as2_testkit::balancer::Balancer,
    prepared: Vec<Prepared>,
    mdn: Option<ServiceProcess>,
    mdn_grpc: SocketAddr,
    /// What further services need: the gRPC credentials, routing's address, our keys.
    grpc_dir: std::path::PathBuf,
    routing_grpc: SocketAddr,
    keys_dir: std::path::PathBuf,
    gateway_cert_pem: String,
    redis_url: String,
    _dir: tempfile::TempDir,
}

/// The fault point of edge "b": crash right after the Nth acknowledged publish.
fn crash_after() -> (&'static str, String) {
    (
        "AS2_FAULT_CRASH_AFTER_PUBLISH",
        random_in(20..90).to_string(),
    )
}

/// Whether the main suite runs on the in-memory broker and leaves the broker restarts
/// out (`AS2_FAULT_SUITE_MEMORY_BROKER` set): for soaks, since Tansu's SQLite engine
/// slows down to a few messages a minute once it holds several thousand records.
fn memory_broker() -> bool {
    std::env::var_os("AS2_FAULT_SUITE_MEMORY_BROKER").is_some()
}

/// Starts the gateway (edge "b" with its fault point armed when `crash_b`, the broker
/// on durable storage with `crash_b` too unless [`memory_broker`]) and prepares
/// `messages` messages. With
/// `async_mdn_url`, an mdn service runs too and every message asks for its MDN at that
/// URL.
async fn start_gateway(messages: usize, crash_b: bool, async_mdn_url: Option<&str>) -> Gateway {
    let redis = Arc::new(Mutex::new(as2_testkit::RedisServer::start_durable()));
    let redis_url = redis.lock().await.url();
    let durable = crash_b && !memory_broker();
    let broker = if durable {
        as2_testkit::KafkaBroker::start_durable()
    } else {
        as2_testkit::KafkaBroker::start()
    };
    let bootstrap_servers = broker.bootstrap_servers();
    if durable {
        // Tansu's SQLite engine does not create topics on first use.
        create_topics(&bootstrap_servers, &[(TOPIC, 3)]).await;
    }
    let broker = Arc::new(Mutex::new(broker));
    let dir = tempfile::tempdir().unwrap();

    // Keys: ours (decrypts, signs MDNs) and the partner's (signs).
    let keys_dir = dir.path().join("keys");
    let gateway = TestCertificate::new("faults gateway").generate();
    std::fs::create_dir_all(keys_dir.join(KEY_ID)).unwrap();
    std::fs::write(keys_dir.join(KEY_ID).join("tls.key"), &gateway.key_pem).unwrap();
    std::fs::write(keys_dir.join(KEY_ID).join("tls.crt"), &gateway.cert_pem).unwrap();
    let partner_material = TestCertificate::new("faults partner").generate();

    // gRPC over mutual TLS with the credentials of deploy/local/grpc-credentials.
    let grpc = dir.path().join("grpc");
    let script = as2_testkit::workspace_root().join("deploy/local/grpc-credentials");
    assert!(Command::new(&script).arg(&grpc).status().unwrap().success());
    let common = |name: &str, extra: &[(&'static str, String)]| {
        let mut env = vec![
            (
                "AS2_GRPC_TLS_CERT",
                grpc.join(format!("{name}.crt")).display().to_string(),
            ),
            (
                "AS2_GRPC_TLS_KEY",
                grpc.join(format!("{name}.key")).display().to_string(),
            ),
            ("AS2_GRPC_TLS_CA", grpc.join("ca.crt").display().to_string()),
            ("AS2_REDIS_URL", redis_url.clone()),
            ("AS2_REDIS_KEY_PREFIX", "faults".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let (routing_grpc, routing_admin) = (loopback(), loopback());
    let mut routing = service(
        "routing",
        dir.path(),
        "routing",
        &common(
            "routing",
            &[
                ("AS2_GRPC_LISTEN", routing_grpc.to_string()),
                ("AS2_HTTP_LISTEN", routing_admin.to_string()),
            ],
        ),
    );
    routing.wait_for(routing_grpc);
    let mdn_grpc = loopback();
    let mdn = async_mdn_url.map(|_| {
        let mut mdn = service(
            "mdn",
            dir.path(),
            "mdn",
            &common(
                "mdn",
                &[
                    ("AS2_GRPC_LISTEN", mdn_grpc.to_string()),
                    ("AS2_HTTP_LISTEN", loopback().to_string()),
                    ("AS2_MDN_POLL_INTERVAL_MS", "50".to_owned()),
                    // A killed replica's jobs are taken over after 4 s (90 s by default).
                    ("AS2_MDN_ATTEMPT_TIMEOUT_MS", "3000".to_owned()),
                    ("AS2_MDN_RECLAIM_IDLE_MS", "4000".to_owned()),
                    ("AS2_MDN_INITIAL_BACKOFF_MS", "500".to_owned()),
                ],
            ),
        );
        mdn.wait_for(mdn_grpc);
        mdn
    });
    let edge_env = |as2: SocketAddr, extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("AS2_MDN_URL", format!("https://{mdn_grpc}")),
            ("AS2_EDGE_LISTEN", as2.to_string()),
            ("AS2_HTTP_LISTEN", loopback().to_string()),
            ("AS2_ROUTING_URL", format!("https://{routing_grpc}")),
            ("AS2_KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers.clone()),
            ("AS2_KAFKA_PUBLISH_TIMEOUT_MS", "5000".to_owned()),
            ("AS2_KEYS_DIR", keys_dir.display().to_string()),
            ("AS2_DEFAULT_DECRYPTION_KEY_ID", KEY_ID.to_owned()),
            ("AS2_DEFAULT_SIGNING_KEY_ID", KEY_ID.to_owned()),
            ("AS2_RETRY_AFTER_SECS", "1".to_owned()),
            ("AS2_SHUTDOWN_GRACE_SECS", "1".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        common("edge", &env)
    };
    // Edge "a" is killed at random; edge "b" crashes at its fault point, right after the
    // Nth acknowledged publish, and is restarted with a new N each time.
    let (a_addr, b_addr) = (loopback(), loopback());
    let b_extra: Vec<_> = crash_b.then(crash_after).into_iter().collect();
    let mut edge_a = service("edge-a", dir.path(), "edge", &edge_env(a_addr, &[]));
    let mut edge_b = service("edge-b", dir.path(), "edge", &edge_env(b_addr, &b_extra));
    edge_a.wait_for(a_addr);
    edge_b.wait_for(b_addr);
    let balancer = as2_testkit::balancer::Balancer::start(vec![a_addr, b_addr]).await;

    let mut registry =
        RoutingServiceClient::new(grpc_channel(&grpc, "operator", "routing", routing_grpc).await);
    registry
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(Partnership {
                as2_from: PARTNER_ID.to_owned(),
                as2_to: GATEWAY_ID.to_owned(),
                kafka_topic: TOPIC.to_owned(),
                partner_certificates: vec![PartnerCertificate {
                    pem: partner_material.cert_pem.clone(),
                    ..PartnerCertificate::default()
                }],
                // The MDN receiver listens on loopback: the partnership opts in.
                async_mdn: Some(as2_rpc::routing::v1::AsyncMdnPolicy {
                    allow_private_targets: true,
                    ..Default::default()
                }),
                ..Partnership::default()
            }),
        })
        .await
        .unwrap();

    // Every message signed (SHA-256) and encrypted (AES-256-CBC), asking for a signed
    // synchronous MDN.
    let partner = Identity::from_pem(
        partner_material.key_pem.as_bytes(),
        partner_material.cert_pem.as_bytes(),
        None,
    )
    .unwrap();
    let gateway_certificate = X509::from_pem(gateway.cert_pem.as_bytes()).unwrap();
    let prepared: Vec<Prepared> = (0..messages)
        .map(|index| {
            let message_id = MessageId::generate("faults.partner.example").unwrap();
            let payload =
                format!("UNB+UNOA:2+FAULTS+GATEWAY+261204:0100+{index}'\r\nUNZ+1+{index}'\r\n");
            let built = build_message(&OutboundMessage {
                as2_from: &As2Id::new(PARTNER_ID).unwrap(),
                as2_to: &As2Id::new(GATEWAY_ID).unwrap(),
                message_id: &message_id,
                subject: Some("fault suite"),
                payload: payload.as_bytes(),
                content_type: "application/EDIFACT",
                filename: None,
                signing: Some(Signing {
                    identity: &partner,
                    digest: MicAlgorithm::Sha256,
                    scheme: SignatureScheme::RsaPkcs1v15,
                }),
                encryption: Some(Encryption {
                    recipient: &gateway_certificate,
                    cipher: ContentCipher::Aes256Cbc,
                    key_transport: KeyTransport::RsaPkcs1v15,
                }),
                compression: None,
                mdn: Some(MdnRequest {
                    disposition_notification_to: "edi@faults.partner.example".to_owned(),
                    signed_receipt_algorithms: vec![MicAlgorithm::Sha256],
                    receipt_delivery_option: async_mdn_url
                        .map(|url| ReceiptDeliveryOption::parse(url).unwrap()),
                }),
            })
            .unwrap();
            Prepared {
                message_id: bare(&message_id.to_string()).to_owned(),
                headers: built.headers,
                body: Bytes::from(built.body),
            }
        })
        .collect();

    Gateway {
        redis,
        broker,
        bootstrap_servers,
        _routing: routing,
        edge_a,
        edge_b,
        a_addr,
        b_addr,
        balancer,
        prepared,
        mdn,
        mdn_grpc,
        grpc_dir: grpc,
        routing_grpc,
        keys_dir,
        gateway_cert_pem: gateway.cert_pem.clone(),
        redis_url,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_document_is_lost_or_duplicated_while_edges_crash_and_the_broker_and_redis_fail() {
    let messages: usize = std::env::var("AS2_FAULT_SUITE_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_500);
    let Gateway {
        redis,
        broker,
        bootstrap_servers,
        _routing,
        mut edge_a,
        mut edge_b,
        a_addr,
        b_addr,
        balancer,
        prepared,
        _dir,
        ..
    } = start_gateway(messages, true, None).await;

    // The faults, until the partner is done.
    let done = Arc::new(AtomicBool::new(false));
    let faults = Arc::new(Faults::default());
    let chaos = {
        let (done, faults) = (Arc::clone(&done), Arc::clone(&faults));
        let (redis, broker) = (Arc::clone(&redis), Arc::clone(&broker));
        tokio::spawn(async move {
            let mut round = 0_u64;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(random_in(1_500..3_500))).await;
                if edge_b.has_exited() {
                    log_fault("edge b crashed at its fault point; restarting it");
                    faults.fault_point_crashes.fetch_add(1, Ordering::SeqCst);
                    edge_b.restart(&[crash_after()]);
                    edge_b.wait_for(b_addr);
                }
                if done.load(Ordering::SeqCst) {
                    break;
                }
                round += 1;
                match round % 5 {
                    // Edge "a" dies at a random moment and comes back.
                    0 | 2 => {
                        log_fault("killing edge a");
                        edge_a.kill();
                        faults.edge_kills.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        edge_a.restart(&[]);
                        edge_a.wait_for(a_addr);
                    }
                    // The broker stops answering for 3 s.
                    1 => {
                        let pid = broker.lock().await.pid().unwrap();
                        log_fault("stopping the broker");
                        signal(pid, "STOP");
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        signal(pid, "CONT");
                        log_fault("the broker goes on");
                        faults.broker_stalls.fetch_add(1, Ordering::SeqCst);
                    }
                    // The broker is killed and restarted on its storage.
                    3 if !memory_broker() => {
                        log_fault("restarting the broker");
                        broker.lock().await.restart();
                        faults.broker_restarts.fetch_add(1, Ordering::SeqCst);
                    }
                    // Redis is killed and restarted from its append-only file.
                    _ => {
                        log_fault("restarting redis");
                        redis.lock().await.restart();
                        log_fault("redis is back");
                        faults.redis_restarts.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            (edge_a, edge_b)
        })
    };

    // The partner: resends what was not answered with a processed MDN.
    let url = format!("http://{}/as2", balancer.addr());
    let prepared = Arc::new(prepared);
    let started = Instant::now();
    let outcomes = send_all(&prepared, &url).await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (edge_a, edge_b) = chaos.await.unwrap();
    let stuck = outcomes.iter().filter(|sent| sent.gave_up).count();
    let tail = |log: String| {
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    assert_eq!(
        stuck,
        0,
        "messages never processed within {GIVE_UP:?}\nedge a:\n{}\nedge b:\n{}",
        tail(edge_a.log()),
        tail(edge_b.log())
    );

    // Count the records per Message-ID.
    let records =
        as2_testkit::kafka::consume(&bootstrap_servers, TOPIC, messages, Duration::from_secs(5))
            .await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for record in &records {
        let id = bare(record.header("as2-message-id").unwrap_or_default()).to_owned();
        *per_message.entry(id).or_default() += 1;
    }
    let lost: Vec<_> = prepared
        .iter()
        .filter(|message| !per_message.contains_key(&message.message_id))
        .map(|message| message.message_id.clone())
        .collect();
    let duplicated: Vec<_> = per_message
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| format!("{id} x{count}"))
        .collect();
    let sent: std::collections::HashSet<&str> = prepared
        .iter()
        .map(|message| message.message_id.as_str())
        .collect();
    let unknown = per_message
        .keys()
        .filter(|id| !sent.contains(id.as_str()))
        .count();

    let resends: usize = outcomes.iter().map(|sent| sent.attempts - 1).sum();
    let mut recoveries: Vec<Duration> = outcomes.iter().filter_map(|sent| sent.recovery).collect();
    recoveries.sort();
    let logs = format!("{}{}", edge_a.log(), edge_b.log());
    // A soak keeps the edges' logs for reading afterwards.
    if let Some(dir) = std::env::var_os("AS2_FAULT_SUITE_LOG_DIR") {
        let dir = Path::new(&dir);
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("edge-a.log"), edge_a.log()).unwrap();
        std::fs::write(dir.join("edge-b.log"), edge_b.log()).unwrap();
    }
    let recovered = logs
        .matches("an earlier attempt published this message")
        .count();
    let waited = logs.matches("may still land; waiting").count();
    println!(
        "fault suite: {messages} messages in {:.1} s, {} records; lost {}, duplicated {}; \
         {resends} resends; faults: {} edge kills, {} crashes after the acknowledgement, \
         {} broker stalls, {} broker restarts, {} redis restarts; {recovered} resends answered for a record an \
         earlier attempt published, {waited} waited out a publish window; recovery (first \
         refused answer to processed MDN) p50 {:?} p99 {:?} max {:?}; balancer {:?}",
        elapsed.as_secs_f64(),
        records.len(),
        lost.len(),
        duplicated.len(),
        faults.edge_kills.load(Ordering::SeqCst),
        faults.fault_point_crashes.load(Ordering::SeqCst),
        faults.broker_stalls.load(Ordering::SeqCst),
        faults.broker_restarts.load(Ordering::SeqCst),
        faults.redis_restarts.load(Ordering::SeqCst),
        percentile(&recoveries, 50),
        percentile(&recoveries, 99),
        recoveries.last(),
        balancer.served(),
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    let doubled: Vec<_> = per_message
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        duplicated.is_empty(),
        "duplicated: {duplicated:?}\n{}",
        doubled_report(&records, &doubled, &logs)
    );
    assert_eq!(unknown, 0, "records of messages never sent");
    assert_eq!(records.len(), messages);
    // The suite must have hurt: each kind of fault happened.
    assert!(faults.edge_kills.load(Ordering::SeqCst) >= 1);
    assert!(faults.fault_point_crashes.load(Ordering::SeqCst) >= 1);
    assert!(faults.broker_stalls.load(Ordering::SeqCst) >= 1);
    assert!(memory_broker() || faults.broker_restarts.load(Ordering::SeqCst) >= 1);
    assert!(faults.redis_restarts.load(Ordering::SeqCst) >= 1);
    assert!(
        recovered >= 1,
        "no crash after an acknowledgement was recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_edge_crashes_between_the_acknowledgement_and_the_receipt_a_resend_is_answered_within_ten_seconds()
 {
    let mut gateway = start_gateway(2, false, None).await;
    let client = http_client();
    // Edge "b" publishes the first message, then dies before it stores the receipt.
    gateway
        .edge_b
        .restart(&[("AS2_FAULT_CRASH_AFTER_PUBLISH", "1".to_owned())]);
    gateway.edge_b.wait_for(gateway.b_addr);
    let message = &gateway.prepared[0];
    let to_b = send_once(&client, &format!("http://{}/as2", gateway.b_addr), message).await;
    let crashed_at = Instant::now();
    assert!(to_b.is_none(), "edge b answered: {to_b:?}");
    let exited = async {
        while !gateway.edge_b.has_exited() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exited)
        .await
        .expect("edge b aborted at its fault point");

    // The partner resends to the other replica, waiting as long as Retry-After says.
    let url_a = format!("http://{}/as2", gateway.a_addr);
    let sent = send_until_processed(&client, &url_a, message, Duration::from_secs(60)).await;
    assert!(!sent.gave_up);
    let answered_after = crashed_at.elapsed();
    println!(
        "crash after the acknowledgement: the resend was answered with a processed MDN \
         {answered_after:?} after the crash, after {} attempts",
        sent.attempts
    );
    assert!(
        answered_after < Duration::from_secs(10),
        "{answered_after:?}"
    );
    assert!(
        gateway
            .edge_a
            .log()
            .contains("an earlier attempt published this message"),
        "{}",
        gateway.edge_a.log()
    );
    // The second message goes through as usual; the first is in the topic once.
    send_until_processed(
        &client,
        &url_a,
        &gateway.prepared[1],
        Duration::from_secs(60),
    )
    .await;
    let records =
        as2_testkit::kafka::consume(&gateway.bootstrap_servers, TOPIC, 2, Duration::from_secs(3))
            .await;
    let first = records
        .iter()
        .filter(|record| {
            bare(record.header("as2-message-id").unwrap_or_default()) == message.message_id
        })
        .count();
    assert_eq!((records.len(), first), (2, 1));
}

/// The document objects under `root` (a local object store), relative to it: what a
/// listing shows (object_store's staging files of interrupted uploads, `{key}#{n}`, are
/// not objects).
fn document_objects(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, found);
            } else if !path.to_string_lossy().contains('#') {
                found.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut found = Vec::new();
    walk(root, &root.join("documents"), &mut found);
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_of_attempts_that_died_are_swept_unless_a_record_references_them() {
    let mut gateway = start_gateway(3, false, None).await;
    let objects = tempfile::tempdir().unwrap();
    // Every document goes to the store (a local directory both edges share).
    let store = [
        (
            "AS2_OBJECT_STORE_URL",
            format!("file://{}", objects.path().display()),
        ),
        ("AS2_CLAIM_CHECK_THRESHOLD_BYTES", "16".to_owned()),
        ("AS2_ORPHAN_SWEEP_INTERVAL_SECS", "0".to_owned()),
    ];
    let client = http_client();
    let url_a = format!("http://{}/as2", gateway.a_addr);
    let url_b = format!("http://{}/as2", gateway.b_addr);
    let (unpublished, published, resent) = (
        &gateway.prepared[0],
        &gateway.prepared[1],
        &gateway.prepared[2],
    );
    let crash_b_at = |fault_point: &'static str, other: &'static str| {
        let mut env = store.to_vec();
        // 0: never.
        env.extend([(fault_point, "1".to_owned()), (other, "0".to_owned())]);
        env
    };
    let wait_until_b_exits = |edge_b: &mut ServiceProcess| {
        let started = Instant::now();
        while !edge_b.has_exited() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "edge b aborted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // Edge "b" dies right after making a document visible, before arming its claim; the
    // partner resends to edge "a" at once, which takes the claim over after the lease,
    // deletes that object and publishes with its own.
    gateway.edge_b.restart(&crash_b_at(
        "AS2_FAULT_CRASH_AFTER_UPLOAD",
        "AS2_FAULT_CRASH_AFTER_PUBLISH",
    ));
    gateway.edge_b.wait_for(gateway.b_addr);
    assert!(send_once(&client, &url_b, resent).await.is_none());
    wait_until_b_exits(&mut gateway.edge_b);
    let stale = document_objects(objects.path());
    assert_eq!(stale.len(), 1, "{stale:?}");
    gateway.edge_a.restart(&store);
    gateway.edge_a.wait_for(gateway.a_addr);
    let sent = send_until_processed(&client, &url_a, resent, Duration::from_secs(2)).await;
    assert!(!sent.gave_up);
    let after_resend = document_objects(objects.path());
    assert_eq!(after_resend.len(), 1, "{after_resend:?}");
    assert_ne!(after_resend, stale, "the dead attempt's object is gone");

    // Edge "b" dies right after making the first document visible (before arming its
    // claim), then, restarted, right after the broker acknowledged the second.
    for (fault_point, other, message) in [
        (
            "AS2_FAULT_CRASH_AFTER_UPLOAD",
            "AS2_FAULT_CRASH_AFTER_PUBLISH",
            unpublished,
        ),
        (
            "AS2_FAULT_CRASH_AFTER_PUBLISH",
            "AS2_FAULT_CRASH_AFTER_UPLOAD",
            published,
        ),
    ] {
        gateway.edge_b.restart(&crash_b_at(fault_point, other));
        gateway.edge_b.wait_for(gateway.b_addr);
        assert!(send_once(&client, &url_b, message).await.is_none());
        wait_until_b_exits(&mut gateway.edge_b);
    }
    let left: Vec<String> = document_objects(objects.path())
        .into_iter()
        .filter(|object| !after_resend.contains(object))
        .collect();
    assert_eq!(left.len(), 2, "both uploads completed: {left:?}");
    let records =
        as2_testkit::kafka::consume(&gateway.bootstrap_servers, TOPIC, 2, Duration::from_secs(3))
            .await;
    assert_eq!(
        records.len(),
        2,
        "the resent one and the second were published"
    );
    let referenced = records
        .iter()
        .find(|record| {
            bare(record.header("as2-message-id").unwrap_or_default()) == published.message_id
        })
        .and_then(|record| record.header("as2-document-key"))
        .unwrap()
        .to_owned();
    assert!(left.contains(&referenced), "{referenced} in {left:?}");

    // No resend comes. Edge "a" sweeps every second, every entry however recent: it
    // deletes the object no record references and keeps the published one.
    let mut env = store.to_vec();
    env.extend([
        ("AS2_ORPHAN_SWEEP_INTERVAL_SECS", "1".to_owned()),
        ("AS2_ORPHAN_SWEEP_AFTER_SECS", "0".to_owned()),
    ]);
    gateway.edge_a.restart(&env);
    gateway.edge_a.wait_for(gateway.a_addr);
    let settled_line = |log: &str, message: &Prepared, outcome: &str| {
        log.lines().any(|line| {
            line.contains("pending object settled")
                && line.contains(&message.message_id)
                && line.contains(outcome)
        })
    };
    let settled = async {
        loop {
            let log = gateway.edge_a.log();
            if settled_line(&log, unpublished, "deleted") && settled_line(&log, published, "kept") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // The published attempt is settled once its publish window has passed (1 s + the 5 s
    // publish timeout + the 10 s broker pause after its arming).
    tokio::time::timeout(Duration::from_secs(90), settled)
        .await
        .unwrap_or_else(|_| panic!("the sweep settled both: {}", gateway.edge_a.log()));
    let mut expected = vec![referenced.clone(), after_resend[0].clone()];
    expected.sort();
    assert_eq!(document_objects(objects.path()), expected);

    // The partner's resends come later: the first is published afresh, the second is
    // found; each is in the topic once and its record references an object that exists.
    for message in [unpublished, published] {
        let sent = send_until_processed(&client, &url_a, message, Duration::from_secs(2)).await;
        assert!(!sent.gave_up, "{}", message.message_id);
    }
    let records =
        as2_testkit::kafka::consume(&gateway.bootstrap_servers, TOPIC, 3, Duration::from_secs(3))
            .await;
    let count = |message: &Prepared| {
        records
            .iter()
            .filter(|record| {
                bare(record.header("as2-message-id").unwrap_or_default()) == message.message_id
            })
            .count()
    };
    assert_eq!(
        (
            records.len(),
            count(unpublished),
            count(published),
            count(resent)
        ),
        (3, 1, 1, 1)
    );
    let left = document_objects(objects.path());
    for record in &records {
        let key = record.header("as2-document-key").unwrap();
        assert!(left.iter().any(|object| object == key), "{key} in {left:?}");
    }
    assert_eq!(left.len(), 3, "{left:?}");
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn http_client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>()
}

/// Posts `message` once: the status, Retry-After and body, or `None` when the connection
/// broke or nothing came back within 30 s.
async fn send_once(
    client: &Client,
    url: &str,
    message: &Prepared,
) -> Option<(http::StatusCode, Option<u64>, Bytes)> {
    let mut request = http::Request::post(url);
    for (name, value) in &message.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(message.body.clone())).ok()?;
    tokio::time::timeout(Duration::from_secs(30), async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, retry_after, body))
    })
    .await
    .ok()
    .flatten()
}

/// A Message-ID without its angle brackets.
fn bare(message_id: &str) -> &str {
    let trimmed = message_id.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(trimmed)
}

fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = (sorted.len() * percent / 100).min(sorted.len() - 1);
    Some(sorted[index])
}

/// Sends every prepared message over [`CONCURRENCY`] connections, each until it is
/// processed (waiting at most 1 s of a Retry-After); what the partner saw, in message
/// order.
async fn send_all(prepared: &Arc<Vec<Prepared>>, url: &str) -> Vec<Sent> {
    let client = http_client();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (prepared, next, client, url) = (
                Arc::clone(prepared),
                Arc::clone(&next),
                client.clone(),
                url.to_owned(),
            );
            tokio::spawn(async move {
                let mut sent = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(message) = prepared.get(index) else {
                        return sent;
                    };
                    let outcome =
                        send_until_processed(&client, &url, message, Duration::from_secs(1)).await;
                    sent.push((index, outcome));
                }
            })
        })
        .collect();
    let mut outcomes: Vec<Option<Sent>> = (0..prepared.len()).map(|_| None).collect();
    for worker in workers {
        for (index, sent) in worker.await.unwrap() {
            outcomes[index] = Some(sent);
        }
    }
    outcomes.into_iter().map(Option::unwrap).collect()
}

/// Posts `message` until the answer is a processed MDN; panics on an error MDN or any
/// answer a partner would not resend on.
async fn send_until_processed(
    client: &Client,
    url: &str,
    message: &Prepared,
    longest_wait: Duration,
) -> Sent {
    let first = Instant::now();
    let mut sent = Sent::default();
    let mut first_refusal: Option<Instant> = None;
    loop {
        if first.elapsed() >= GIVE_UP {
            sent.gave_up = true;
            return sent;
        }
        sent.attempts += 1;
        let answer = send_once(client, url, message).await;
        match answer {
            Some((status, _, body)) if status == 200 => {
                let text = String::from_utf8_lossy(&body);
                // A processed sync MDN, or the answer to an asynchronous request.
                assert!(
                    text.contains("; processed\r\n")
                        || text.contains("the MDN follows asynchronously"),
                    "{} got a non-processed MDN: {text}",
                    message.message_id
                );
                sent.recovery = first_refusal.map(|at| at.elapsed());
                return sent;
            }
            Some((status, retry_after, body)) => {
                assert_eq!(
                    status,
                    503,
                    "{}: {}",
                    message.message_id,
                    String::from_utf8_lossy(&body)
                );
                first_refusal.get_or_insert_with(Instant::now);
                // A partner waits Retry-After (the suite at most `longest_wait` of it).
                let wait = Duration::from_secs(retry_after.unwrap_or(1)).min(longest_wait);
                tokio::time::sleep(wait).await;
            }
            // The connection broke (the edge died) or nothing came back in time.
            None => {
                first_refusal.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_asynchronous_mdn_is_delivered_while_the_mdn_service_is_killed() {
    const MESSAGES: usize = 300;
    let (receiver_url, received) = start_mdn_receiver().await;
    // Bound whole: every part of it must live to the end of the test.
    let mut gateway = start_gateway(MESSAGES, false, Some(&receiver_url)).await;
    let mut mdn = gateway.mdn.take().expect("the mdn service");
    let mdn_grpc = gateway.mdn_grpc;

    // The mdn service is SIGKILLed every 1.5 to 3 s, with MDNs queued and in flight, up
    // to eight times; then the last one delivers what is left.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = Arc::clone(&done);
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            // Kills while MDNs were still to be delivered.
            let mut kills = 0;
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(random_in(1_500..3_000))).await;
                if kills == 8 || received.lock().await.len() >= MESSAGES {
                    break;
                }
                mdn.kill();
                kills += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                mdn.restart(&[]);
                mdn.wait_for(mdn_grpc);
            }
            (mdn, kills)
        })
    };
    let url = format!("http://{}/as2", gateway.balancer.addr());
    let prepared = Arc::new(std::mem::take(&mut gateway.prepared));
    let stuck = send_all(&prepared, &url)
        .await
        .iter()
        .filter(|sent| sent.gave_up)
        .count();
    assert_eq!(
        stuck,
        0,
        "messages never answered:\n{}",
        gateway.edge_a.log()
    );

    // Every acknowledged message's MDN arrives, whatever the kills did (the last restart
    // delivers what was left).
    let all_delivered = async {
        loop {
            let delivered = received.lock().await.len();
            if delivered >= MESSAGES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let in_time = tokio::time::timeout(Duration::from_secs(90), all_delivered).await;
    done.store(true, Ordering::SeqCst);
    let (mdn, kills) = killer.await.unwrap();
    let per_message = received.lock().await.clone();
    let missing: Vec<_> = prepared
        .iter()
        .filter(|message| !per_message.contains_key(&message.message_id))
        .map(|message| message.message_id.clone())
        .collect();
    let repeated: usize = per_message.values().map(|count| count - 1).sum();
    println!(
        "async MDNs: {MESSAGES} messages, {kills} mdn service kills with MDNs undelivered; {} delivered, {} missing, \
         {repeated} delivered more than once (a POST cut by a kill is repeated)",
        per_message.len(),
        missing.len()
    );
    assert!(
        in_time.is_ok() && missing.is_empty(),
        "missing MDNs {missing:?}\nmdn log:\n{}",
        mdn.log()
    );
    assert!(kills >= 2, "only {kills} kills came before the last MDN");
}

/// A partner's MDN endpoint on loopback: counts the MDNs it gets per original
/// Message-ID (angle brackets dropped).
async fn start_mdn_receiver() -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mdn", listener.local_addr().unwrap());
    let received: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counts = Arc::clone(&received);
    // One POST at a time, each taking a while, as a slow partner's server does: the
    // deliveries take several seconds, so the kills find MDNs queued and POSTs in flight.
    let one_at_a_time = Arc::new(tokio::sync::Semaphore::new(1));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = Arc::clone(&counts);
            let one_at_a_time = Arc::clone(&one_at_a_time);
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let counts = Arc::clone(&counts);
                    let one_at_a_time = Arc::clone(&one_at_a_time);
                    async move {
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|body| body.to_bytes());
                        let _turn = one_at_a_time.acquire().await;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        if let Ok(body) = body
                            && let Some(original) = original_message_id(&body)
                        {
                            *counts.lock().await.entry(original).or_default() += 1;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, received)
}

/// The Original-Message-ID of an MDN, without angle brackets.
fn original_message_id(mdn: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(mdn);
    let start = text.find("Original-Message-ID:")? + "Original-Message-ID:".len();
    let value = text[start..].lines().next()?;
    Some(bare(value).to_owned())
}

/// The suite restarts the broker; its storage must keep what it acknowledged, or a lost
/// record would be the broker's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_broker_keeps_acknowledged_records_across_a_kill() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut broker = as2_testkit::KafkaBroker::start_durable();
    create_topics(&broker.bootstrap_servers(), &[("durable", 1)]).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for index in 0..5 {
        let payload = format!("record {index}");
        producer
            .send(
                FutureRecord::to("durable").key("k").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    drop(producer);
    broker.restart();
    let records = as2_testkit::kafka::consume(
        &broker.bootstrap_servers(),
        "durable",
        5,
        Duration::from_secs(2),
    )
    .await;
    let payloads: Vec<_> = records
        .iter()
        .map(|record| String::from_utf8_lossy(&record.payload).into_owned())
        .collect();
    assert_eq!(
        payloads,
        (0..5)
            .map(|index| format!("record {index}"))
            .collect::<Vec<_>>()
    );
}

const OUTBOUND_TOPIC: &str = "fault-outbound";
const RECEIPTS_TOPIC: &str = "fault-receipts";
const LOOP_TOPIC: &str = "fault-loop-inbound";

/// The fault point of sender "b": crash right after the Nth acknowledged receipt.
fn crash_after_receipt() -> (&'static str, String) {
    (
        "AS2_FAULT_CRASH_AFTER_RECEIPT",
        random_in(25..70).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outbound_document_gets_exactly_one_receipt_while_the_senders_crash() {
    const DOCUMENTS: usize = 200;
    let gateway = start_gateway(0, false, None).await;
    let edge_url = format!("http://{}/as2", gateway.balancer.addr());

    // The gateway sends to itself: partnership "loop-out" sends to the edges, which
    // receive it as partnership "loop-in" and publish it to LOOP_TOPIC. One key pair signs,
    // encrypts and verifies on both sides.
    let mut registry = RoutingServiceClient::new(
        grpc_channel(
            &gateway.grpc_dir,
            "operator",
            "routing",
            gateway.routing_grpc,
        )
        .await,
    );
    let certificate = || {
        vec![PartnerCertificate {
            pem: gateway.gateway_cert_pem.clone(),
            ..PartnerCertificate::default()
        }]
    };
    for partnership in [
        Partnership {
            id: "loop-out".to_owned(),
            as2_from: "loop-partner".to_owned(),
            as2_to: "loop-gateway".to_owned(),
            kafka_topic: "fault-unused".to_owned(),
            partner_certificates: certificate(),
            outbound: Some(as2_rpc::routing::v1::OutboundSettings {
                url: edge_url.clone(),
                sign: true,
                signing_digest: as2_rpc::routing::v1::SigningDigest::Sha256.into(),
                encrypt: true,
                mdn_mode: as2_rpc::routing::v1::MdnMode::Sync.into(),
                request_signed_mdn: true,
                timeout_seconds: 20,
                max_retries: 100,
                ..Default::default()
            }),
            ..Partnership::default()
        },
        Partnership {
            id: "loop-in".to_owned(),
            as2_from: "loop-gateway".to_owned(),
            as2_to: "loop-partner".to_owned(),
            kafka_topic: LOOP_TOPIC.to_owned(),
            partner_certificates: certificate(),
            ..Partnership::default()
        },
    ] {
        registry
            .create_partnership(CreatePartnershipRequest {
                partnership: Some(partnership),
            })
            .await
            .unwrap();
    }
    create_topics(
        &gateway.bootstrap_servers,
        &[(OUTBOUND_TOPIC, 2), (RECEIPTS_TOPIC, 1)],
    )
    .await;

    // Two senders in one consumer group, each crashing right after its Nth receipt the
    // broker acknowledged (before Redis marks it), and "a" also SIGKILLed at random
    // moments with documents in flight.
    let dir = tempfile::tempdir().unwrap();
    let sender_env = |grpc: SocketAddr| {
        vec![
            (
                "AS2_GRPC_TLS_CERT",
                gateway.grpc_dir.join("sender.crt").display().to_string(),
            ),
            (
                "AS2_GRPC_TLS_KEY",
                gateway.grpc_dir.join("sender.key").display().to_string(),
            ),
            (
                "AS2_GRPC_TLS_CA",
                gateway.grpc_dir.join("ca.crt").display().to_string(),
            ),
            ("AS2_GRPC_LISTEN", grpc.to_string()),
            ("AS2_HTTP_LISTEN", loopback().to_string()),
            ("AS2_REDIS_URL", gateway.redis_url.clone()),
            ("AS2_REDIS_KEY_PREFIX", "faults".to_owned()),
            (
                "AS2_KAFKA_BOOTSTRAP_SERVERS",
                gateway.bootstrap_servers.clone(),
            ),
            ("AS2_KAFKA_OUTBOUND_TOPIC", OUTBOUND_TOPIC.to_owned()),
            ("AS2_KAFKA_RECEIPTS_TOPIC", RECEIPTS_TOPIC.to_owned()),
            ("AS2_KAFKA_CONSUMER_GROUP", "fault-senders".to_owned()),
            (
                "AS2_KAFKA_OPTIONS",
                "session.timeout.ms=6000,heartbeat.interval.ms=500".to_owned(),
            ),
            (
                "AS2_ROUTING_URL",
                format!("https://{}", gateway.routing_grpc),
            ),
            ("AS2_KEYS_DIR", gateway.keys_dir.display().to_string()),
            ("AS2_DEFAULT_SIGNING_KEY_ID", KEY_ID.to_owned()),
            // One partnership: it may use every slot.
            ("AS2_SENDER_MAX_IN_FLIGHT_PER_PARTNERSHIP", "16".to_owned()),
            ("AS2_SENDER_INITIAL_BACKOFF_MS", "200".to_owned()),
            ("AS2_SENDER_MAX_BACKOFF_MS", "1000".to_owned()),
            ("AS2_SENDER_SWEEP_INTERVAL_MS", "500".to_owned()),
            ("AS2_SHUTDOWN_GRACE_SECS", "1".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            crash_after_receipt(),
        ]
    };
    let (a_grpc, b_grpc) = (loopback(), loopback());
    let mut sender_a = service("sender-a", dir.path(), "sender", &sender_env(a_grpc));
    let mut sender_b = service("sender-b", dir.path(), "sender", &sender_env(b_grpc));
    sender_a.wait_for(a_grpc);
    sender_b.wait_for(b_grpc);

    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &gateway.bootstrap_servers)
        .set("acks", "all")
        .create()
        .unwrap();
    let started = Instant::now();
    for index in 0..DOCUMENTS {
        let payload = format!("UNB+UNOA:2+LOOP+PARTNER+261204:0100+{index}'\r\nUNZ+1+{index}'\r\n");
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "as2-partnership-id",
                value: Some("loop-out"),
            })
            .insert(rdkafka::message::Header {
                key: "content-type",
                value: Some("application/EDIFACT"),
            });
        producer
            .send(
                rdkafka::producer::FutureRecord::to(OUTBOUND_TOPIC)
                    .key("loop-out")
                    .payload(payload.as_bytes())
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // The faults, while the receipts come in: a sender that crashed at its fault point
    // is restarted with a new one; "a" is killed four times.
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let (mut kills, mut crashes) = (0_usize, 0_usize);
            while !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(random_in(500..2_000))).await;
                for (sender, grpc) in [(&mut sender_a, a_grpc), (&mut sender_b, b_grpc)] {
                    if sender.has_exited() {
                        crashes += 1;
                        sender.restart(&[crash_after_receipt()]);
                        sender.wait_for(grpc);
                    }
                }
                if kills < 4 && !done.load(Ordering::SeqCst) {
                    sender_a.kill();
                    kills += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sender_a.restart(&[]);
                    sender_a.wait_for(a_grpc);
                }
            }
            (sender_a, sender_b, kills, crashes)
        })
    };
    let receipts = collect(
        &gateway.bootstrap_servers,
        RECEIPTS_TOPIC,
        DOCUMENTS,
        Duration::from_secs(240),
    )
    .await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let (sender_a, sender_b, kills, crashes) = chaos.await.unwrap();
    assert!(
        receipts.len() >= DOCUMENTS,
        "{} receipts for {DOCUMENTS} documents\nsender a:\n{}\nsender b:\n{}",
        receipts.len(),
        sender_a.log(),
        sender_b.log()
    );
    for record in &receipts {
        let payload: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        assert_eq!(payload["outcome"], "delivered", "{payload:#}");
    }
    let per_document = per_message_id(&receipts);
    let twice: Vec<_> = per_document
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| format!("{id} x{count}"))
        .collect();
    // What the edges received from the senders: each document once.
    let inbound = as2_testkit::kafka::consume(
        &gateway.bootstrap_servers,
        LOOP_TOPIC,
        DOCUMENTS,
        Duration::from_secs(3),
    )
    .await;
    let per_message = per_message_id(&inbound);
    let logs = format!("{}{}", sender_a.log(), sender_b.log());
    let found = logs
        .matches("an earlier attempt at this receipt landed")
        .count();
    println!(
        "outbound faults: {DOCUMENTS} documents in {:.1} s; {} receipts for {} documents, \
         {} twice; {} inbound records for {} messages; {kills} kills of sender a, {crashes} \
         crashes after a receipt; {found} receipts found instead of published again",
        elapsed.as_secs_f64(),
        receipts.len(),
        per_document.len(),
        twice.len(),
        inbound.len(),
        per_message.len(),
    );
    assert!(twice.is_empty(), "receipts published twice: {twice:?}");
    assert_eq!(per_document.len(), DOCUMENTS);
    assert_eq!(
        per_message.len(),
        DOCUMENTS,
        "every document reached the partner"
    );
    let doubled: Vec<_> = per_message
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, _)| id.clone())
        .collect();
    let all_logs = format!("{}{}{logs}", gateway.edge_a.log(), gateway.edge_b.log());
    assert!(
        doubled.is_empty(),
        "the partner's topic holds a document twice:\n{}",
        doubled_report(&inbound, &doubled, &all_logs)
    );
    assert!(kills >= 4);
    assert!(crashes >= 1, "no sender reached its fault point");
    assert!(found >= 1, "no crash after a receipt was recovered");
}

/// Where the records of each doubled Message-ID are (partition/offset) and every log
/// line that names one: what a failure needs to be explained.
fn doubled_report(
    records: &[as2_testkit::kafka::ConsumedRecord],
    doubled: &[String],
    logs: &str,
) -> String {
    let names = |text: &str| doubled.iter().any(|id| text.contains(bare(id)));
    let places: Vec<_> = records
        .iter()
        .filter(|record| names(record.header("as2-message-id").unwrap_or_default()))
        .map(|record| {
            format!(
                "{} at {}/{}, created {:?} ms, received at {}",
                record.header("as2-message-id").unwrap_or_default(),
                record.partition,
                record.offset,
                record.timestamp,
                record.header("as2-received-at").unwrap_or_default(),
            )
        })
        .collect();
    let lines: Vec<_> = logs.lines().filter(|line| names(line)).collect();
    format!("records: {places:?}\nlog lines:\n{}", lines.join("\n"))
}

/// How many records carry each `as2-message-id`.
fn per_message_id(records: &[as2_testkit::kafka::ConsumedRecord]) -> HashMap<String, usize> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for record in records {
        let id = record.header("as2-message-id").unwrap_or_default();
        *counts.entry(id.to_owned()).or_default() += 1;
    }
    counts
}

/// Reads `topic` from the beginning until it holds records of `distinct` different
/// Message-IDs (within `timeout`), then 5 s more for any extra record.
async fn collect(
    bootstrap_servers: &str,
    topic: &str,
    distinct: usize,
    timeout: Duration,
) -> Vec<as2_testkit::kafka::ConsumedRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let records =
            as2_testkit::kafka::consume(bootstrap_servers, topic, 0, Duration::from_secs(5)).await;
        let ids: std::collections::HashSet<_> = records
            .iter()
            .filter_map(|record| record.header("as2-message-id"))
            .collect();
        if ids.len() >= distinct || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Creates `topics` (name, partitions) with one replica.
async fn create_topics(bootstrap_servers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .create()
        .unwrap();
    let topics: Vec<_> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap();
}
