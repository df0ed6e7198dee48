//! pyas2lib as the sending partner asks for asynchronous receipts: the real edge (with
//! routing, Redis and a Kafka-protocol broker) publishes each document, hands the MDN
//! it built and signed to this MDN service, and the MDN arrives at the partner's
//! receiver, where pyas2lib verifies it with the MIC it computed when sending.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use as2_common::runtime::ServiceHandle;
use std::time::Duration;

use as2_edge::{EdgeConfig, EdgeServer};
use as2_partner::transport::PartnerTransport;
use as2_protocol::mdn::{MdnVerification, parse_mdn};
use as2_routing::{RoutingConfig, RoutingServer};
use as2_rpc::mdn::v1::{DeliveryState, ListDeliveriesRequest};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    CreatePartnershipRequest, InteropSwitches, MdnPreferences, PartnerCertificate, Partnership,
    SecurityPolicy,
};
use as2_testkit::certificates::KeyMaterial;
use as2_testkit::{interop_json as python, message_parts};
use base64::Engine as _;
use clap::Parser as _;
use openssl::x509::X509;
use serde_json::json;
use support::{Receiver, RunningMdn, fast_config};

/// Our AS2 id.
const GATEWAY_ID: &str = "as2-gateway";
/// The pyas2lib partner's AS2 id.
const PARTNER_ID: &str = "pyas2lib partner";
/// Our key id.
const GATEWAY_KEY_ID: &str = "gateway-key";

