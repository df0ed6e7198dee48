//! A whole inbound stack for end-to-end tests: real Redis, a real Kafka-protocol broker,
//! the routing service and the edge (both started through their library entry points),
//! our key on disk, and a partnership for a pyas2lib partner.

// Each test binary uses a part of this module, re-exports included.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use as2_common::runtime::ServiceHandle;
use as2_edge::{EdgeConfig, EdgeServer};
use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, MessageId, MicAlgorithm};
use as2_protocol::outbound::{Encryption, MdnRequest, OutboundMessage, Signing, build_message};
use as2_routing::{RoutingConfig, RoutingServer};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    CreatePartnershipRequest, InteropSwitches, MdnPreferences, PartnerCertificate, Partnership,
    SecurityPolicy,
};
use as2_rpc::tonic::transport::Channel;
pub use as2_testkit::certificates::KeyMaterial;
pub use as2_testkit::kafka::{ConsumedRecord, consume};
pub use as2_testkit::message_parts;
use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509Name};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};

/// Our AS2 id in the tests.
pub const GATEWAY_ID: &str = "as2-gateway";
/// The pyas2lib partner's AS2 id.
pub const PARTNER_ID: &str = "pyas2lib partner";
/// Our key id.
pub const GATEWAY_KEY_ID: &str = "gateway-key";

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

    pub async fn client(&self) -> RoutingServiceClient<Channel> {
        RoutingServiceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    /// Stops the service; fails the test when it did not stop cleanly.
    pub async fn stop(self) {
        self.service.stop().await.expect("routing stops cleanly");
    }
}

/// A running edge.
pub struct RunningEdge {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    service: ServiceHandle,
}

impl RunningEdge {
    pub async fn start(config: EdgeConfig) -> Self {
        let server = EdgeServer::bind(config).await.unwrap();
        let addr = server.as2_addr().unwrap();
        let admin_addr = server.admin_addr().unwrap();
        let service = ServiceHandle::spawn("edge", |stop| server.serve(stop));
        as2_testkit::admin::wait_until_ready("edge", admin_addr).await;
        Self {
            addr,
            admin_addr,
            service,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/as2", self.addr)
    }

    /// Stops the edge (drain included); fails the test when serve returned an error.
    pub async fn stop(self) {
        self.service.stop().await.expect("the edge stops cleanly");
    }

    /// Asks the edge to stop (as SIGTERM does) and returns the handle to await.
    pub fn begin_stop(self) -> ServiceHandle {
        self.service.request_stop();
        self.service
    }
}

/// The edge configuration for tests: ephemeral ports, the given dependencies.
pub fn edge_config(
    redis_url: &str,
    prefix: &str,
    bootstrap: &str,
    routing_url: &str,
    keys_dir: &Path,
) -> EdgeConfig {
    let mut config = EdgeConfig::try_parse_from(["as2-edge"]).unwrap();
    config.grpc_tls = as2_common::config::GrpcTlsConfig::insecure_plaintext();
    config.as2_listen = "127.0.0.1:0".parse().unwrap();
    config.admin.http_listen = "127.0.0.1:0".parse().unwrap();
    config.redis = as2_common::config::RedisConfig::new(redis_url, prefix);
    config.kafka = as2_edge::kafka::KafkaConfig::new(bootstrap);
    config.kafka.publish_timeout_ms = Some(5_000);
    config.routing_url = routing_url.to_owned();
    config.keys.keys_dir = keys_dir.to_path_buf();
    config.keys.default_signing_key_id = Some(GATEWAY_KEY_ID.to_owned());
    config.shutdown.shutdown_grace_secs = 2;
    config.inbound.max_body_bytes = 4 * 1024 * 1024;
    config
}

/// Everything one end-to-end test needs.
pub struct Stack {
    pub redis: as2_testkit::RedisServer,
    pub broker: as2_testkit::KafkaBroker,
    pub routing: RunningRouting,
    pub edge: RunningEdge,
    pub keys_dir: tempfile::TempDir,
    pub gateway: KeyMaterial,
    pub partner: KeyMaterial,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A stack whose edge configuration `customize` changes first.
    pub async fn start_with(customize: impl FnOnce(&mut EdgeConfig)) -> Self {
        let redis = as2_testkit::RedisServer::start();
        let broker = as2_testkit::KafkaBroker::start();
        let routing = RunningRouting::start(&redis.url(), "e2e").await;
        let keys_dir = tempfile::tempdir().unwrap();
        let gateway = KeyMaterial::generate("as2 gateway test");
        gateway.write_key_dir(keys_dir.path(), GATEWAY_KEY_ID);
        let partner = KeyMaterial::generate("pyas2lib partner test");
        let mut config = edge_config(
            &redis.url(),
            "e2e",
            &broker.bootstrap_servers(),
            &routing.url,
            keys_dir.path(),
        );
        customize(&mut config);
        let edge = RunningEdge::start(config).await;
        Self {
            redis,
            broker,
            routing,
            edge,
            keys_dir,
            gateway,
            partner,
        }
    }

    /// A partnership for the pyas2lib partner with the standard settings.
    pub fn partnership(&self, as2_from: &str, topic: &str) -> Partnership {
        partnership_for(&self.partner, as2_from, topic)
    }

