//! Partners whose MDNs must not be believed: a signature by another key, a MIC that is
//! not the one of the message sent, and an asynchronous MDN that is forged and then
//! never followed by a real one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use as2_protocol::cms::Identity;
use as2_protocol::mdn::{self, Disposition, DispositionStatus, MdnReport, MdnToSend};
use as2_protocol::{As2Id, MessageId, MicAlgorithm, ReceivedContentMic};
use as2_rpc::routing::v1::{MdnMode, OutboundSettings};
use as2_rpc::sender::v1::outbound_service_client::OutboundServiceClient;
use as2_rpc::sender::v1::{HeaderField, ReconcileMdnRequest};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::KeyMaterial;
use support::{OutboundStack, RunningSender};

/// How the fake partner answers.
#[derive(Clone, Copy)]
enum Answer {
    /// A sync MDN signed by `signer`, with the MIC of the body or of something else.
    SyncMdn { right_mic: bool },
    /// 200 and nothing else (the MDN would come asynchronously).
    Accepted,
}

fn identity(key: &KeyMaterial) -> Identity {
    Identity::from_pem(key.key_pem.as_bytes(), key.cert_pem.as_bytes(), None).unwrap()
}

fn build_mdn(
    signer: &Identity,
    message_id: &str,
    mic_content: &[u8],
) -> (Vec<(String, String)>, Vec<u8>) {
    let report = MdnReport {
        reporting_ua: "fake partner".to_owned(),
        original_recipient: None,
        final_recipient: "rfc822; fake partner".to_owned(),
        original_message_id: message_id.to_owned(),
        disposition: Disposition::automatic(DispositionStatus::Processed),
        received_content_mic: Some(
            ReceivedContentMic::compute(MicAlgorithm::Sha256, mic_content).unwrap(),
        ),
    };
    let built = mdn::build_mdn(&MdnToSend {
        as2_from: &As2Id::new("fake partner").unwrap(),
        as2_to: &As2Id::new(support::GATEWAY_ID).unwrap(),
        message_id: &MessageId::generate("fake.partner").unwrap(),
        text: "received",
        report: &report,
        signing: Some((signer, MicAlgorithm::Sha256)),
    })
    .unwrap();
    (built.headers, built.body)
}

