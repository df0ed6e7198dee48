//! The I/O part of the inbound path with fakes of its dependencies: no network, no
//! Redis (the in-memory dedup store), no Kafka, a stand-in for the CMS/MIME unwrap.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use as2_common::redis::KeyNamespace;
use as2_protocol::As2Error;
use as2_protocol::ReceivedContentMic;
use as2_protocol::unwrap::{Payload, PayloadInfo, PayloadSink, SecurityFacts};
use as2_rpc::mdn::v1::{EnqueueMdnDeliveryRequest, EnqueueMdnDeliveryResponse};
use as2_rpc::routing::v1::Partnership;
use as2_rpc::sender::v1::{ReconcileMdnRequest, ReconcileMdnResponse};
use as2_rpc::tonic::Status;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::*;
use crate::clients::{PartnershipEvents, PartnershipRegistry};
use crate::dedup::DedupTimes;
use crate::kafka::{Placement, PublishError, Search, StoredRecord};

/// The publish window of the test processor: short, so a resend that must wait for an
/// earlier attempt's window does not slow the tests down.
const TEST_PUBLISH_WINDOW: Duration = Duration::from_millis(300);

// Shared with the decision tests (`decision::tests`).
pub(super) const RETRY_AFTER_SECS: u64 = 42;
pub(super) const MDN_URL: &str = "https://partner.example/as2/mdn";
/// The AS2 headers of every test message; a test adds the MDN options it needs.
pub(super) const REQUEST_HEADERS: [(&str, &str); 4] = [
    ("AS2-From", "partner"),
    ("AS2-To", "us"),
    ("Message-ID", "<m-1@partner.example>"),
    (
        "Content-Type",
        "application/pkcs7-mime; smime-type=enveloped-data",
    ),
];

/// The routing service: one partnership, or down.
struct FakeRegistry {
    partnership: Option<Partnership>,
    down: bool,
    lookups: AtomicUsize,
}

impl PartnershipRegistry for FakeRegistry {
    fn resolve(
        &self,
        _as2_from: &str,
        _as2_to: &str,
    ) -> BoxFuture<'_, Result<Option<Partnership>, Status>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = if self.down {
            Err(Status::unavailable("routing is down"))
        } else {
            Ok(self.partnership.clone())
        };
        Box::pin(async move { answer })
    }

    fn watch(&self) -> BoxFuture<'_, Result<PartnershipEvents, Status>> {
        Box::pin(async { Err(Status::unimplemented("no change stream in tests")) })
    }
}

/// Kafka: records what it is given; refuses while `down`. With `lose_acks` it stores the
/// record but answers as a publish timeout would (the acknowledgement was lost).
#[derive(Default)]
struct FakeSink {
    down: AtomicBool,
    lose_acks: AtomicBool,
    published: Mutex<Vec<(String, String, Vec<u8>)>>,
    /// The message key digest of each published record, by offset.
    digests: Mutex<Vec<String>>,
    searches: AtomicUsize,
}

impl FakeSink {
    fn published(&self) -> Vec<(String, String, Vec<u8>)> {
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn timed_out() -> PublishError {
    PublishError::Unavailable(KafkaError::MessageProduction(
        RDKafkaErrorCode::MessageTimedOut,
    ))
}

impl DocumentSink for FakeSink {
    fn publish<'a>(
        &'a self,
        record: OutgoingRecord<'a>,
    ) -> BoxFuture<'a, Result<StoredRecord, PublishError>> {
        let answer = if self.down.load(Ordering::SeqCst) {
            Err(timed_out())
        } else {
            let header = |name: &str| {
                record
                    .headers
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map_or("", |(_, value)| value.as_str())
            };
            let digest = MessageKey {
                as2_from: header(record::HEADER_AS2_FROM),
                as2_to: header(record::HEADER_AS2_TO),
                message_id: header(record::HEADER_MESSAGE_ID),
            }
            .digest();
            let mut published = self
                .published
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            published.push((
                record.topic.to_owned(),
                record.key.to_owned(),
                record.payload.to_vec(),
            ));
            self.digests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(digest);
            let offset = i64::try_from(published.len()).unwrap_or(i64::MAX) - 1;
            if self.lose_acks.load(Ordering::SeqCst) {
                Err(timed_out())
            } else {
                Ok(StoredRecord {
                    partition: 0,
                    offset,
                })
            }
        };
        Box::pin(async move { answer })
    }