    pub async fn create_partnership(&self, partnership: Partnership) -> Partnership {
        self.routing
            .client()
            .await
            .create_partnership(CreatePartnershipRequest {
                partnership: Some(partnership),
            })
            .await
            .unwrap()
            .into_inner()
            .partnership
            .unwrap()
    }

    /// A small EDI document from `as2_from`, built and signed by pyas2lib, asking for
    /// a signed synchronous MDN: (headers, body).
    pub fn signed_sync_message(&self, as2_from: &str) -> (Vec<(String, String)>, Vec<u8>) {
        use base64::Engine as _;
        let mut request = self.pyas2lib_request(as2_from);
        let fields = request.as_object_mut().unwrap();
        fields.insert(
            "payload_b64".into(),
            serde_json::json!(
                base64::engine::general_purpose::STANDARD.encode("UNB+UNOA:2+P+G'\r\n")
            ),
        );
        fields.insert("sign".into(), serde_json::json!(true));
        fields.insert("mdn_mode".into(), serde_json::json!("SYNC"));
        message_parts(&python("pyas2lib_sender.py", "build", &request))
    }

    /// Request fields for pyas2lib_sender.py: the partner sends to us.
    pub fn pyas2lib_request(&self, as2_from: &str) -> serde_json::Value {
        serde_json::json!({
            "sender_id": as2_from,
            "sender_key_pem": self.partner.key_pem,
            "sender_cert_pem": self.partner.cert_pem,
            "receiver_id": GATEWAY_ID,
            "receiver_cert_pem": self.gateway.cert_pem,
        })
    }
}

/// A partnership with us for a partner signing with `partner`, with the standard
/// settings.
pub fn partnership_for(partner: &KeyMaterial, as2_from: &str, topic: &str) -> Partnership {
    Partnership {
        as2_from: as2_from.to_owned(),
        as2_to: GATEWAY_ID.to_owned(),
        kafka_topic: topic.to_owned(),
        partner_certificates: vec![PartnerCertificate {
            pem: partner.cert_pem.clone(),
            ..Default::default()
        }],
        decryption_key_id: GATEWAY_KEY_ID.to_owned(),
        mdn_signing_key_id: GATEWAY_KEY_ID.to_owned(),
        security_policy: Some(SecurityPolicy::default()),
        mdn_preferences: Some(MdnPreferences::default()),
        interop: Some(InteropSwitches::default()),
        // The tests' MDN receivers listen on loopback: the partnership opts in.
        async_mdn: Some(as2_rpc::routing::v1::AsyncMdnPolicy {
            allow_private_targets: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A message with `payload` from `as2_from` to us (encrypted for `gateway`), signed
/// by `signer`, asking for a signed synchronous MDN; built by our own protocol code.
pub fn signed_encrypted_message(
    gateway: &KeyMaterial,
    as2_from: &str,
    signer: &KeyMaterial,
    message_id: &MessageId,
    payload: &[u8],
) -> As2Request {
    signed_encrypted_message_compressed(gateway, as2_from, signer, message_id, payload, None)
}

/// [`signed_encrypted_message`], compressed before or after signing when asked.
pub fn signed_encrypted_message_compressed(
    gateway: &KeyMaterial,
    as2_from: &str,
    signer: &KeyMaterial,
    message_id: &MessageId,
    payload: &[u8],
    compression: Option<as2_protocol::outbound::CompressionOrder>,
) -> As2Request {
    let identity =
        Identity::from_pem(signer.key_pem.as_bytes(), signer.cert_pem.as_bytes(), None).unwrap();
    let gateway = X509::from_pem(gateway.cert_pem.as_bytes()).unwrap();
    let built = build_message(&OutboundMessage {
        as2_from: &As2Id::new(as2_from).unwrap(),
        as2_to: &As2Id::new(GATEWAY_ID).unwrap(),
        message_id,
        subject: None,
        payload,
        content_type: "application/edi-x12",
        filename: None,
        signing: Some(Signing {
            identity: &identity,
            digest: MicAlgorithm::Sha256,
            scheme: SignatureScheme::RsaPkcs1v15,
        }),
        encryption: Some(Encryption {
            recipient: &gateway,
            cipher: ContentCipher::Aes256Cbc,
            key_transport: KeyTransport::RsaPkcs1v15,
        }),
        compression,
        mdn: Some(MdnRequest {
            disposition_notification_to: "edi@partner.example".to_owned(),
            signed_receipt_algorithms: vec![MicAlgorithm::Sha256],
            receipt_delivery_option: None,
        }),
    })
    .unwrap();
    (built.headers, built.body)
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// POSTs `body` with `headers` to `url`.
pub async fn post(url: &str, headers: &[(String, String)], body: Vec<u8>) -> HttpResponse {
    post_body(url, headers, Full::new(Bytes::from(body))).await
}

/// POSTs any request body (a stream, for instance) with `headers` to `url`.
pub async fn post_body<B>(url: &str, headers: &[(String, String)], body: B) -> HttpResponse
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client: Client<HttpConnector, B> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::post(url);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = client.request(request.body(body).unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Runs `tests/interop/<script> <command>` with `input` as JSON on stdin.
pub fn python(script: &str, command: &str, input: &serde_json::Value) -> serde_json::Value {
    as2_testkit::interop_json(script, command, input)
}

/// An AS2 request: its headers and body.
pub type As2Request = (Vec<(String, String)>, Vec<u8>);