/// Serves `answer` on a loopback port; returns the URL.
async fn fake_partner(signer: Identity, answer: Answer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/as2", listener.local_addr().unwrap());
    let signer = Arc::new(signer);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let signer = signer.clone();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let signer = signer.clone();
                async move {
                    let message_id = request
                        .headers()
                        .get("message-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let mut response = http::Response::builder().status(200);
                    let body = match answer {
                        Answer::Accepted => Bytes::from_static(b"accepted"),
                        Answer::SyncMdn { right_mic } => {
                            let mic_content: &[u8] = if right_mic {
                                &body
                            } else {
                                b"some other document"
                            };
                            let (headers, mdn) = build_mdn(&signer, &message_id, mic_content);
                            for (name, value) in headers {
                                response = response.header(name, value);
                            }
                            Bytes::from(mdn)
                        }
                    };
                    Ok::<_, Infallible>(response.body(Full::new(body)).unwrap())
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    url
}

/// Unsigned, unencrypted messages: the MIC is over the body as sent.
fn plain_sync() -> OutboundSettings {
    OutboundSettings {
        mdn_mode: MdnMode::Sync.into(),
        request_signed_mdn: true,
        timeout_seconds: 10,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mdn_signed_by_another_key_or_with_a_wrong_mic_is_a_failed_receipt() {
    let stack = OutboundStack::start().await;
    let partner = KeyMaterial::generate("fake partner");
    let impostor = KeyMaterial::generate("impostor");
    let forged_url = fake_partner(identity(&impostor), Answer::SyncMdn { right_mic: true }).await;
    stack
        .partnership(
            "forged",
            "fake partner",
            &partner.cert_pem,
            &forged_url,
            plain_sync(),
        )
        .await;
    let wrong_mic_url =
        fake_partner(identity(&partner), Answer::SyncMdn { right_mic: false }).await;
    stack
        .partnership(
            "wrong-mic",
            "fake partner 2",
            &partner.cert_pem,
            &wrong_mic_url,
            plain_sync(),
        )
        .await;
    let honest_url = fake_partner(identity(&partner), Answer::SyncMdn { right_mic: true }).await;
    stack
        .partnership(
            "honest",
            "fake partner 3",
            &partner.cert_pem,
            &honest_url,
            plain_sync(),
        )
        .await;
    let sender = RunningSender::start(stack.sender_config()).await;
    for id in ["forged", "wrong-mic", "honest"] {
        stack.produce(id, "po.edi", b"ISA*po~").await;
    }
    let receipts = stack.receipts(3, Duration::from_secs(1)).await;
    let receipt = |id: &str| {
        receipts
            .iter()
            .find(|receipt| receipt["partnership_id"] == id)
            .unwrap()
            .clone()
    };
    let forged = receipt("forged");
    assert_eq!(forged["outcome"], "failed", "{forged:#}");
    assert!(
        forged["reason"].as_str().unwrap().contains("not authentic"),
        "{forged:#}"
    );
    assert!(
        forged["mdn"]["body_base64"].is_string(),
        "the refused MDN is kept: {forged:#}"
    );
    let wrong_mic = receipt("wrong-mic");
    assert_eq!(wrong_mic["outcome"], "failed", "{wrong_mic:#}");
    assert!(
        wrong_mic["reason"]
            .as_str()
            .unwrap()
            .contains("does not match the MIC"),
        "{wrong_mic:#}"
    );
    let honest = receipt("honest");
    assert_eq!(honest["outcome"], "delivered", "{honest:#}");
    assert_eq!(honest["mic_verified"], true);
    sender.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_async_mdn_is_refused_and_a_missing_one_fails_after_the_timeout() {
    let stack = OutboundStack::start().await;
    let partner = KeyMaterial::generate("async partner");
    let url = fake_partner(identity(&partner), Answer::Accepted).await;
    stack
        .partnership(
            "async",
            "async partner",
            &partner.cert_pem,
            &url,
            OutboundSettings {
                mdn_mode: MdnMode::Async.into(),
                async_mdn_url: "http://127.0.0.1:1/as2".to_owned(),
                ..plain_sync()
            },
        )
        .await;
    let mut config = stack.sender_config();
    config.sending.async_mdn_timeout_secs = 4;
    let sender = RunningSender::start(config).await;
    stack.produce("async", "po.edi", b"ISA*po~").await;

    // Find the pending message's id in Redis, then forge its MDN with another key.
    let client = redis::Client::open(stack.redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut message_id = String::new();
    for _ in 0..80 {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg("out:{sender}:awaiting-mdn")
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .unwrap();
        if let Some(id) = ids.first() {
            message_id = redis::cmd("HGET")
                .arg(format!("out:{{sender}}:message:{id}"))
                .arg("message_id")
                .query_async(&mut connection)
                .await
                .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!message_id.is_empty(), "the message never awaited its MDN");
    // Signed by another key (and from another AS2 id): refused, the message keeps waiting.
    let (headers, body) = build_mdn(
        &identity(&KeyMaterial::generate("impostor")),
        &message_id,
        b"ISA*po~",
    );
    let mut api = OutboundServiceClient::connect(sender.grpc_url.clone())
        .await
        .unwrap();
    let status = api
        .reconcile_mdn(ReconcileMdnRequest {
            headers: headers
                .into_iter()
                .map(|(name, value)| HeaderField { name, value })
                .collect(),
            body,
            traceparent: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        as2_rpc::tonic::Code::PermissionDenied,
        "{status:?}"
    );

    let receipts = stack.receipts(1, Duration::from_secs(1)).await;
    let receipt = &receipts[0];
    assert_eq!(receipt["outcome"], "failed", "{receipt:#}");
    assert_eq!(receipt["message_id"], message_id.as_str());
    let reason = receipt["reason"].as_str().unwrap();
    assert!(reason.contains("no MDN arrived within 4 s"), "{reason}");
    assert!(reason.contains("the last MDN was refused"), "{reason}");
    sender.stop().await;
}