    fn place<'a>(
        &'a self,
        _topic: &'a str,
        _key: &'a str,
    ) -> BoxFuture<'a, Result<Placement, PublishError>> {
        let end = self
            .digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        let placement = Placement {
            partition: 0,
            scan_from: i64::try_from(end).unwrap_or(i64::MAX),
        };
        Box::pin(async move { Ok(placement) })
    }

    fn find<'a>(
        &'a self,
        _topic: &'a str,
        _partition: i32,
        from: i64,
        message: &'a MessageKey<'a>,
    ) -> BoxFuture<'a, Result<Search, PublishError>> {
        self.searches.fetch_add(1, Ordering::SeqCst);
        let digest = message.digest();
        let digests = self
            .digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = usize::try_from(from).unwrap_or(usize::MAX);
        let found = digests
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, candidate)| **candidate == digest)
            .map(|(offset, _)| StoredRecord {
                partition: 0,
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
            });
        let end = i64::try_from(digests.len()).unwrap_or(i64::MAX);
        let answer = if self.down.load(Ordering::SeqCst) {
            Err(timed_out())
        } else {
            Ok(found.map_or(Search::Absent { end }, Search::Found))
        };
        Box::pin(async move { answer })
    }
}

/// The MDN service: records the hand-overs; refuses while `down`.
#[derive(Default)]
struct FakeMdnQueue {
    down: AtomicBool,
    enqueued: Mutex<Vec<EnqueueMdnDeliveryRequest>>,
}

impl FakeMdnQueue {
    fn enqueued(&self) -> Vec<EnqueueMdnDeliveryRequest> {
        self.enqueued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl MdnDeliveryQueue for FakeMdnQueue {
    fn enqueue(
        &self,
        request: EnqueueMdnDeliveryRequest,
    ) -> BoxFuture<'_, Result<EnqueueMdnDeliveryResponse, Status>> {
        let answer = if self.down.load(Ordering::SeqCst) {
            Err(Status::unavailable("mdn service is down"))
        } else {
            self.enqueued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(request);
            Ok(EnqueueMdnDeliveryResponse {
                delivery_id: "d-1".to_owned(),
                already_enqueued: false,
            })
        };
        Box::pin(async move { answer })
    }
}

/// The sender: answers every MDN with `answer`.
struct FakeReconciler {
    answer: fn() -> Result<ReconcileMdnResponse, Status>,
    calls: AtomicUsize,
}

impl MdnReconciler for FakeReconciler {
    fn reconcile(
        &self,
        _request: ReconcileMdnRequest,
    ) -> BoxFuture<'_, Result<ReconcileMdnResponse, Status>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = (self.answer)();
        Box::pin(async move { answer })
    }
}

fn unwrapped() -> UnwrappedMessage {
    UnwrappedMessage {
        payload: Payload {
            content_type: "application/edi-x12".to_owned(),
            filename: Some("order.edi".to_owned()),
            data: b"ISA*00*~".to_vec(),
        },
        facts: SecurityFacts::default(),
        mic: ReceivedContentMic {
            digest: vec![7; 32],
            algorithm: MicAlgorithm::Sha256,
        },
    }
}

/// The fake unwrap: reads the body, hands over [`unwrapped`]'s document.
fn unwrap_succeeds(
    _headers: &As2RequestHeaders,
    chunks: &mut dyn Iterator<Item = Bytes>,
    _context: &UnwrapContext<'_>,
    spool: &mut DocumentSpool,
) -> Result<StreamedMessage, As2Error> {
    chunks.for_each(drop);
    let message = unwrapped();
    let info = PayloadInfo {
        content_type: message.payload.content_type,
        filename: message.payload.filename,
    };
    spool.start(&info)?;
    spool.write(&message.payload.data)?;
    Ok(StreamedMessage {
        payload: info,
        payload_size: message.payload.data.len() as u64,
        facts: message.facts,
        mic: message.mic,
    })
}

