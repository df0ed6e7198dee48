//! Documents that records reference (claim check) go out without being held whole: the
//! `as2-sender` binary (its own process, so its peak RSS is its own) reads a 256 MiB
//! document from a real S3-protocol server (s3s-fs), builds the signed and encrypted
//! message into that store in one pass and sends it from there, to the real edge acting
//! as the partner; the edge's MDN is verified, the receipt says delivered, and the edge
//! stored exactly the document. The message as sent and the partner's answer are in the
//! archive. A chunked partnership without archive gets its body chunked and leaves no
//! spool object; a reference whose digest is wrong fails before anything is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use as2_common::runtime::ServiceHandle;
use as2_edge::{EdgeConfig, EdgeServer};
use as2_rpc::routing::v1::{
    ArchiveSettings, CreatePartnershipRequest, PartnerCertificate, Partnership,
};
use as2_store::{ObjectStoreArgs, Store};
use clap::Parser as _;
use futures::StreamExt as _;
use openssl::sha::Sha256;
use rdkafka::ClientConfig;
use support::{
    GATEWAY_ID, GATEWAY_KEY_ID, KeyMaterial, OutboundStack, hex, produce_reference, upload_document,
};

const MIB: u64 = 1024 * 1024;
/// The partner's AS2 id (the edge plays it) of the Content-Length partnership.
const PARTNER_ID: &str = "large-partner";
/// The partner's AS2 id of the chunked partnership.
const CHUNKED_PARTNER_ID: &str = "chunked-partner";
const PARTNER_KEY_ID: &str = "large-partner-key";
/// Where the edge publishes what it receives.
const RECEIVED_TOPIC: &str = "as2.large.received";

/// The S3 store both the sender and the test use.
fn s3_args(server: &as2_testkit::S3Server, prefix: &str) -> ObjectStoreArgs {
    let mut args = ObjectStoreArgs {
        object_store_url: Some(format!("s3://{}/{prefix}", server.bucket())),
        ..Default::default()
    };
    args.part_size_mib = as2_store::DEFAULT_PART_SIZE / (1024 * 1024);
    args.max_concurrent_parts = as2_store::DEFAULT_MAX_CONCURRENT_PARTS;
    args.endpoint = Some(server.endpoint());
    args.region = Some(server.region().to_owned());
    args.access_key_id = Some(server.access_key_id().parse().unwrap());
    args.secret_access_key = Some(server.secret_access_key().parse().unwrap());
    args.allow_http = true;
    args
}

fn open(args: &ObjectStoreArgs) -> Store {
    Store::open(&args.store_config(Path::new("/nonexistent")).unwrap()).unwrap()
}

/// The edge as the partner: it receives what the sender sends (AS2-From the gateway, to
/// either partner id), keeps large documents and its archive in `store_dir`, publishes
/// to `RECEIVED_TOPIC`.
struct PartnerEdge {
    url: String,
    store: Store,
    service: ServiceHandle,
}

impl PartnerEdge {
    async fn start(stack: &OutboundStack, partner: &KeyMaterial, store_dir: &Path) -> Self {
        partner.write_key_dir(stack.keys_dir.path(), PARTNER_KEY_ID);
        create_topic(&stack.broker.bootstrap_servers(), RECEIVED_TOPIC).await;
        // The edge's view: messages from the gateway to the partner.
        for partner_id in [PARTNER_ID, CHUNKED_PARTNER_ID] {
            let inbound = Partnership {
                id: format!("{partner_id}-inbound"),
                as2_from: GATEWAY_ID.to_owned(),
                as2_to: partner_id.to_owned(),
                kafka_topic: RECEIVED_TOPIC.to_owned(),
                partner_certificates: vec![PartnerCertificate {
                    pem: stack.gateway.cert_pem.clone(),
                    ..Default::default()
                }],
                decryption_key_id: PARTNER_KEY_ID.to_owned(),
                mdn_signing_key_id: PARTNER_KEY_ID.to_owned(),
                ..Default::default()
            };
            stack
                .routing
                .client()
                .await
                .create_partnership(CreatePartnershipRequest {
                    partnership: Some(inbound),
                })
                .await
                .unwrap();
        }
        let url = format!("file://{}", store_dir.display());
        let mut config = EdgeConfig::try_parse_from(["as2-edge"]).unwrap();
        config.grpc_tls = as2_common::config::GrpcTlsConfig::insecure_plaintext();
        config.as2_listen = "127.0.0.1:0".parse().unwrap();
        config.admin.http_listen = "127.0.0.1:0".parse().unwrap();
        config.redis = as2_common::config::RedisConfig::new(stack.redis.url(), "partner");
        config.kafka = as2_edge::kafka::KafkaConfig::new(stack.broker.bootstrap_servers());
        config.kafka.publish_timeout_ms = Some(10_000);
        config.routing_url = stack.routing.url.clone();
        config.keys.keys_dir = stack.keys_dir.path().to_path_buf();
        config.object_store.object_store_url = Some(url.clone());
        config.inbound.claim_check_threshold_bytes = MIB as usize;
        config.inbound.max_body_bytes = 4 * 1024 * MIB;
        config.inbound.max_document_bytes = 4 * 1024 * MIB as usize;
        config.shutdown.shutdown_grace_secs = 2;
        let server = EdgeServer::bind(config).await.unwrap();
        let as2_url = format!("http://{}/as2", server.as2_addr().unwrap());
        let service = ServiceHandle::spawn("edge", |stop| server.serve(stop));
        let store = open(&ObjectStoreArgs {
            object_store_url: Some(url),
            ..Default::default()
        });
        Self {
            url: as2_url,
            store,
            service,
        }
    }

