//! One AS2 message, one trace: the edge, routing and MDN services run as separate
//! processes (as in production, each with its own OTLP exporter) and export to a
//! receiver in this test. The message asks for an asynchronous MDN, so it crosses
//! every hop: edge -> routing (resolve), edge -> Kafka (record header),
//! edge -> mdn (enqueue), mdn worker -> partner (delivery).
//!
//! The same running services then serve the checks of the alert rules and the
//! dashboard: every metric they name is one the services expose.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use as2_protocol::cms::{ContentCipher, Identity, KeyTransport, SignatureScheme};
use as2_protocol::headers::{As2Id, MessageId, MicAlgorithm, ReceiptDeliveryOption};
use as2_protocol::outbound::{Encryption, MdnRequest, OutboundMessage, Signing, build_message};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{CreatePartnershipRequest, PartnerCertificate, Partnership};
use as2_system_tests::otlp_sink::{ReceivedSpan, RunningSink};
use as2_system_tests::service::{ServiceProcess, grpc_channel};
use as2_testkit::certificates::TestCertificate;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use openssl::x509::X509;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _};

const GATEWAY_ID: &str = "trace-gateway";
const PARTNER_ID: &str = "trace-partner";
const KEY_ID: &str = "gateway-key";
const TOPIC: &str = "traced-documents";
const WAIT: Duration = Duration::from_secs(60);

/// A service process (`as2-service NAME`), killed when dropped.
struct Service {
    name: &'static str,
    process: ServiceProcess,
}

impl Service {
    fn start(name: &'static str, dir: &Path, env: &[(&str, String)]) -> Self {
        let binary = Path::new(env!("CARGO_BIN_EXE_as2-service"));
        Self {
            name,
            process: ServiceProcess::start(binary, name, name, dir, env),
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn wait_for(&mut self, addr: SocketAddr) {
        self.process.wait_for(addr);
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], as2_testkit::free_port()))
}

/// A key and self-signed certificate valid for `days`.
fn key_and_certificate(common_name: &str, days: u32) -> (String, String) {
    let material = TestCertificate::new(common_name)
        .valid_days(0, i64::from(days))
        .generate();
    (material.key_pem, material.cert_pem)
}