fn unwrap_finds_a_bad_signature(
    _headers: &As2RequestHeaders,
    chunks: &mut dyn Iterator<Item = Bytes>,
    _context: &UnwrapContext<'_>,
    _spool: &mut DocumentSpool,
) -> Result<StreamedMessage, As2Error> {
    chunks.for_each(drop);
    Err(As2Error::AuthenticationFailed(
        "the signature does not verify".to_owned(),
    ))
}

fn unwrap_finds_corrupt_compression(
    _headers: &As2RequestHeaders,
    chunks: &mut dyn Iterator<Item = Bytes>,
    _context: &UnwrapContext<'_>,
    _spool: &mut DocumentSpool,
) -> Result<StreamedMessage, As2Error> {
    chunks.for_each(drop);
    Err(As2Error::DecompressionFailed(
        "the compressed data is corrupt".to_owned(),
    ))
}

fn unwrap_panics(
    _headers: &As2RequestHeaders,
    _chunks: &mut dyn Iterator<Item = Bytes>,
    _context: &UnwrapContext<'_>,
    _spool: &mut DocumentSpool,
) -> Result<StreamedMessage, As2Error> {
    panic!("a bug in our unwrap")
}

fn partnership() -> Partnership {
    Partnership {
        id: "p-1".to_owned(),
        as2_from: "partner".to_owned(),
        as2_to: "us".to_owned(),
        kafka_topic: "inbound.p-1".to_owned(),
        ..Partnership::default()
    }
}

struct Edge {
    processor: InboundProcessor,
    registry: Arc<FakeRegistry>,
    sink: Arc<FakeSink>,
    mdn_service: Arc<FakeMdnQueue>,
    metrics: Registry,
}

struct EdgeSetup {
    partnership: Option<Partnership>,
    routing_down: bool,
    mdn_service: bool,
    reconciler: Option<Arc<FakeReconciler>>,
    unwrap_message: UnwrapFn,
    memory_budget: usize,
}

impl Default for EdgeSetup {
    fn default() -> Self {
        Self {
            partnership: Some(partnership()),
            routing_down: false,
            mdn_service: true,
            reconciler: None,
            unwrap_message: unwrap_succeeds,
            memory_budget: 64 * 1024 * 1024,
        }
    }
}

fn edge(setup: EdgeSetup) -> Edge {
    let mut metrics = Registry::default();
    let edge_metrics = Arc::new(EdgeMetrics::register(&mut metrics));
    let registry = Arc::new(FakeRegistry {
        partnership: setup.partnership,
        down: setup.routing_down,
        lookups: AtomicUsize::new(0),
    });
    let sink = Arc::new(FakeSink::default());
    let mdn_service = Arc::new(FakeMdnQueue::default());
    let mut settings = InboundConfig::defaults();
    settings.retry_after_secs = RETRY_AFTER_SECS;
    let namespace = KeyNamespace::new("edge-test").expect("a valid namespace");
    let processor = InboundProcessor {
        settings,
        routes: RouteCache::with_registry(
            registry.clone(),
            Duration::from_secs(60),
            edge_metrics.clone(),
        ),
        // No keys: the tests ask for unsigned MDNs and decryption is faked.
        keys: Arc::new(KeyStore::new("/nonexistent/edge-test-keys")),
        default_decryption_key_id: None,
        default_signing_key_id: None,
        dedup: DedupStore::in_memory(
            namespace,
            DedupTimes {
                lease: Duration::from_secs(60),
                publish_window: TEST_PUBLISH_WINDOW,
                retention: Duration::from_secs(600),
            },
        ),
        publisher: sink.clone(),
        mdn_delivery: setup
            .mdn_service
            .then(|| mdn_service.clone() as Arc<dyn MdnDeliveryQueue>),
        metrics: edge_metrics,
        mdn_reconciler: setup
            .reconciler
            .map(|reconciler| reconciler as Arc<dyn MdnReconciler>),
        unwrap_message: setup.unwrap_message,
        documents: DocumentStorage::inline_only(1024 * 1024, setup.memory_budget),
        background: TaskTracker::new(),
    };
    Edge {
        processor,
        registry,
        sink,
        mdn_service,
        metrics,
    }
}