    /// The header block of the one message the edge archived from the gateway.
    async fn archived_headers(&self, partner_id: &str, message_id: &str) -> String {
        let hash = as2_store::archive::message_hash(GATEWAY_ID, partner_id, message_id);
        let entries = as2_store::archive::entries_of(&self.store, &hash)
            .await
            .unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let head = self
            .store
            .get_range(&as2_store::archive::message_key(&entries[0]), 0..4096)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let end = head
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&head[..end]).to_lowercase()
    }
}

async fn create_topic(bootstrap: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
}

/// The sender's partnership with the edge-played partner `partner_id`.
#[allow(clippy::too_many_arguments)]
async fn partnership(
    stack: &OutboundStack,
    id: &str,
    partner_id: &str,
    partner: &KeyMaterial,
    url: &str,
    chunked: bool,
    archive: bool,
) {
    let mut outbound = support::signed_encrypted_sync();
    outbound.chunked = chunked;
    outbound.timeout_seconds = 60;
    outbound.max_retries = 0;
    stack
        .routing
        .client()
        .await
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(Partnership {
                id: id.to_owned(),
                as2_from: partner_id.to_owned(),
                as2_to: GATEWAY_ID.to_owned(),
                kafka_topic: "as2.large.unused".to_owned(),
                partner_certificates: vec![PartnerCertificate {
                    pem: partner.cert_pem.clone(),
                    ..Default::default()
                }],
                decryption_key_id: GATEWAY_KEY_ID.to_owned(),
                mdn_signing_key_id: GATEWAY_KEY_ID.to_owned(),
                outbound: Some(as2_rpc::routing::v1::OutboundSettings {
                    url: url.to_owned(),
                    ..outbound
                }),
                archive: Some(ArchiveSettings {
                    enabled: Some(archive),
                    retention_days: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

/// The sender process, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peak resident set of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_documents_are_streamed_to_the_partner_from_the_object_store() {
    let stack = OutboundStack::start().await;
    let s3 = as2_testkit::S3Server::start();
    let args = s3_args(&s3, "gateway");
    let store = open(&args);
    let partner = KeyMaterial::generate("large outbound partner");
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = PartnerEdge::start(&stack, &partner, edge_dir.path()).await;
    partnership(
        &stack, "large", PARTNER_ID, &partner, &edge.url, false, true,
    )
    .await;
    let chunked = "large-chunked";
    partnership(
        &stack,
        chunked,
        CHUNKED_PARTNER_ID,
        &partner,
        &edge.url,
        true,
        false,
    )
    .await;

    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("sender.log");
    let mut command = support::sender_process(&stack, &log);
    command
        .env(
            "AS2_OBJECT_STORE_URL",
            args.object_store_url.clone().unwrap(),
        )
        .env("AS2_OBJECT_STORE_ENDPOINT", s3.endpoint())
        .env("AS2_OBJECT_STORE_REGION", s3.region())
        .env("AS2_OBJECT_STORE_ACCESS_KEY_ID", s3.access_key_id())
        .env("AS2_OBJECT_STORE_SECRET_ACCESS_KEY", s3.secret_access_key())
        .env("AS2_OBJECT_STORE_ALLOW_HTTP", "true");
    let sender = KillOnDrop(command.spawn().unwrap());

    // 1. 256 MiB (or AS2_TEST_LARGE_OUTBOUND_MIB, for measuring by hand), Content-Length,
    // archived.
    let size = std::env::var("AS2_TEST_LARGE_OUTBOUND_MIB")
        .ok()
        .and_then(|mib| mib.parse::<u64>().ok())
        .unwrap_or(256)
        * MIB;
    let sha256 = upload_document(&store, "documents/catalogue-256", size).await;
    let produced_at = time::OffsetDateTime::now_utc();
    produce_reference(
        &stack,
        "large",
        &store,
        "documents/catalogue-256",
        size,
        &sha256,
    )
    .await;
    // 2. 20 MiB, chunked, not archived.
    let small_size = 20 * MIB + 12_345;
    let small_sha256 = upload_document(&store, "documents/chunked-20", small_size).await;
    produce_reference(
        &stack,
        chunked,
        &store,
        "documents/chunked-20",
        small_size,
        &small_sha256,
    )
    .await;
    // 3. A reference whose digest is not the document's.
    produce_reference(
        &stack,
        "large",
        &store,
        "documents/chunked-20",
        small_size,
        &"00".repeat(32),
    )
    .await;

    // 4. A reference to nothing.
    produce_reference(
        &stack,
        "large",
        &store,
        "documents/missing",
        10,
        &"00".repeat(32),
    )
    .await;

    let receipts = stack.receipts(4, Duration::from_secs(2)).await;
    let peak = peak_rss(sender.0.id());
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(receipts.len(), 4, "{receipts:?}\n{}", log_text());
    let delivered: Vec<&serde_json::Value> = receipts
        .iter()
        .filter(|receipt| receipt["outcome"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 2, "{receipts:#?}\n{}", log_text());
    for receipt in &delivered {
        assert_eq!(receipt["mic_verified"], true, "{receipt}");
    }
    let mut reasons: Vec<&str> = receipts
        .iter()
        .filter(|receipt| receipt["outcome"] == "failed")
        .map(|receipt| receipt["reason"].as_str().unwrap())
        .collect();
    reasons.sort_by_key(|reason| reason.contains("SHA-256"));
    assert_eq!(reasons.len(), 2, "{receipts:#?}");
    assert!(
        reasons[0].contains("not in the object store"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("SHA-256"), "{reasons:?}");

    // The edge got both documents byte for byte (its records reference them).
    let records = as2_testkit::kafka::consume(
        &stack.broker.bootstrap_servers(),
        RECEIVED_TOPIC,
        2,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        records.len(),
        2,
        "only the good references reached the partner"
    );
    let mut sizes: Vec<(u64, String)> = records
        .iter()
        .map(|record| {
            (
                record.header("as2-document-size").unwrap().parse().unwrap(),
                record.header("as2-document-sha256").unwrap().to_owned(),
            )
        })
        .collect();
    sizes.sort();
    assert_eq!(
        sizes,
        vec![(small_size, small_sha256), (size, sha256.clone())]
    );
    for record in &records {
        let key = record.header("as2-document-key").unwrap();
        let mut body = edge.store.get(key).await.unwrap().into_stream();
        let mut digest = Sha256::new();
        while let Some(chunk) = body.next().await {
            digest.update(&chunk.unwrap());
        }
        assert_eq!(
            hex(&digest.finish()),
            record.header("as2-document-sha256").unwrap()
        );
    }

    // Content-Length for the one partnership, chunked for the other.
    let id_of = |receipt: &serde_json::Value| receipt["message_id"].as_str().unwrap().to_owned();
    let large_receipt = delivered
        .iter()
        .find(|receipt| receipt["partnership_id"] == "large")
        .unwrap();
    let chunked_receipt = delivered
        .iter()
        .find(|receipt| receipt["partnership_id"] == chunked)
        .unwrap();
    let field = |block: &str, name: &str| {
        block
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };
    let large_headers = edge
        .archived_headers(PARTNER_ID, &id_of(large_receipt))
        .await;
    let length: u64 = field(&large_headers, "content-length")
        .unwrap_or_else(|| panic!("{large_headers}"))
        .parse()
        .unwrap();
    assert!(length > size, "{large_headers}");
    assert_eq!(field(&large_headers, "transfer-encoding"), None);
    let chunked_headers = edge
        .archived_headers(CHUNKED_PARTNER_ID, &id_of(chunked_receipt))
        .await;
    assert_eq!(
        field(&chunked_headers, "transfer-encoding").as_deref(),
        Some("chunked"),
        "{chunked_headers}"
    );
    assert_eq!(field(&chunked_headers, "content-length"), None);

    // Our archive: the message as sent (the body the edge got) and the partner's MDN.
    let hash = as2_store::archive::message_hash(GATEWAY_ID, PARTNER_ID, &id_of(large_receipt));
    let entries = as2_store::archive::entries_of(&store, &hash).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let message = store
        .head(&as2_store::archive::message_key(&entries[0]))
        .await
        .unwrap();
    assert!(
        message.size > size,
        "the archived message holds the whole body"
    );
    let answer = store
        .get(&as2_store::archive::answer_key(&entries[0]))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("processed"), "{answer}");
    // No spool object stays behind (the chunked one was spooled, then deleted; the
    // failed one never completed).
    let spool: Vec<_> = store.list("outbound/").collect().await;
    assert!(spool.is_empty(), "{spool:?}");

    // Never the document whole: a 256 MiB document, a peak far below it.
    assert!(
        peak < 128 * MIB,
        "the sender's peak RSS was {} MiB",
        peak / MIB
    );

    let finished_at = time::OffsetDateTime::parse(
        large_receipt["at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let seconds = (finished_at - produced_at).as_seconds_f64();
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{} MiB document: sender peak RSS {} MiB; record to receipt {seconds:.2} s ({:.1} MB/s, alongside the 20 MiB one)",
            size / MIB,
            peak / MIB,
            size as f64 / seconds / 1e6
        );
        for line in log_text().lines() {
            if line.contains("built a large message") || line.contains("partner accepted") {
                eprintln!("{line}");
            }
        }
    }
    drop(sender);
    edge.service.stop().await.unwrap();
}