/// Accepts async MDNs with 200 and counts them.
async fn start_mdn_receiver() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mdn", listener.local_addr().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let _ = request.into_body().collect().await;
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
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

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The traceparent header of the first record in `topic`.
async fn record_traceparent(bootstrap: &str) -> String {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "one-trace")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[TOPIC]).unwrap();
    let record = tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a record within the wait")
        .unwrap();
    let headers = record.headers().expect("record headers");
    headers
        .iter()
        .find(|header| header.key == "traceparent")
        .and_then(|header| header.value)
        .map(|value| String::from_utf8(value.to_vec()).unwrap())
        .expect("a traceparent header")
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|span| span.service_name == service && span.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_edge_routing_and_mdn() {
    let redis = as2_testkit::RedisServer::start();
    let broker = as2_testkit::KafkaBroker::start();
    let sink = RunningSink::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let (gateway_key, gateway_cert) = key_and_certificate("trace gateway", 365);
    std::fs::create_dir_all(keys_dir.join(KEY_ID)).unwrap();
    std::fs::write(keys_dir.join(KEY_ID).join("tls.key"), &gateway_key).unwrap();
    std::fs::write(keys_dir.join(KEY_ID).join("tls.crt"), &gateway_cert).unwrap();
    let (partner_key, partner_cert) = key_and_certificate("trace partner", 30);

    // Every hop is mutual TLS with the credentials deploy/local/grpc-credentials makes
    // (the script deploy/local/run and docs/deployment.md use); the test calls the
    // routing service as the operator.
    let grpc = dir.path().join("grpc");
    let script = as2_testkit::workspace_root().join("deploy/local/grpc-credentials");
    let made = Command::new(&script).arg(&grpc).status().unwrap();
    assert!(made.success(), "{} failed", script.display());
    let credential = |name: &str| {
        vec![
            (
                "AS2_GRPC_TLS_CERT",
                grpc.join(format!("{name}.crt")).display().to_string(),
            ),
            (
                "AS2_GRPC_TLS_KEY",
                grpc.join(format!("{name}.key")).display().to_string(),
            ),
            ("AS2_GRPC_TLS_CA", grpc.join("ca.crt").display().to_string()),
        ]
    };
    let common = |name: &str, extra: &[(&'static str, String)]| {
        let mut env = credential(name);
        env.extend([
            ("AS2_REDIS_URL", redis.url()),
            ("AS2_REDIS_KEY_PREFIX", "trace".to_owned()),
            ("AS2_LOG_FORMAT", "json".to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]);
        env.extend(extra.iter().cloned());
        env
    };
    let (routing_grpc, routing_admin) = (loopback(), loopback());
    let mut routing = Service::start(
        "routing",
        dir.path(),
        &common(
            "routing",
            &[
                ("AS2_GRPC_LISTEN", routing_grpc.to_string()),
                ("AS2_HTTP_LISTEN", routing_admin.to_string()),
            ],
        ),
    );
    let (mdn_grpc, mdn_admin) = (loopback(), loopback());
    let mut mdn = Service::start(
        "mdn",
        dir.path(),
        &common(
            "mdn",
            &[
                ("AS2_GRPC_LISTEN", mdn_grpc.to_string()),
                ("AS2_HTTP_LISTEN", mdn_admin.to_string()),
                ("AS2_MDN_POLL_INTERVAL_MS", "50".to_owned()),
            ],
        ),
    );
    let (edge_as2, edge_admin) = (loopback(), loopback());
    let mut edge = Service::start(
        "edge",
        dir.path(),
        &common(
            "edge",
            &[
                ("AS2_EDGE_LISTEN", edge_as2.to_string()),
                ("AS2_HTTP_LISTEN", edge_admin.to_string()),
                ("AS2_ROUTING_URL", format!("https://{routing_grpc}")),
                ("AS2_MDN_URL", format!("https://{mdn_grpc}")),
                ("AS2_KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers()),
                ("AS2_KEYS_DIR", keys_dir.display().to_string()),
                ("AS2_DEFAULT_DECRYPTION_KEY_ID", KEY_ID.to_owned()),
                ("AS2_DEFAULT_SIGNING_KEY_ID", KEY_ID.to_owned()),
            ],
        ),
    );
    routing.wait_for(routing_grpc);
    mdn.wait_for(mdn_grpc);
    edge.wait_for(edge_as2);
    edge.wait_for(edge_admin);

    let mut registry =
        RoutingServiceClient::new(grpc_channel(&grpc, "operator", "routing", routing_grpc).await);
    let partnership = registry
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(Partnership {
                as2_from: PARTNER_ID.to_owned(),
                as2_to: GATEWAY_ID.to_owned(),
                kafka_topic: TOPIC.to_owned(),
                partner_certificates: vec![PartnerCertificate {
                    pem: partner_cert.clone(),
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
        .unwrap()
        .into_inner()
        .partnership
        .unwrap();

    // A signed, encrypted message that asks for a signed asynchronous MDN.
    let (receiver_url, mdns_received) = start_mdn_receiver().await;
    let partner =
        Identity::from_pem(partner_key.as_bytes(), partner_cert.as_bytes(), None).unwrap();
    let gateway_certificate = X509::from_pem(gateway_cert.as_bytes()).unwrap();
    let message_id = MessageId::generate("partner.example").unwrap();
    let built = build_message(&OutboundMessage {
        as2_from: &As2Id::new(PARTNER_ID).unwrap(),
        as2_to: &As2Id::new(GATEWAY_ID).unwrap(),
        message_id: &message_id,
        subject: Some("traced"),
        payload: b"ISA*00*traced document~",
        content_type: "application/edi-x12",
        filename: Some("traced.edi"),
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
            disposition_notification_to: "edi@partner.example".to_owned(),
            signed_receipt_algorithms: vec![MicAlgorithm::Sha256],
            receipt_delivery_option: Some(ReceiptDeliveryOption::parse(&receiver_url).unwrap()),
        }),
    })
    .unwrap();
    let mut request = http::Request::post(format!("http://{edge_as2}/as2"));
    for (name, value) in &built.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            request
                .body(Full::new(Bytes::from(built.body.clone())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        status,
        200,
        "{}\nedge log:\n{}",
        String::from_utf8_lossy(&answer),
        edge.log()
    );

    // The record names the message's trace.
    let traceparent = record_traceparent(&broker.bootstrap_servers()).await;
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let (trace_id, record_span_id) = (parts[1].to_owned(), parts[2].to_owned());

    // Wait until every hop has exported its part of that trace.
    let deadline = tokio::time::Instant::now() + WAIT;
    let spans = loop {
        let spans: Vec<ReceivedSpan> = sink
            .state
            .spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect();
        let complete = find(&spans, "as2-edge", "as2_message").is_some()
            && find(&spans, "as2-edge", "as2_unwrap").is_some()
            && spans.iter().any(|span| span.service_name == "as2-routing")
            && find(&spans, "as2-mdn", "mdn_delivery").is_some()
            && mdns_received.load(Ordering::SeqCst) > 0;
        if complete {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace {trace_id} is incomplete: {spans:#?}\nall spans: {:#?}\nmdn log:\n{}",
            sink.state.spans(),
            mdn.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let message = find(&spans, "as2-edge", "as2_message").unwrap();
    assert_eq!(
        message.span_id, record_span_id,
        "the record carries the message span's context"
    );
    assert_eq!(message.attribute("as2_from"), Some(PARTNER_ID));
    assert_eq!(message.attribute("as2_to"), Some(GATEWAY_ID));
    assert_eq!(message.attribute("message_id"), Some(message_id.original()));
    assert_eq!(
        message.attribute("partnership"),
        Some(partnership.id.as_str())
    );
    assert_eq!(message.attribute("outcome"), Some("processed"));
    assert_eq!(message.attribute("disposition"), Some("processed"));
    assert_eq!(
        message.attribute("request_bytes"),
        Some(built.body.len().to_string().as_str())
    );
    assert_eq!(message.attribute("document_bytes"), Some("23"));
    let unwrap = find(&spans, "as2-edge", "as2_unwrap").unwrap();
    assert_eq!(unwrap.parent_span_id, message.span_id);

    let resolve = spans
        .iter()
        .find(|span| {
            span.service_name == "as2-routing"
                && span.attribute("rpc.method") == Some("ResolvePartnership")
        })
        .expect("the resolve call in routing");
    let edge_span_ids: BTreeSet<&str> = spans
        .iter()
        .filter(|span| span.service_name == "as2-edge")
        .map(|span| span.span_id.as_str())
        .collect();
    assert!(
        edge_span_ids.contains(resolve.parent_span_id.as_str()),
        "routing's span is a child of an edge span: {resolve:?}"
    );
    let enqueue = spans
        .iter()
        .find(|span| {
            span.service_name == "as2-mdn"
                && span.attribute("rpc.method") == Some("EnqueueMdnDelivery")
        })
        .expect("the enqueue call in mdn");
    assert!(edge_span_ids.contains(enqueue.parent_span_id.as_str()));
    let delivery = find(&spans, "as2-mdn", "mdn_delivery").unwrap();
    assert_eq!(delivery.parent_span_id, message.span_id);
    assert_eq!(delivery.attribute("outcome"), Some("delivered"));

    // JSON log lines written for the message name its trace (routing logs nothing
    // for a resolve).
    for service in [&edge, &mdn] {
        let log = service.log();
        assert!(
            log.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .any(|line| line["trace_id"] == trace_id.as_str()),
            "no {} log line carries trace id {trace_id}:\n{log}",
            service.name
        );
    }

    // The alert rules and the dashboard only name metrics the services expose.
    let mut exposed = BTreeSet::new();
    for admin in [edge_admin, routing_admin, mdn_admin] {
        exposed.extend(metric_families(&http_get(admin, "/metrics").await));
    }
    let expiry = http_get(routing_admin, "/metrics").await;
    let expiry_line = expiry
        .lines()
        .find(|line| line.starts_with("as2_routing_certificate_expiry_days{"))
        .expect("a certificate expiry series");
    assert!(expiry_line.contains(&format!("partnership=\"{}\"", partnership.id)));
    let days: f64 = expiry_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((29.0..=30.0).contains(&days), "{expiry_line}");

    let chart = as2_testkit::workspace_root().join("helm/as2-gateway/files");
    let rules = yaml_as_json(&chart.join("prometheus-alerts.yaml"));
    let mut alert_names = 0;
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            assert!(
                rule["alert"].is_string() || rule["record"].is_string(),
                "{rule}"
            );
            assert!(rule["labels"]["severity"].is_string(), "{rule}");
            check_metric_names(expr, &exposed);
            alert_names += 1;
        }
    }
    assert!(alert_names >= 4, "{alert_names} rules");
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(chart.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let mut panel_queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            check_metric_names(target["expr"].as_str().expect("expr"), &exposed);
            panel_queries += 1;
        }
    }
    assert!(panel_queries >= 8, "{panel_queries} queries");
}

/// Metric family names a `/metrics` page declares (`# TYPE name kind`).
fn metric_families(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Every `as2_*` name in `expr` is an exposed family, or one of its samples.
fn check_metric_names(expr: &str, exposed: &BTreeSet<String>) {
    let mut names = Vec::new();
    let mut current = String::new();
    for character in expr.chars().chain(std::iter::once(' ')) {
        if character.is_ascii_alphanumeric() || character == '_' || character == ':' {
            current.push(character);
        } else {
            if current.starts_with("as2_") {
                names.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    for name in names {
        let family_exists = ["", "_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|family| exposed.contains(family))
            });
        assert!(
            family_exists,
            "{name} in {expr:?} is not exposed; exposed: {exposed:?}"
        );
    }
}

/// A YAML file as JSON, converted by the test Python (PyYAML).
fn yaml_as_json(path: &Path) -> serde_json::Value {
    let output = Command::new(as2_testkit::python())
        .arg("-c")
        .arg("import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} is not valid YAML: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