impl Edge {
    fn metric(&self, series: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics)
            .expect("metrics encode");
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn headers_of(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    message(extra).headers
}

fn message(extra: &[(&str, &str)]) -> InboundRequest {
    let mut headers = REQUEST_HEADERS.to_vec();
    headers.extend_from_slice(extra);
    InboundRequest {
        admitted: None,
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        body: Bytes::from_static(b"the encrypted message").into(),
    }
}

pub(super) const SYNC_MDN: (&str, &str) =
    ("Disposition-Notification-To", "mailto:as2@partner.example");
pub(super) const ASYNC_MDN: (&str, &str) = ("Receipt-Delivery-Option", MDN_URL);

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

fn assert_retry_later(answer: &Answer) {
    assert_eq!(answer.status, 503, "{}", body(answer));
    assert_eq!(
        header(answer, "Retry-After"),
        Some(RETRY_AFTER_SECS.to_string().as_str())
    );
}

fn assert_mdn(answer: &Answer, disposition: &str) {
    assert_eq!(answer.status, 200, "{}", body(answer));
    let content_type = header(answer, "Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/report"),
        "not an MDN: {content_type}"
    );
    assert!(
        body(answer).contains(disposition),
        "the MDN does not say {disposition}: {}",
        body(answer)
    );
}