struct Case {
    name: &'static str,
    digest: Option<&'static str>,
    cipher: Option<&'static str>,
    mdn_digest: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        name: "signed sha256, aes-256, signed mdn sha256",
        digest: Some("sha256"),
        cipher: Some("aes_256_cbc"),
        mdn_digest: Some("sha256"),
    },
    Case {
        name: "signed sha512, 3des, signed mdn sha512",
        digest: Some("sha512"),
        cipher: Some("tripledes_192_cbc"),
        mdn_digest: Some("sha512"),
    },
    Case {
        name: "signed sha1, unencrypted, unsigned mdn",
        digest: Some("sha1"),
        cipher: None,
        mdn_digest: None,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mdns_reach_the_partner_and_verify_in_pyas2lib() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let redis = as2_testkit::RedisServer::start();
    let broker = as2_testkit::KafkaBroker::start();
    let routing_server = RoutingServer::bind(RoutingConfig::local(redis.url(), "e2e"))
        .await
        .unwrap();
    let routing_url = format!("http://{}", routing_server.grpc_addr().unwrap());
    let routing = ServiceHandle::spawn("routing", |stop| routing_server.serve(stop));
    let mdn_service = RunningMdn::start(fast_config(&redis.url(), "e2e")).await;
    let keys_dir = tempfile::tempdir().unwrap();
    let gateway = KeyMaterial::generate("as2 gateway test");
    gateway.write_key_dir(keys_dir.path(), GATEWAY_KEY_ID);
    let partner = KeyMaterial::generate("pyas2lib partner test");

    // The real edge, handing the MDNs it builds to this MDN service.
    let mut config = EdgeConfig::try_parse_from(["as2-edge"]).unwrap();
    config.grpc_tls = as2_common::config::GrpcTlsConfig::insecure_plaintext();
    config.as2_listen = "127.0.0.1:0".parse().unwrap();
    config.admin.http_listen = "127.0.0.1:0".parse().unwrap();
    config.redis = as2_common::config::RedisConfig::new(redis.url(), "e2e");
    config.kafka = as2_edge::kafka::KafkaConfig::new(broker.bootstrap_servers());
    config.kafka.publish_timeout_ms = Some(5_000);
    config.routing_url = routing_url.clone();
    config.keys.keys_dir = keys_dir.path().to_path_buf();
    config.keys.default_signing_key_id = Some(GATEWAY_KEY_ID.to_owned());
    config.shutdown.shutdown_grace_secs = 2;
    config.inbound.max_body_bytes = 4 * 1024 * 1024;
    config.mdn_url = Some(mdn_service.url.clone());
    let edge_server = EdgeServer::bind(config).await.unwrap();
    let edge_url = format!("http://{}/as2", edge_server.as2_addr().unwrap());
    let edge = ServiceHandle::spawn("edge", |stop| edge_server.serve(stop));

    let partnership = RoutingServiceClient::connect(routing_url)
        .await
        .unwrap()
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(Partnership {
                as2_from: PARTNER_ID.to_owned(),
                as2_to: GATEWAY_ID.to_owned(),
                kafka_topic: "inbound-async".to_owned(),
                partner_certificates: vec![PartnerCertificate {
                    pem: partner.cert_pem.clone(),
                    ..Default::default()
                }],
                decryption_key_id: GATEWAY_KEY_ID.to_owned(),
                mdn_signing_key_id: GATEWAY_KEY_ID.to_owned(),
                security_policy: Some(SecurityPolicy::default()),
                mdn_preferences: Some(MdnPreferences::default()),
                interop: Some(InteropSwitches::default()),
                // pyas2lib's MDN receiver listens on loopback: the partnership opts in.
                async_mdn: Some(as2_rpc::routing::v1::AsyncMdnPolicy {
                    allow_private_targets: true,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .partnership
        .unwrap();
    // Request fields for pyas2lib_sender.py: the partner sends to us.
    let pyas2lib_request = || {
        json!({
            "sender_id": PARTNER_ID,
            "sender_key_pem": partner.key_pem,
            "sender_cert_pem": partner.cert_pem,
            "receiver_id": GATEWAY_ID,
            "receiver_cert_pem": gateway.cert_pem,
        })
    };
    let receiver = Receiver::start().await;

    let requests: Vec<serde_json::Value> = CASES
        .iter()
        .enumerate()
        .map(|(index, case)| {
            let mut request = pyas2lib_request();
            let fields = request.as_object_mut().unwrap();
            let payload = format!(
                "UNB+UNOA:2+PARTNER:ZZ+GATEWAY:ZZ+{index}'\r\nFTX+{}'\r\n",
                case.name
            );
            fields.insert("payload_b64".into(), json!(b64.encode(payload)));
            fields.insert("filename".into(), json!(format!("async-{index}.edi")));
            fields.insert("sign".into(), json!(case.digest.is_some()));
            fields.insert("digest_alg".into(), json!(case.digest.unwrap_or("sha256")));
            fields.insert("encrypt".into(), json!(case.cipher.is_some()));
            fields.insert(
                "enc_alg".into(),
                json!(case.cipher.unwrap_or("aes_256_cbc")),
            );
            fields.insert("mdn_mode".into(), json!("ASYNC"));
            fields.insert("mdn_url".into(), json!(receiver.url()));
            fields.insert("mdn_digest_alg".into(), json!(case.mdn_digest));
            request
        })
        .collect();
    let built = python("pyas2lib_sender.py", "build", &json!(requests));
    let built = built.as_array().unwrap().clone();

    let transport = PartnerTransport::new(None).unwrap();
    for (case, message) in CASES.iter().zip(&built) {
        let (headers, body) = message_parts(message);
        assert!(
            headers.iter().any(|(name, value)| name
                .eq_ignore_ascii_case("receipt-delivery-option")
                && *value == receiver.url()),
            "{}: pyas2lib asks for an async MDN",
            case.name
        );
        let response = transport
            .post(&edge_url, &headers, &body, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            response.status,
            200,
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&response.body)
        );
    }

    receiver
        .wait_until(Duration::from_secs(30), |receiver| {
            receiver.accepted().len() >= CASES.len()
        })
        .await;
    let received = receiver.accepted();
    assert_eq!(received.len(), CASES.len(), "one MDN per message");

    let gateway_cert = X509::from_pem(gateway.cert_pem.as_bytes()).unwrap();
    let mut verify_requests = Vec::new();
    for (case, message) in CASES.iter().zip(&built) {
        let message_id = message["message_id"]
            .as_str()
            .unwrap()
            .trim_matches(['<', '>']);
        let (mdn, parsed) = received
            .iter()
            .find_map(|mdn| {
                let parsed = parse_mdn(
                    mdn.header("content-type").unwrap_or_default(),
                    &mdn.body,
                    &MdnVerification {
                        partner_certificates: std::slice::from_ref(&gateway_cert),
                        allow_md5: false,
                        check_certificate_validity: true,
                        require_signature: case.mdn_digest.is_some(),
                    },
                )
                .ok()?;
                (parsed.report.original_message_id.trim_matches(['<', '>']) == message_id)
                    .then_some((mdn, parsed))
            })
            .unwrap_or_else(|| panic!("{}: no MDN for {message_id}", case.name));
        assert!(
            parsed.report.disposition.status.is_processed(),
            "{}",
            case.name
        );
        assert_eq!(
            parsed.signature.is_some(),
            case.mdn_digest.is_some(),
            "{}",
            case.name
        );
        assert_eq!(
            mdn.header("as2-to").map(|id| id.trim_matches('"')),
            Some(PARTNER_ID),
            "{}",
            case.name
        );
        let mic = parsed.report.received_content_mic.as_ref().unwrap();
        assert_eq!(
            mic.digest_base64(),
            message["mic"].as_str().unwrap(),
            "{}: the MIC pyas2lib computed",
            case.name
        );

        let mut verify = pyas2lib_request();
        let fields = verify.as_object_mut().unwrap();
        fields.insert("original_message_id".into(), message["message_id"].clone());
        fields.insert("original_mic".into(), message["mic"].clone());
        fields.insert("mdn_digest_alg".into(), json!(case.mdn_digest));
        fields.insert(
            "headers".into(),
            json!(mdn.headers.iter().map(|(n, v)| [n, v]).collect::<Vec<_>>()),
        );
        fields.insert("body_b64".into(), json!(b64.encode(&mdn.body)));
        verify_requests.push(verify);
    }
    let verdicts = python("pyas2lib_sender.py", "verify", &json!(verify_requests));
    for (case, verdict) in CASES.iter().zip(verdicts.as_array().unwrap()) {
        assert_eq!(
            verdict["status"], "processed",
            "{}: pyas2lib says {verdict}",
            case.name
        );
        assert!(
            verdict["detailed_status"].is_null(),
            "{}: pyas2lib says {verdict}",
            case.name
        );
    }

    // The deliveries are on record as delivered, under the partnership.
    let mut client = mdn_service.client().await;
    let listed = client
        .list_deliveries(ListDeliveriesRequest {
            partnership_id: partnership.id.clone(),
            ..ListDeliveriesRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(listed.len(), CASES.len());
    assert!(
        listed
            .iter()
            .all(|delivery| delivery.state == DeliveryState::Delivered as i32
                && delivery.delivery_url == receiver.url())
    );

    edge.stop().await.unwrap();
    routing.stop().await.unwrap();
    mdn_service.stop().await;
}