#[tokio::test]
async fn routing_unavailable_answers_503_with_retry_after_and_publishes_nothing() {
    let edge = edge(EdgeSetup {
        routing_down: true,
        ..EdgeSetup::default()
    });
    let answer = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_retry_later(&answer);
    assert!(body(&answer).contains("partnership registry is unavailable"));
    assert_eq!(edge.registry.lookups.load(Ordering::SeqCst), 1);
    assert!(edge.sink.published().is_empty());
    assert_eq!(
        edge.metric(r#"as2_edge_messages_total{outcome="unavailable",disposition="none"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_processed_message_is_published_once_and_a_resend_gets_the_same_mdn() {
    let edge = edge(EdgeSetup::default());
    let first = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_mdn(&first, "automatic-action/MDN-sent-automatically; processed");
    assert_eq!(
        edge.sink.published(),
        vec![(
            "inbound.p-1".to_owned(),
            "p-1".to_owned(),
            b"ISA*00*~".to_vec()
        )]
    );
    let resend = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_eq!(resend, first);
    assert_eq!(edge.sink.published().len(), 1);
    // Cached: the second message did not ask the routing service again.
    assert_eq!(edge.registry.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(
        edge.metric(r#"as2_edge_messages_total{outcome="duplicate",disposition="processed"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_processed_message_without_an_mdn_request_is_answered_200_and_published() {
    let edge = edge(EdgeSetup::default());
    let answer = edge.processor.process(message(&[])).await;
    // The receipt is built all the same: it is what a resend gets.
    assert_eq!(answer.status, 200, "{}", body(&answer));
    assert_eq!(edge.sink.published().len(), 1);
}

#[tokio::test]
async fn a_publish_whose_acknowledgement_was_lost_is_found_by_the_resend_and_not_repeated() {
    let edge = edge(EdgeSetup::default());
    edge.sink.lose_acks.store(true, Ordering::SeqCst);
    let first = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_retry_later(&first);
    assert_eq!(edge.sink.published().len(), 1, "the broker stored it");

    edge.sink.lose_acks.store(false, Ordering::SeqCst);
    let resend = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_eq!(resend.status, 200, "{}", body(&resend));
    assert!(body(&resend).contains("processed"), "{}", body(&resend));
    assert_eq!(edge.sink.published().len(), 1, "found, not published again");
    assert_eq!(edge.sink.searches.load(Ordering::SeqCst), 1);
    // The receipt is stored now: a third send is a plain duplicate.
    let third = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_eq!(third.status, 200);
    assert_eq!(edge.sink.published().len(), 1);
    assert_eq!(edge.sink.searches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_publish_that_timed_out_unwritten_is_published_by_the_resend_after_its_window() {
    let edge = edge(EdgeSetup::default());
    edge.sink.down.store(true, Ordering::SeqCst);
    let first = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_retry_later(&first);
    assert!(edge.sink.published().is_empty());

    edge.sink.down.store(false, Ordering::SeqCst);
    let resent_at = std::time::Instant::now();
    let resend = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_eq!(resend.status, 200, "{}", body(&resend));
    assert_eq!(edge.sink.published().len(), 1);
    // Nothing found at first; it waited for what was left of the window and looked again.
    assert_eq!(edge.sink.searches.load(Ordering::SeqCst), 2);
    assert!(resent_at.elapsed() < TEST_PUBLISH_WINDOW + Duration::from_secs(1));
}

#[tokio::test]
async fn mdn_enqueue_failing_answers_503_and_the_resend_hands_it_over_without_publishing_again() {
    let edge = edge(EdgeSetup::default());
    edge.mdn_service.down.store(true, Ordering::SeqCst);
    let first = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_retry_later(&first);
    assert!(body(&first).contains("MDN service is unavailable"));
    assert_eq!(edge.sink.published().len(), 1, "published before the MDN");

    edge.mdn_service.down.store(false, Ordering::SeqCst);
    let resend = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_eq!(resend.status, 200, "{}", body(&resend));
    assert!(body(&resend).contains("the MDN follows asynchronously"));
    assert_eq!(
        edge.sink.published().len(),
        1,
        "the resend publishes nothing"
    );
    let enqueued = edge.mdn_service.enqueued();
    assert_eq!(enqueued.len(), 1);
    assert_eq!(enqueued[0].delivery_url, MDN_URL);
    assert_eq!(enqueued[0].partnership_id, "p-1");
    assert_eq!(enqueued[0].original_message_id, "<m-1@partner.example>");

    // Handed over: a third send is answered from the store without the MDN service.
    edge.mdn_service.down.store(true, Ordering::SeqCst);
    let third = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_eq!(third, resend);
    assert_eq!(edge.mdn_service.enqueued().len(), 1);
}

#[tokio::test]
async fn an_async_mdn_without_an_mdn_service_answers_503_before_anything_is_published() {
    let edge = edge(EdgeSetup {
        mdn_service: false,
        ..EdgeSetup::default()
    });
    let answer = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_retry_later(&answer);
    assert!(edge.sink.published().is_empty());
}

#[tokio::test]
async fn kafka_unavailable_answers_503_and_releases_the_claim_for_the_resend() {
    let edge = edge(EdgeSetup::default());
    edge.sink.down.store(true, Ordering::SeqCst);
    let first = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_retry_later(&first);
    assert!(body(&first).contains("document store is unavailable"));

    edge.sink.down.store(false, Ordering::SeqCst);
    let resend = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_mdn(&resend, "processed");
    assert_eq!(edge.sink.published().len(), 1);
}

#[tokio::test]
async fn a_bad_message_gets_an_error_mdn_and_nothing_is_published() {
    let edge = edge(EdgeSetup {
        unwrap_message: unwrap_finds_a_bad_signature,
        ..EdgeSetup::default()
    });
    let answer = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_mdn(&answer, "processed/error: authentication-failed");
    assert!(edge.sink.published().is_empty());

    let without_mdn = edge.processor.process(message(&[])).await;
    assert_eq!(without_mdn.status, 400);
    assert!(body(&without_mdn).contains("the signature does not verify"));
    assert_eq!(
        edge.metric(
            r#"as2_edge_messages_total{outcome="rejected",disposition="authentication-failed"}"#
        ),
        2.0
    );
}

/// A message asking for an async MDN, processed by an edge set up as `setup`, gets an
/// error MDN with `disposition` in the response: nothing is enqueued or published.
async fn assert_error_mdn_in_the_response(setup: EdgeSetup, disposition: &str) {
    let edge = edge(setup);
    let answer = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_mdn(&answer, disposition);
    assert!(edge.mdn_service.enqueued().is_empty());
    assert!(edge.sink.published().is_empty());
}

#[tokio::test]
async fn a_message_whose_signature_fails_gets_its_error_mdn_in_the_response_not_at_its_url() {
    let setup = EdgeSetup {
        unwrap_message: unwrap_finds_a_bad_signature,
        ..EdgeSetup::default()
    };
    assert_error_mdn_in_the_response(setup, "processed/error: authentication-failed").await;
}

#[tokio::test]
async fn a_bad_message_asking_for_an_async_mdn_gets_the_error_mdn_enqueued() {
    let edge = edge(EdgeSetup {
        unwrap_message: unwrap_finds_corrupt_compression,
        ..EdgeSetup::default()
    });
    let answer = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_eq!(answer.status, 200);
    assert!(body(&answer).contains("error MDN queued"));
    let enqueued = edge.mdn_service.enqueued();
    assert_eq!(enqueued.len(), 1);
    assert!(edge.sink.published().is_empty());

    edge.mdn_service.down.store(true, Ordering::SeqCst);
    let refused = edge
        .processor
        .process(message(&[SYNC_MDN, ASYNC_MDN]))
        .await;
    assert_retry_later(&refused);
}

#[tokio::test]
async fn an_unknown_partner_gets_the_error_mdn_in_the_response_even_when_async_is_asked() {
    let setup = EdgeSetup {
        partnership: None,
        ..EdgeSetup::default()
    };
    assert_error_mdn_in_the_response(setup, "processed/error: unknown-trading-partner").await;
}

#[tokio::test]
async fn missing_as2_headers_answer_400_without_asking_anyone() {
    let edge = edge(EdgeSetup::default());
    let mut request = message(&[SYNC_MDN]);
    request
        .headers
        .retain(|(name, _)| !name.eq_ignore_ascii_case("AS2-From"));
    let answer = edge.processor.process(request).await;
    assert_eq!(answer.status, 400);
    assert!(body(&answer).contains("AS2-From"));
    assert_eq!(edge.registry.lookups.load(Ordering::SeqCst), 0);
}

fn partner_mdn() -> InboundRequest {
    InboundRequest {
        admitted: None,
        headers: vec![
            ("AS2-From".to_owned(), "partner".to_owned()),
            ("AS2-To".to_owned(), "us".to_owned()),
            (
                "Content-Type".to_owned(),
                "multipart/report; report-type=disposition-notification; boundary=b".to_owned(),
            ),
        ],
        body: Bytes::from_static(b"--b--\r\n").into(),
    }
}

#[tokio::test]
async fn partner_mdns_go_to_the_sender() {
    let reconciler = Arc::new(FakeReconciler {
        answer: || Ok(ReconcileMdnResponse::default()),
        calls: AtomicUsize::new(0),
    });
    let edge_with_sender = edge(EdgeSetup {
        reconciler: Some(reconciler.clone()),
        ..EdgeSetup::default()
    });
    let answer = edge_with_sender.processor.process(partner_mdn()).await;
    assert_eq!(answer.status, 200);
    assert_eq!(reconciler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(edge_with_sender.registry.lookups.load(Ordering::SeqCst), 0);

    let not_awaited = Arc::new(FakeReconciler {
        answer: || Err(Status::not_found("no message awaits this MDN")),
        calls: AtomicUsize::new(0),
    });
    let edge_not_awaited = edge(EdgeSetup {
        reconciler: Some(not_awaited),
        ..EdgeSetup::default()
    });
    assert_eq!(
        edge_not_awaited
            .processor
            .process(partner_mdn())
            .await
            .status,
        404
    );

    let sender_down = Arc::new(FakeReconciler {
        answer: || Err(Status::unavailable("sender is down")),
        calls: AtomicUsize::new(0),
    });
    let edge_sender_down = edge(EdgeSetup {
        reconciler: Some(sender_down),
        ..EdgeSetup::default()
    });
    assert_retry_later(&edge_sender_down.processor.process(partner_mdn()).await);

    let edge_without_sender = edge(EdgeSetup::default());
    assert_retry_later(&edge_without_sender.processor.process(partner_mdn()).await);
}

#[tokio::test]
async fn a_panic_in_our_unwrap_answers_503_with_retry_after_not_an_error_mdn() {
    let edge = edge(EdgeSetup {
        unwrap_message: unwrap_panics,
        ..EdgeSetup::default()
    });
    let answer = edge.processor.process(message(&[SYNC_MDN])).await;
    assert_retry_later(&answer);
    assert!(body(&answer).contains("internal failure while unwrapping"));
    assert!(!body(&answer).contains("processed/error"));
    assert!(edge.sink.published().is_empty());
    assert_eq!(
        edge.metric(r#"as2_edge_messages_total{outcome="unavailable",disposition="none"}"#),
        1.0
    );
    assert_eq!(
        edge.metric(
            r#"as2_edge_messages_total{outcome="rejected",disposition="unexpected-processing-error"}"#
        ),
        0.0
    );

    // Not claimed: once the bug is gone, the resend is processed.
    let fixed = Edge {
        processor: InboundProcessor {
            unwrap_message: unwrap_succeeds,
            ..edge.processor
        },
        ..edge
    };
    let resend = fixed.processor.process(message(&[SYNC_MDN])).await;
    assert_mdn(&resend, "processed");
    assert_eq!(fixed.sink.published().len(), 1);
}

#[tokio::test]
async fn preflight_answers_what_the_headers_decide_and_leaves_the_rest_to_the_body() {
    // Unknown pair: the error MDN, without a body.
    let unknown = edge(EdgeSetup {
        partnership: None,
        ..EdgeSetup::default()
    });
    let request = message(&[SYNC_MDN]);
    let Preflight::Answered(answer) = unknown.processor.preflight(&request.headers).await else {
        panic!("an unknown pair is answered from the headers");
    };
    assert_mdn(&answer, "processed/error: unknown-trading-partner");
    assert!(unknown.sink.published().is_empty());

    // Routing down: 503 before the body.
    let down = edge(EdgeSetup {
        routing_down: true,
        ..EdgeSetup::default()
    });
    let Preflight::Answered(answer) = down.processor.preflight(&request.headers).await else {
        panic!("routing down is answered from the headers");
    };
    assert_retry_later(&answer);

    // Missing AS2 headers: 400 without a lookup.
    let known = edge(EdgeSetup::default());
    let mut headers = request.headers.clone();
    headers.retain(|(name, _)| !name.eq_ignore_ascii_case("AS2-To"));
    let Preflight::Answered(answer) = known.processor.preflight(&headers).await else {
        panic!("missing AS2 headers are answered from the headers");
    };
    assert_eq!(answer.status, 400);
    assert_eq!(known.registry.lookups.load(Ordering::SeqCst), 0);

    // A known partnership: the body is needed, and then processed as before.
    let Preflight::ReadBody(admitted) = known.processor.preflight(&request.headers).await else {
        panic!("a known partnership needs the body");
    };
    let processed = known
        .processor
        .process(InboundRequest {
            admitted: Some(admitted),
            ..request
        })
        .await;
    assert_eq!(
        known.registry.lookups.load(Ordering::SeqCst),
        1,
        "the partnership is looked up once per message"
    );
    assert_mdn(
        &processed,
        "automatic-action/MDN-sent-automatically; processed",
    );
    assert_eq!(known.sink.published().len(), 1);

    // What may be a partner's MDN is told apart by the start of its body, in the HTTP
    // layer, before the preflight.
    assert!(crate::partner_mdn::may_be_mdn(&partner_mdn().headers));

    // A spent memory budget: 503 before the body.
    let spent = edge(EdgeSetup {
        memory_budget: 1024,
        ..EdgeSetup::default()
    });
    let Preflight::Answered(answer) = spent.processor.preflight(&headers_of(&[SYNC_MDN])).await
    else {
        panic!("a spent budget is answered from the headers");
    };
    assert_retry_later(&answer);
    assert_eq!(spent.metric("as2_edge_memory_budget_exhausted_total "), 1.0);
}
