//! The inbound path, in order: read the AS2 headers, resolve the partnership, unwrap
//! (decrypt, decompress, verify, decompress), enforce the partnership's policy, claim
//! the message against duplicates, build the MDN, publish the document and wait for the
//! broker's acknowledgement, and only then answer with the MDN.
//!
//! What the partner gets back:
//!
//! | situation | answer |
//! |---|---|
//! | AS2-From, AS2-To or Message-ID missing or malformed | 400 with the reason, no MDN |
//! | the message itself is bad (signature, decryption, policy, ...) | 200 with an error MDN (`processed/error: ...` or `failed/Failure: ...`), nothing published |
//! | unknown (AS2-From, AS2-To) pair | 200 with an error MDN (`unknown-trading-partner`), in the response even when an asynchronous MDN was asked for: we do not call out to URLs of parties we do not know; never signed: no private-key work for strangers |
//! | processed | 200 with the sync MDN, or 200 and the MDN handed to the MDN service |
//! | processed before (same Message-ID) | the stored answer again, nothing published |
//! | published by an earlier attempt that could not answer (its edge crashed, or the acknowledgement was lost) | found in its partition ([`crate::dedup`]): a processed MDN, nothing published again |
//! | the same Message-ID is being processed right now | 503 with Retry-After (at most the time left on the holder's lease) |
//! | Redis, Kafka, the routing or MDN service unavailable | 503 with Retry-After, nothing acknowledged |
//! | our own unwrap failed (the CMS/MIME task panicked) | 503 with Retry-After, no MDN: our fault, not the message's (logged at error level, counted as `unavailable`) |
//! | no MDN asked for, message bad | 400 with the reason |
//!
//! ## Decision and I/O
//!
//! The path is split in two, as the sender splits `message` and `outbound`:
//!
//! - [`decision`] decides, without any I/O: which answer, which status, which
//!   disposition or error MDN, whether to publish, what to keep for duplicate detection.
//!   Each of its functions takes what one step found and says what to do next
//!   ([`decision::DecisionSettings::admit`] after the partnership lookup,
//!   [`decision::DecisionSettings::judge`] after the unwrap, [`decision::after_claim`],
//!   [`decision::after_publish`], [`decision::MdnPlan::reply`] once the MDN is built).
//! - [`InboundProcessor`] does the I/O around it: the partnership lookup ([`RouteCache`]
//!   over a [`crate::clients::PartnershipRegistry`]), loading our keys, the unwrap on the
//!   blocking pool ([`InboundProcessor::unwrap_message`]), the dedup store, the publish
//!   ([`DocumentSink`]), building and signing the MDN and handing asynchronous MDNs to
//!   the MDN service ([`crate::clients::MdnDeliveryQueue`]). Every dependency is a trait
//!   object, a function or has an in-memory form, so the whole path runs in tests
//!   without a network.
//!
//! The decisions are tested by one table (a row per row above, plus the edge cases),
//! the I/O part with fakes of its dependencies; the real Redis, Kafka and partner
//! implementations are exercised by the integration tests under `tests/`.

use std::sync::Arc;
use std::time::Instant;

use as2_protocol::cms::Identity;
use as2_protocol::headers::{As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mdn::{self, BuiltMdn, MdnToSend};
use std::sync::atomic::{AtomicU64, Ordering};

use as2_protocol::unwrap::{
    Limits, Payload, StreamedMessage, StreamingUnwrap, UnwrapContext, UnwrappedMessage,
};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use as2_store::archive::ArchiveEntry;

use crate::archive::ArchiveUpload;
use crate::document::{DocumentSpool, DocumentStorage, Reservation, SpoolFailure, SpooledDocument};

use crate::clients::{MdnDeliveryQueue, MdnReconciler};
use crate::config::InboundConfig;
use crate::dedup::{
    ClaimToken, DedupStore, EarlierAttempt, MessageKey, PendingAsyncMdn, PublishAttempt,
    StoredReceipt,
};
use crate::kafka::{DocumentSink, OutgoingRecord, PublishError, Search, StoredRecord};
use crate::keys::{KeyPair, KeyStore};
use crate::metrics::{EdgeMetrics, Outcome};
use crate::record;
use crate::routes::{Route, RouteCache};

pub mod decision;

use decision::{
    Admission, AfterClaim, AfterPublish, DecisionSettings, MdnPlan, MdnSigning, Rejection,
    RejectionReply, RouteLookup, Unavailable, UnwrapOutcome, Verdict,
};

/// The CMS/MIME unwrap over a body arriving in chunks, handing the document to the
/// spool: [`streaming_unwrap`] in production.
pub type UnwrapFn = fn(
    &As2RequestHeaders,
    &mut dyn Iterator<Item = Bytes>,
    &UnwrapContext<'_>,
    &mut DocumentSpool,
) -> Result<StreamedMessage, as2_protocol::As2Error>;

/// The production unwrap: [`as2_protocol::unwrap::StreamingUnwrap`] over the chunks.
pub fn streaming_unwrap(
    headers: &As2RequestHeaders,
    chunks: &mut dyn Iterator<Item = Bytes>,
    context: &UnwrapContext<'_>,
    spool: &mut DocumentSpool,
) -> Result<StreamedMessage, as2_protocol::As2Error> {
    let mut unwrap = StreamingUnwrap::new(headers, context, spool)?;
    for chunk in chunks {
        unwrap.push(&chunk)?;
    }
    Ok(unwrap.finish()?.0)
}

/// Why a request body could not be read to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// It grew beyond the limit (413).
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// No part of it arrived for too long (408).
    Idle {
        /// The idle timeout, in seconds.
        secs: u64,
    },
    /// It arrived slower on average than the minimum rate (408).
    TooSlow {
        /// The minimum rate, in bytes per second.
        min_rate: u64,
    },
    /// The connection failed (the client went away, or sent a broken body).
    Read(String),
}

impl BodyFailure {
    /// The answer to a request whose body failed so.
    pub fn answer(&self) -> Answer {
        match self {
            Self::TooLarge { limit } => Answer::text(
                413,
                format!("the message is larger than the limit of {limit} bytes"),
            ),
            Self::Idle { secs } => Answer::text(
                408,
                format!("no part of the request body arrived for {secs} s"),
            ),
            Self::TooSlow { min_rate } => Answer::text(
                408,
                format!("the request body arrived slower than the minimum of {min_rate} bytes/s"),
            ),
            Self::Read(error) => {
                Answer::text(400, format!("the request body could not be read: {error}"))
            }
        }
    }
}

/// A body still arriving, chunk by chunk, with its size limit, idle timeout and minimum
/// rate applied.
pub type BodyChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, BodyFailure>> + Send>>;

/// A request body: already read, or still arriving.
pub enum RequestBody {
    /// The whole body.
    Whole(Bytes),
    /// The body as it arrives; the unwrap reads it as it comes.
    Streaming(BodyChunks),
}

impl RequestBody {
    /// The bytes of a body read whole (empty for a streaming one).
    pub fn whole(&self) -> &[u8] {
        match self {
            Self::Whole(bytes) => bytes,
            Self::Streaming(_) => &[],
        }
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(bytes)
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole(bytes) => write!(f, "Whole({} bytes)", bytes.len()),
            Self::Streaming(_) => f.write_str("Streaming"),
        }
    }
}

/// A request as the HTTP layer hands it over: headers (values as text) and the body.
#[derive(Debug)]
pub struct InboundRequest {
    /// Header names and values in the order received.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes, whole or arriving.
    pub body: RequestBody,
    /// What [`InboundProcessor::preflight`] found from the headers, when it admitted the
    /// message: [`InboundProcessor::process`] goes on from there (no second lookup, and
    /// one span, hence one trace, per message). `None` starts from the headers.
    pub admitted: Option<Box<AdmittedMessage>>,
}

/// What [`InboundProcessor::preflight`] decided from the headers.
#[derive(Debug)]
pub enum Preflight {
    /// Answered without the body.
    Answered(Answer),
    /// Stream the body to [`InboundProcessor::process`] with this.
    ReadBody(Box<AdmittedMessage>),
}

/// A message admitted from its headers: parsed, its partnership found, its decryption
/// key chosen and its share of the memory budget reserved, inside the message's span.
pub struct AdmittedMessage {
    span: tracing::Span,
    headers: As2RequestHeaders,
    route: Arc<Route>,
    decryption_key_id: Option<String>,
    _reservation: Option<Reserved>,
}

/// Requests whose reservation is at most this are small: they may use the quarter of the
/// memory budget that large ones leave free.
const SMALL_REQUEST_RESERVATION: usize = 2 * 1024 * 1024;

/// Memory reserved for a request before its body is read, and what it covers.
pub struct Reserved {
    _reservation: Reservation,
    /// The archive upload's share, handed to it.
    archive: Option<Reservation>,
    /// It includes the document upload's parts.
    document_upload: bool,
}

impl AdmittedMessage {
    /// The largest body the message's partnership accepts, in bytes.
    pub fn max_body_bytes(&self, global: u64) -> u64 {
        self.route.max_message_bytes().unwrap_or(global)
    }

    /// The rate-limit key of the message's partnership and its limit a minute (0: none).
    pub fn rate_limit(&self) -> (String, u32) {
        let partnership = &self.route.partnership;
        let per_minute = partnership
            .security_policy
            .as_ref()
            .and_then(|policy| policy.max_messages_per_minute)
            .unwrap_or(0);
        (format!("partnership {}", partnership.id), per_minute)
    }

    /// Whether the connection's TLS client may send for this partnership
    /// ([`crate::tls::check_client`]); the refusal is a 403 with the reason, before the
    /// body is read.
    pub fn check_tls_client(&self, client: &crate::tls::TlsClient) -> Result<(), Answer> {
        crate::tls::check_client(&self.route.partnership, client).map_err(|reason| {
            self.span.in_scope(|| {
                tracing::warn!(%reason, "refused the TLS client");
            });
            Answer::text(403, reason)
        })
    }
}

impl std::fmt::Debug for AdmittedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmittedMessage")
            .field("message_id", &self.headers.message_id.original())
            .field("partnership", &self.route.partnership.id)
            .finish_non_exhaustive()
    }
}

/// What to answer: status, headers and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Bytes,
}

impl Answer {
    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        let mut body = text.into();
        body.push('\n');
        Self {
            status,
            headers: vec![(
                "Content-Type".to_owned(),
                "text/plain; charset=utf-8".to_owned(),
            )],
            body: Bytes::from(body),
        }
    }

    fn unavailable(reason: &str, retry_after_secs: u64) -> Self {
        let mut answer = Self::text(503, reason);
        answer
            .headers
            .push(("Retry-After".to_owned(), retry_after_secs.to_string()));
        answer
    }
}

/// Everything the inbound path needs, shared by all requests.
pub struct InboundProcessor {
    /// Limits, timeouts and texts.
    pub settings: InboundConfig,
    /// Partnership lookup.
    pub routes: Arc<RouteCache>,
    /// Our keys.
    pub keys: Arc<KeyStore>,
    /// Key id for partnerships that name no decryption key.
    pub default_decryption_key_id: Option<String>,
    /// Key id for partnerships that name no MDN signing key, and for unknown partners.
    pub default_signing_key_id: Option<String>,
    /// Duplicate detection.
    pub dedup: DedupStore,
    /// Where documents are published (Kafka).
    pub publisher: Arc<dyn DocumentSink>,
    /// The MDN service, for asynchronous MDNs.
    pub mdn_delivery: Option<Arc<dyn MdnDeliveryQueue>>,
    /// Counters and histograms.
    pub metrics: Arc<EdgeMetrics>,
    /// The sender, which reconciles partners' MDNs for our outbound messages.
    pub mdn_reconciler: Option<Arc<dyn MdnReconciler>>,
    /// The CMS/MIME unwrap, run on the blocking pool: [`streaming_unwrap`]. A panic in
    /// it is answered 503 with Retry-After (our fault, not the message's).
    pub unwrap_message: UnwrapFn,
    /// Where documents go (inline, or the object store) and the memory budget.
    pub documents: DocumentStorage,
    /// Work a request leaves behind when it has answered (completing its archive
    /// entry); the edge waits for it when it drains ([`Self::finish_background`]).
    pub background: TaskTracker,
}

/// Body chunks queued between the connection and the unwrap, at most.
const BODY_CHANNEL: usize = 8;

/// The largest body chunk the HTTP layer hands over (hyper's read buffer is 64 KiB).
const MAX_CHUNK: usize = 64 * 1024;

/// Room for the header fields of an archived request (hyper limits them to 64 KiB).
const ARCHIVE_HEADER_ALLOWANCE: usize = 64 * 1024;

/// Why a message got the answer it got (for metrics and logs).
struct Handled {
    answer: Answer,
    outcome: Outcome,
}

impl Handled {
    fn new(answer: Answer, outcome: Outcome) -> Self {
        Self { answer, outcome }
    }

    /// Records the outcome on the message's span.
    fn record_on(&self, span: &tracing::Span) {
        span.record("outcome", self.outcome.label());
        span.record("disposition", self.outcome.disposition());
    }
}

/// What the partnership lookup decided.
enum Admitted {
    /// Read (if not yet read) and unwrap the body with this partnership and key.
    Unwrap(Arc<Route>, Option<String>),
    /// Answered without the body.
    Answered(Result<Handled, Unavailable>),
}

/// The span of one AS2 message; `request_bytes` is `None` before the body is read.
fn message_span(headers: &As2RequestHeaders, request_bytes: Option<usize>) -> tracing::Span {
    tracing::info_span!(
        "as2_message",
        otel.kind = "server",
        as2_from = headers.as2_from.as_str(),
        as2_to = headers.as2_to.as_str(),
        message_id = headers.message_id.original(),
        request_bytes,
        document_bytes = tracing::field::Empty,
        partnership = tracing::field::Empty,
        outcome = tracing::field::Empty,
        disposition = tracing::field::Empty,
    )
}

impl InboundProcessor {
    /// Handles one AS2 request and says what to answer.
    pub async fn process(&self, request: InboundRequest) -> Answer {
        let started = Instant::now();
        let received = Arc::new(AtomicU64::new(request.body.whole().len() as u64));
        let handled = self.handle(request, &received).await;
        let received_bytes =
            usize::try_from(received.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        self.metrics
            .observe(&handled.outcome, received_bytes, started.elapsed());
        handled.answer
    }

    async fn handle(&self, request: InboundRequest, received: &Arc<AtomicU64>) -> Handled {
        // A partner's MDN for one of our outbound messages goes to the sender.
        if crate::partner_mdn::is_mdn(&request.headers, request.body.whole()) {
            let answer = crate::partner_mdn::reconcile(
                self.mdn_reconciler.as_deref(),
                &request.headers,
                request.body.whole(),
                self.settings.retry_after_secs,
            )
            .await;
            let outcome = decision::partner_mdn_outcome(&answer);
            return Handled::new(answer, outcome);
        }
        let (headers, span, admitted) = match request.admitted {
            Some(admitted) => {
                let AdmittedMessage {
                    span,
                    headers,
                    route,
                    decryption_key_id,
                    _reservation,
                } = *admitted;
                (
                    headers,
                    span,
                    Some((route, decryption_key_id, _reservation)),
                )
            }
            None => match decision::read_headers(&request.headers) {
                Ok(headers) => {
                    let span = message_span(&headers, None);
                    (headers, span, None)
                }
                Err(answer) => return Handled::new(answer, Outcome::BadRequest),
            },
        };
        // The span is attached to the future, not entered: a guard held across `.await`
        // leaks into other requests on the same worker thread and corrupts the span stack.
        let handled = async {
            let mut archive = None;
            let handled = self
                .handle_message(
                    &headers,
                    &request.headers,
                    admitted,
                    request.body,
                    received,
                    &mut archive,
                )
                .await;
            let handled = self.settle(handled);
            // The archive entry is completed with the answer while the partner already
            // has it: an object store's latency is not added to every message.
            if let Some(archive) = archive {
                let answer = handled.answer.clone();
                let metrics = self.metrics.clone();
                self.background.spawn(
                    async move {
                        if let Err(error) = archive.finish(&answer).await {
                            metrics.archive_failed();
                            tracing::error!(%error, "the message could not be archived");
                        }
                    }
                    .in_current_span(),
                );
            }
            handled
        }
        .instrument(span.clone())
        .await;
        span.record("request_bytes", received.load(Ordering::Relaxed));
        handled.record_on(&span);
        handled
    }

    /// Decides from the request headers alone, before the body is read, whether the
    /// message can be answered without it: AS2 headers missing or malformed (400), an
    /// unknown (AS2-From, AS2-To) pair (the `unknown-trading-partner` error MDN), a
    /// signed receipt the partnership cannot give, or a dependency that is down (503).
    /// [`Preflight::ReadBody`] means: read the body and [`Self::process`] the request
    /// with the span given (the message's one span).
    ///
    /// The HTTP layer first tells a partner's MDN (which goes to the sender, whatever
    /// the pair) from a message by the start of its body ([`crate::partner_mdn`]); this
    /// is for messages. An admitted message also reserves its share of the memory budget
    /// here (503 when it is spent). The answer given here is counted in the metrics like
    /// any other.
    pub async fn preflight(&self, headers: &[(String, String)]) -> Preflight {
        let started = Instant::now();
        let declared = declared_length(headers);
        let handled = match decision::read_headers(headers) {
            Err(answer) => Handled::new(answer, Outcome::BadRequest),
            Ok(headers) => {
                let span = message_span(&headers, None);
                let admitted = self.admit(&headers).instrument(span.clone()).await;
                let handled = match admitted {
                    Admitted::Unwrap(route, decryption_key_id) => {
                        match self.reserve_for(declared, &route) {
                            Ok(reservation) => {
                                return Preflight::ReadBody(Box::new(AdmittedMessage {
                                    span,
                                    headers,
                                    route,
                                    decryption_key_id,
                                    _reservation: Some(reservation),
                                }));
                            }
                            Err(unavailable) => self.settle(Err(unavailable)),
                        }
                    }
                    Admitted::Answered(handled) => self.settle(handled),
                };
                handled.record_on(&span);
                handled
            }
        };
        self.metrics.observe(&handled.outcome, 0, started.elapsed());
        Preflight::Answered(handled.answer)
    }

    /// Reserves, before the body is read, all the memory a streaming request may hold:
    /// its body channel, its inline document (twice: ours, and the Kafka producer's
    /// copy), the archive upload's parts when it is archived, and the document upload's
    /// parts when its body may exceed the claim-check threshold (declared larger, or not
    /// declared). Reserving it all at once means no request waits for budget while
    /// holding some: a request either gets what it needs or 503 before its body.
    fn reserve_for(&self, declared: Option<u64>, route: &Route) -> Result<Reserved, Unavailable> {
        let threshold = self.documents.inline_threshold as u64;
        let inline = declared.map_or(threshold, |length| length.min(threshold));
        let upload = self
            .documents
            .store
            .as_ref()
            .map_or(0, as2_store::Store::upload_memory_bound);
        let archive = self.archive_retention(route).is_some();
        let document_upload =
            self.documents.store.is_some() && declared.is_none_or(|length| length > threshold);
        // An upload holds at most what is written to it: a small declared message needs
        // little for its archive copy.
        let archive_bytes = declared.map_or(upload, |length| {
            usize::try_from(length)
                .unwrap_or(usize::MAX)
                .saturating_add(ARCHIVE_HEADER_ALLOWANCE)
                .min(upload)
        });
        let bytes = BODY_CHANNEL * MAX_CHUNK
            + 2 * usize::try_from(inline).unwrap_or(usize::MAX)
            + usize::from(archive) * archive_bytes
            + usize::from(document_upload) * upload;
        // A quarter of the budget is kept for small requests (a 1 KiB message reserves
        // about 600 KiB, mostly its body channel): large documents take the rest, and
        // past it get 503 while small messages still go through.
        let budget = &self.documents.budget;
        let reservation = if bytes > SMALL_REQUEST_RESERVATION {
            budget.try_reserve_leaving(bytes, budget.total() / 4)
        } else {
            budget.try_reserve(bytes)
        };
        let reserved = reservation.map(|mut reservation| {
            // The archive's share goes with the archive upload, which may outlive the
            // request by the moment it takes to complete.
            let archive = archive
                .then(|| self.documents.budget.split(&mut reservation, archive_bytes))
                .flatten();
            Reserved {
                _reservation: reservation,
                archive,
                document_upload,
            }
        });
        reserved.ok_or_else(|| {
            self.metrics.budget_exhausted();
            tracing::warn!(
                bytes,
                available = self.documents.budget.available(),
                "memory budget spent"
            );
            Unavailable("the gateway is at its memory limit, please resend later")
        })
    }

    /// Days the route's messages are archived, `None` when they are not (no object store,
    /// the partnership turned it off, or no retention anywhere).
    fn archive_retention(&self, route: &Route) -> Option<u32> {
        self.documents.store.as_ref()?;
        route.archive_retention_days(self.settings.archive_retention_days)
    }

    /// Waits, up to `limit`, for the work requests left behind (archive entries being
    /// completed); called when the edge drains, after the last request answered.
    pub async fn finish_background(&self, limit: std::time::Duration) {
        self.background.close();
        if tokio::time::timeout(limit, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.background.len(),
                "archive entries still being completed when the edge stopped"
            );
        }
    }

    /// A handled message, or the 503 for a dependency that is unavailable.
    fn settle(&self, handled: Result<Handled, Unavailable>) -> Handled {
        handled.unwrap_or_else(|unavailable| {
            tracing::warn!(reason = unavailable.0, "answering 503");
            Handled::new(
                unavailable.answer(self.settings.retry_after_secs),
                Outcome::Unavailable,
            )
        })
    }

    /// The settings the decisions depend on.
    fn decisions(&self) -> DecisionSettings<'_> {
        DecisionSettings {
            reporting_ua: &self.settings.reporting_ua,
            default_decryption_key_id: self.default_decryption_key_id.as_deref(),
            default_signing_key_id: self.default_signing_key_id.as_deref(),
            async_mdn_available: self.mdn_delivery.is_some(),
        }
    }

    async fn handle_message(
        &self,
        headers: &As2RequestHeaders,
        raw_headers: &[(String, String)],
        admitted: Option<(Arc<Route>, Option<String>, Option<Reserved>)>,
        body: RequestBody,
        received: &Arc<AtomicU64>,
        archive: &mut Option<ArchiveUpload>,
    ) -> Result<Handled, Unavailable> {
        let admitted = match admitted {
            Some(admitted) => admitted,
            None => match self.admit(headers).await {
                Admitted::Unwrap(route, decryption_key_id) => (route, decryption_key_id, None),
                Admitted::Answered(handled) => return handled,
            },
        };
        let (route, decryption_key_id, mut reserved) = admitted;
        let decisions = self.decisions();
        if let Some(days) = self.archive_retention(&route) {
            let hash = as2_store::archive::message_hash(
                headers.as2_from.as_str(),
                headers.as2_to.as_str(),
                headers.message_id.original(),
            );
            let entry = ArchiveEntry::new(
                days,
                &route.partnership.id,
                &hash,
                time::OffsetDateTime::now_utc(),
            );
            let share = reserved
                .as_mut()
                .and_then(|reserved| reserved.archive.take());
            match ArchiveUpload::start(&self.documents, entry, raw_headers, share).await {
                Ok(started) => *archive = Some(started),
                Err(failure) => {
                    tracing::warn!(?failure, "the archive upload could not start");
                    return Err(Unavailable(
                        "the message archive is unavailable, please resend later",
                    ));
                }
            }
        }
        let archive_location = archive.as_ref().map(ArchiveUpload::location);

        let decryption_key = match decryption_key_id.as_deref() {
            Some(id) => self.keys.get(id).map_err(|error| error.to_string()),
            None => Err("no decryption key configured".to_owned()),
        };
        let step = self
            .unwrap(
                &route,
                headers,
                decryption_key.as_ref().ok().cloned(),
                BodyInput {
                    body,
                    declared: declared_length(raw_headers),
                    received,
                    archive,
                    upload_reserved: reserved
                        .as_ref()
                        .is_some_and(|reserved| reserved.document_upload),
                },
            )
            .await;
        let (unwrapped, document) = match step {
            UnwrapStep::BodyFailed(failure) => {
                tracing::info!(?failure, "the request body could not be read");
                return Ok(Handled::new(failure.answer(), Outcome::BadRequest));
            }
            UnwrapStep::SpoolFailed(failure) => {
                tracing::warn!(?failure, "the document could not be spooled");
                if let Some(started) = archive.take() {
                    started.abort().await;
                }
                return Err(Unavailable(match failure {
                    SpoolFailure::Budget => {
                        self.metrics.budget_exhausted();
                        "the gateway is at its memory limit, please resend later"
                    }
                    SpoolFailure::Store(_) => {
                        "the object store is unavailable, please resend later"
                    }
                }));
            }
            UnwrapStep::Unwrapped(outcome, document) => (outcome, document),
        };
        let key_error = decryption_key.as_ref().err().map(String::as_str);
        match decisions.judge(headers, &route, unwrapped, key_error) {
            Verdict::Accept(message) => {
                tracing::Span::current().record("document_bytes", document.size());
                self.accept(headers, &route, message, document, archive_location)
                    .await
            }
            Verdict::Reject(rejection) => {
                document.discard().await;
                self.deliver_rejection(headers, Some(&route), rejection)
                    .await
            }
            Verdict::Unavailable(unavailable) => {
                document.discard().await;
                Err(unavailable)
            }
        }
    }

    /// Looks the partnership up and decides whether the message is unwrapped; a
    /// message that is not gets its answer here (it needs no body).
    async fn admit(&self, headers: &As2RequestHeaders) -> Admitted {
        let resolved = self
            .routes
            .resolve(headers.as2_from.as_str(), headers.as2_to.as_str())
            .await;
        let lookup = match &resolved {
            Ok(Some(route)) => {
                tracing::Span::current().record("partnership", route.partnership.id.as_str());
                RouteLookup::Found(route)
            }
            Ok(None) => RouteLookup::Unknown,
            Err(error) => {
                tracing::warn!(%error, "partnership lookup failed");
                RouteLookup::Failed
            }
        };
        match self.decisions().admit(headers, lookup) {
            Admission::Unwrap {
                route,
                decryption_key_id,
            } => Admitted::Unwrap(route, decryption_key_id),
            Admission::Reject(rejection) => {
                let route = match lookup {
                    RouteLookup::Found(route) => Some(route.as_ref()),
                    RouteLookup::Unknown | RouteLookup::Failed => None,
                };
                Admitted::Answered(self.deliver_rejection(headers, route, *rejection).await)
            }
            Admission::Unavailable(unavailable) => Admitted::Answered(Err(unavailable)),
        }
    }

    /// Runs the CPU-heavy unwrap on the blocking pool while the body arrives: the
    /// connection's chunks go over a bounded channel to the unwrap, which hands the
    /// document to a [`DocumentSpool`]. The body is always read to its end (a message
    /// found bad early is still answered with its MDN, not a reset connection).
    async fn unwrap(
        &self,
        route: &Arc<Route>,
        headers: &As2RequestHeaders,
        decryption_key: Option<Arc<KeyPair>>,
        input: BodyInput<'_>,
    ) -> UnwrapStep {
        let BodyInput {
            body,
            declared,
            received,
            archive,
            upload_reserved,
        } = input;
        let route = route.clone();
        let headers = headers.clone();
        let limits = Limits {
            max_decompressed_size: route
                .max_message_bytes()
                .map_or(self.settings.max_document_bytes, |limit| {
                    usize::try_from(limit).unwrap_or(usize::MAX)
                }),
            ..Limits::default()
        };
        let unwrap_message = self.unwrap_message;
        let key = document_key(&route.partnership.id);
        let spool = match DocumentSpool::new(
            self.documents.clone(),
            key,
            tokio::runtime::Handle::current(),
            upload_reserved,
        ) {
            Ok(spool) => spool,
            Err(error) => return UnwrapStep::SpoolFailed(SpoolFailure::Store(error.to_string())),
        };
        let read_ahead = matches!(body, RequestBody::Whole(_))
            || declared.is_some_and(|length| length <= READ_AHEAD_BYTES as u64);
        let mut reader = BodyReader::new(body, received, archive.as_mut());
        // A small body is read whole first: the unwrap's thread then runs once, without
        // waiting for chunks (each wait and wake-up costs more than a small unwrap's
        // share of the thread's work).
        let (ahead, ended) = if read_ahead {
            reader.read_ahead(READ_AHEAD_BYTES).await
        } else {
            (Vec::new(), None)
        };
        if let Some(Err(failure)) = ended {
            spool.abandon().await;
            return UnwrapStep::BodyFailed(failure);
        }
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(BODY_CHANNEL);
        // When the body ended within what was read ahead, the sender goes now: the
        // unwrap finds the end right after those chunks.
        let sender = ended.is_none().then_some(sender);
        // Created here, entered on the blocking thread: a child of the message's span.
        let span = tracing::info_span!("as2_unwrap");
        let blocking = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let mut spool = spool;
            let identities: Vec<Identity> = decryption_key
                .iter()
                .map(|key| key.identity.clone())
                .collect();
            let policy = route
                .partnership
                .security_policy
                .clone()
                .unwrap_or_default();
            let interop = route.partnership.interop.unwrap_or_default();
            let mut context = UnwrapContext::new(&identities, &route.signing_certificates);
            context.limits = limits;
            context.allow_md5 = policy.allow_md5;
            context.check_certificate_validity = !interop.skip_certificate_validity_check;
            context.require_signature = policy.require_signature;
            context.require_encryption = policy.require_encryption;
            context.refuse_rsa_pkcs1v15_key_transport = policy.refuse_rsa_pkcs1v15_key_transport;
            let mut chunks = ahead
                .into_iter()
                .chain(std::iter::from_fn(|| receiver.blocking_recv()));
            let result = unwrap_message(&headers, &mut chunks, &context, &mut spool);
            // The reader discards the rest of the body from here on.
            drop(receiver);
            (result, spool)
        });
        let rest = async {
            match sender {
                Some(sender) => reader.read_rest(sender).await,
                None => None,
            }
        };
        let (body_failure, joined) = tokio::join!(rest, blocking);
        let archive_failure = reader.archive_failure.take();
        let (result, spool) = match joined {
            Ok(joined) => joined,
            Err(join_error) => {
                // Our bug, not the partner's message: no error MDN, the partner resends.
                // (An upload the spool had started is aborted when it is dropped.)
                tracing::error!(%join_error, "unwrap task failed");
                return UnwrapStep::Unwrapped(UnwrapOutcome::Crashed, SpooledDocument::empty());
            }
        };
        if let Some(failure) = body_failure {
            spool.abandon().await;
            return UnwrapStep::BodyFailed(failure);
        }
        if let Some(error) = archive_failure {
            spool.abandon().await;
            return UnwrapStep::SpoolFailed(SpoolFailure::Store(format!("archive: {error}")));
        }
        if let Some(failure) = spool.failure().cloned() {
            spool.abandon().await;
            return UnwrapStep::SpoolFailed(failure);
        }
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                spool.abandon().await;
                return UnwrapStep::Unwrapped(
                    UnwrapOutcome::Finished(Err(error)),
                    SpooledDocument::empty(),
                );
            }
        };
        let mut document = match spool.finish().await {
            Ok(document) => document,
            Err(failure) => return UnwrapStep::SpoolFailed(failure),
        };
        let unwrapped = UnwrappedMessage {
            payload: Payload {
                content_type: message.payload.content_type,
                filename: message.payload.filename,
                data: document.take_inline(),
            },
            facts: message.facts,
            mic: message.mic,
        };
        UnwrapStep::Unwrapped(UnwrapOutcome::Finished(Ok(unwrapped)), document)
    }

    /// Answers a message that is not processed; `route` is `None` for unknown partners.
    async fn deliver_rejection(
        &self,
        headers: &As2RequestHeaders,
        route: Option<&Route>,
        rejection: Rejection,
    ) -> Result<Handled, Unavailable> {
        let outcome = rejection.outcome();
        let (plan, signing) = match rejection.reply {
            RejectionReply::Plain(answer) => return Ok(Handled::new(answer, outcome)),
            RejectionReply::Mdn(plan, signing) => (plan, signing),
        };
        let built = self
            .load_signing(&signing)
            .and_then(|signing| self.build_mdn(headers, &plan, signing));
        let built = match (built, route) {
            (Ok(built), _) => built,
            // A party we do not know is not asked to resend.
            (Err(Unavailable(reason)), None) => {
                return Ok(Handled::new(Answer::text(400, reason), outcome));
            }
            (Err(unavailable), Some(_)) => return Err(unavailable),
        };
        let reply = plan.reply(built);
        if let Some(mdn) = &reply.async_mdn {
            self.enqueue_async(headers, route, mdn).await?;
        }
        Ok(Handled::new(reply.answer, outcome))
    }

    /// Dedup, publish, answer.
    async fn accept(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        message: UnwrappedMessage,
        document: SpooledDocument,
        archive_location: Option<String>,
    ) -> Result<Handled, Unavailable> {
        let decisions = self.decisions();
        let message_key = MessageKey {
            as2_from: headers.as2_from.as_str(),
            as2_to: headers.as2_to.as_str(),
            message_id: headers.message_id.original(),
        };
        let mut claim = match decision::after_claim(self.dedup.claim(&message_key).await) {
            AfterClaim::Proceed(claim) => claim,
            AfterClaim::Replay(replay) => {
                document.discard().await;
                self.metrics.dedup_hit("done");
                return self.replay(&message_key, headers, route, *replay).await;
            }
            AfterClaim::InFlight(unavailable, lease_left) => {
                document.discard().await;
                self.metrics.dedup_hit("in_flight");
                // The holder renews its lease while it works: ask for the resend when the
                // lease would have run out, so a dead holder's message is taken over then.
                let retry_after = lease_left
                    .as_secs()
                    .saturating_add(1)
                    .min(self.settings.retry_after_secs.max(1));
                return Ok(Handled::new(
                    unavailable.answer(retry_after),
                    Outcome::Unavailable,
                ));
            }
            AfterClaim::StoreUnavailable(unavailable) => {
                document.discard().await;
                return Err(unavailable);
            }
        };

        // An earlier holder that made its document visible and died before arming never
        // published: nothing references that object.
        if let Some(stale) = claim.take_stale_object() {
            self.delete_unreferenced(&message_key, &stale).await;
        }

        // Everything that can fail for reasons of ours is settled before the publish,
        // the MDN included: after the acknowledgement only storing the receipt is left.
        let signing = match decisions
            .mdn_signing(headers, route)
            .and_then(|signing| self.load_signing(&signing))
        {
            Ok(signing) => signing,
            Err(unavailable) => {
                document.discard().await;
                self.release(claim).await;
                return Err(unavailable);
            }
        };
        let plan = decisions.processed_mdn(headers, &message);
        let reply = match self.build_mdn(headers, &plan, signing) {
            Ok(built) => plan.reply(built),
            Err(unavailable) => {
                document.discard().await;
                self.release(claim).await;
                return Err(unavailable);
            }
        };

        // A holder whose lease ran out may have published this message: find its record
        // before publishing another.
        if let Some(earlier) = claim.earlier().cloned() {
            match self.find_earlier(&message_key, &earlier).await {
                Ok(Some(record)) => {
                    document.discard().await;
                    self.metrics.dedup_hit("recovered");
                    tracing::info!(
                        partition = record.partition,
                        offset = record.offset,
                        "an earlier attempt published this message; answering for it"
                    );
                    return self.answer_published(claim, headers, route, reply).await;
                }
                Ok(None) => {
                    if let Some(object) = &earlier.attempt.object {
                        self.delete_unreferenced(&message_key, object).await;
                    }
                    claim.earlier_absent();
                }
                Err(unavailable) => {
                    document.discard().await;
                    self.abandon(claim).await;
                    return Err(unavailable);
                }
            }
        }

        // A large document becomes visible in the store before its record is written:
        // no record points at a partial object. The claim notes the object first, so
        // that whoever comes after a crash here (a resend, or the orphan sweep) finds
        // and deletes it.
        let document_size = document.size();
        if let Some(object) = document.object_key().map(str::to_owned) {
            match self
                .dedup
                .note_object(&mut claim, &message_key, &object)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("the dedup lease ran out before the upload completed");
                    document.discard().await;
                    return Err(Unavailable(
                        "this message is being processed, please resend later",
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "could not note the document's object in its claim");
                    document.discard().await;
                    self.release(claim).await;
                    return Err(Unavailable(
                        "the message store is unavailable, please resend later",
                    ));
                }
            }
        }
        let (stored, sha256) = match document.complete().await {
            Ok(completed) => completed,
            Err(failure) => {
                tracing::warn!(?failure, "completing the document's upload failed");
                // The store may have completed it all the same.
                if let Some(object) = claim.noted_object().map(str::to_owned) {
                    crate::document::delete_object(&self.documents, &object).await;
                }
                self.release(claim).await;
                return Err(Unavailable(
                    "the object store is unavailable, please resend later",
                ));
            }
        };
        if stored.is_some() {
            crate::fault::after_upload();
        }
        let forget_stored = || async {
            if let Some(stored) = &stored {
                crate::document::delete_stored(&self.documents, stored).await;
            }
        };
        let topic = route.partnership.kafka_topic.as_str();
        let placement = match self.publisher.place(topic, &route.partnership.id).await {
            Ok(placement) => placement,
            Err(error) => {
                forget_stored().await;
                self.release(claim).await;
                return match decision::after_publish(Err(error)) {
                    AfterPublish::Refused(failure) => {
                        let rejection =
                            decisions.rejection_of_accepted(headers, route, &failure)?;
                        self.deliver_rejection(headers, Some(route), rejection)
                            .await
                    }
                    AfterPublish::Unavailable(unavailable) => Err(unavailable),
                    AfterPublish::Published(_) => Err(Unavailable(
                        "the document store is unavailable, please resend later",
                    )),
                };
            }
        };
        let attempt = PublishAttempt {
            topic: topic.to_owned(),
            partition: placement.partition,
            scan_from: placement.scan_from,
            object: stored.as_ref().map(|stored| stored.key.clone()),
        };
        // Arming is the fence: only a request whose lease is valid gets here, and the
        // record is handed to the producer at once, well within the window.
        let arming = Instant::now();
        let armed = self.dedup.arm(&claim, &attempt).await;
        let in_time = arming.elapsed() < as2_common::kafka::placement::PRODUCE_DEADLINE;
        match armed {
            Ok(true) if in_time => {}
            Ok(true) => {
                tracing::warn!("arming the claim took too long; not publishing");
                forget_stored().await;
                self.abandon(claim).await;
                return Err(Unavailable(
                    "the message store is slow, please resend later",
                ));
            }
            Ok(false) => {
                tracing::warn!("the dedup lease ran out before the publish; not publishing");
                forget_stored().await;
                return Err(Unavailable(
                    "this message is being processed, please resend later",
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "could not arm the dedup claim; not publishing");
                forget_stored().await;
                self.abandon(claim).await;
                return Err(Unavailable(
                    "the message store is unavailable, please resend later",
                ));
            }
        }

        let received_at = record::now_rfc3339();
        let mut record_headers = record::document_headers(headers, route, &message, &received_at);
        record::add_document_fields(&mut record_headers, document_size, &sha256, stored.as_ref());
        if let Some(location) = archive_location {
            record_headers.push((record::HEADER_ARCHIVE_LOCATION, location));
        }
        let publish_started = Instant::now();
        let published = self
            .publisher
            .publish(OutgoingRecord {
                topic,
                key: &route.partnership.id,
                partition: Some(placement.partition),
                headers: record_headers,
                payload: &message.payload.data,
            })
            .await;
        self.metrics.observe_publish(
            publish_started.elapsed(),
            message.payload.data.len(),
            published.is_ok(),
        );
        match decision::after_publish(published) {
            AfterPublish::Published(record) => {
                if stored.is_some() {
                    self.metrics.document_stored();
                }
                tracing::info!(
                    partition = record.partition,
                    offset = record.offset,
                    bytes = document_size,
                    "document published"
                );
            }
            AfterPublish::Unavailable(unavailable) => {
                // The record may still have been written: its object stays, and the
                // resend looks for it before publishing again.
                self.abandon(claim).await;
                return Err(unavailable);
            }
            AfterPublish::Refused(failure) => {
                forget_stored().await;
                self.release(claim).await;
                let rejection = decisions.rejection_of_accepted(headers, route, &failure)?;
                return self
                    .deliver_rejection(headers, Some(route), rejection)
                    .await;
            }
        }
        crate::fault::after_publish();
        self.answer_published(claim, headers, route, reply).await
    }

    /// Searches for the record of an earlier holder's attempt: in its partition from its
    /// offset, and once more after its publish window has passed (a record can land until
    /// then). `None` proves it absent.
    pub(crate) async fn find_earlier(
        &self,
        message_key: &MessageKey<'_>,
        earlier: &EarlierAttempt,
    ) -> Result<Option<StoredRecord>, Unavailable> {
        let started = Instant::now();
        let attempt = &earlier.attempt;
        let unavailable = |error: PublishError| {
            tracing::warn!(%error, "could not search for an earlier attempt's record");
            Unavailable("the document store is unavailable, please resend later")
        };
        let search = self
            .publisher
            .find(
                &attempt.topic,
                attempt.partition,
                attempt.scan_from,
                message_key,
            )
            .await
            .map_err(unavailable)?;
        let end = match search {
            Search::Found(record) => return Ok(Some(record)),
            Search::Absent { end } => end,
        };
        let absent = |end: i64| {
            // Rare (a takeover after a crash or a timeout), and what a duplicate would
            // have to be explained by.
            tracing::info!(
                partition = attempt.partition,
                from = attempt.scan_from,
                end,
                "an earlier attempt's record is not in its partition"
            );
            Ok(None)
        };
        let left = earlier.window_left.saturating_sub(started.elapsed());
        if left.is_zero() {
            return absent(end);
        }
        tracing::info!(
            wait_ms = left.as_millis(),
            "an earlier attempt's record may still land; waiting for its window to pass"
        );
        tokio::time::sleep(left).await;
        match self
            .publisher
            .find(&attempt.topic, attempt.partition, end, message_key)
            .await
            .map_err(unavailable)?
        {
            Search::Found(record) => Ok(Some(record)),
            Search::Absent { end } => absent(end),
        }
    }

    /// Answers a message whose record is in Kafka: hands over its asynchronous MDN, then
    /// stores the receipt.
    async fn answer_published(
        &self,
        claim: ClaimToken,
        headers: &As2RequestHeaders,
        route: &Route,
        reply: decision::MdnReply,
    ) -> Result<Handled, Unavailable> {
        if let Some(mdn) = &reply.async_mdn
            && let Err(unavailable) = self.enqueue_async(headers, Some(route), mdn).await
        {
            self.remember(claim, &reply.receipt(false)).await;
            return Err(unavailable);
        }
        self.remember(claim, &reply.receipt(true)).await;
        Ok(Handled::new(reply.answer, Outcome::Processed))
    }

    /// Answers a resend of a processed message as before, handing over an asynchronous
    /// MDN that could not be handed over the first time.
    async fn replay(
        &self,
        message_key: &MessageKey<'_>,
        headers: &As2RequestHeaders,
        route: &Route,
        replay: decision::Replay,
    ) -> Result<Handled, Unavailable> {
        if let Some(pending) = &replay.pending_async_mdn {
            self.enqueue_async(headers, Some(route), pending).await?;
            if let Err(error) = self
                .dedup
                .update_receipt(message_key, &replay.handed_over)
                .await
            {
                tracing::warn!(%error, "could not record the async MDN hand-over");
            }
        }
        Ok(Handled::new(replay.answer, Outcome::Duplicate))
    }

    /// Deletes `object`, an earlier attempt's document that no record references, and its
    /// entry in the registry of pending objects.
    async fn delete_unreferenced(&self, message_key: &MessageKey<'_>, object: &str) {
        crate::document::delete_object(&self.documents, object).await;
        if let Err(error) = self.dedup.forget_object(message_key, object).await {
            tracing::warn!(%error, "could not forget a deleted object; the orphan sweep will");
        }
    }

    async fn remember(&self, claim: ClaimToken, receipt: &StoredReceipt) {
        if let Err(error) = self.dedup.complete(claim, receipt).await {
            // The document is in Kafka and the partner gets its receipt; only a resend
            // within the claim's lifetime is still recognised.
            tracing::warn!(%error, "could not store the receipt for duplicate detection");
        }
    }

    async fn release(&self, claim: ClaimToken) {
        if let Err(error) = self.dedup.release(claim).await {
            tracing::warn!(%error, "could not release the dedup claim; its lease runs out by itself");
        }
    }

    async fn abandon(&self, claim: ClaimToken) {
        if let Err(error) = self.dedup.abandon(claim).await {
            tracing::warn!(%error, "could not end the dedup lease; it runs out by itself");
        }
    }

    /// Loads the key the decision chose to sign an MDN with.
    fn load_signing(
        &self,
        signing: &MdnSigning,
    ) -> Result<Option<(Arc<KeyPair>, MicAlgorithm)>, Unavailable> {
        match signing {
            MdnSigning::Unsigned => Ok(None),
            MdnSigning::IfAvailable { key_id, digest } => {
                Ok(self.keys.get(key_id).ok().map(|key| (key, *digest)))
            }
            MdnSigning::Required { key_id, digest } => match self.keys.get(key_id) {
                Ok(key) => Ok(Some((key, *digest))),
                Err(error) => {
                    tracing::error!(%error, "a signed MDN was requested but the signing key is unusable");
                    Err(Unavailable(
                        "our MDN signing key is not available, please resend later",
                    ))
                }
            },
        }
    }

    fn build_mdn(
        &self,
        headers: &As2RequestHeaders,
        plan: &MdnPlan,
        signing: Option<(Arc<KeyPair>, MicAlgorithm)>,
    ) -> Result<BuiltMdn, Unavailable> {
        let message_id =
            MessageId::generate(&self.settings.message_id_domain).map_err(|error| {
                tracing::error!(%error, "cannot generate an MDN message id");
                Unavailable("cannot build the MDN, please resend later")
            })?;
        let to_send = MdnToSend {
            as2_from: &headers.as2_to,
            as2_to: &headers.as2_from,
            message_id: &message_id,
            text: &plan.text,
            report: &plan.report,
            signing: signing
                .as_ref()
                .map(|(key, digest)| (&key.identity, *digest)),
        };
        mdn::build_mdn(&to_send).map_err(|error| {
            tracing::error!(%error, "cannot build the MDN");
            Unavailable("cannot build the MDN, please resend later")
        })
    }

    /// Hands an asynchronous MDN to the MDN service, with the partnership's policy for
    /// its targets. A URL the policy does not allow is handed over all the same: the MDN
    /// service records it as a failed delivery with the reason (and makes no
    /// connection), where operators see it (`as2ctl mdn list --state failed`).
    async fn enqueue_async(
        &self,
        headers: &As2RequestHeaders,
        route: Option<&Route>,
        mdn: &PendingAsyncMdn,
    ) -> Result<(), Unavailable> {
        let Some(queue) = &self.mdn_delivery else {
            return Err(Unavailable(
                "asynchronous MDNs are not available, please resend later",
            ));
        };
        let partnership_id = route.map_or("", |route| route.partnership.id.as_str());
        let policy = route.and_then(|route| route.partnership.async_mdn.clone());
        let refused = as2_partner::target::AsyncMdnTargets::from_proto(policy.as_ref())
            .map_err(|error| error.to_string())
            .and_then(|targets| {
                targets
                    .check_url(&mdn.url)
                    .map_err(|refused| refused.reason)
            });
        if let Err(reason) = refused {
            tracing::warn!(
                partnership = partnership_id,
                url = mdn.url,
                reason,
                "asynchronous mdn url not allowed, the mdn service records the delivery as failed"
            );
        }
        let traceparent = as2_common::telemetry::current_traceparent().unwrap_or_default();
        let request = decision::enqueue_request(headers, partnership_id, policy, mdn, traceparent);
        match queue.enqueue(request).await {
            Ok(_) => Ok(()),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "async MDN hand-over failed");
                Err(Unavailable(
                    "the MDN service is unavailable, please resend later",
                ))
            }
        }
    }
}

/// The body and what reading it feeds besides the unwrap.
struct BodyInput<'a> {
    body: RequestBody,
    /// The request's declared Content-Length.
    declared: Option<u64>,
    /// Bytes received so far (metrics, the span).
    received: &'a Arc<AtomicU64>,
    /// The message's archive upload, when it is archived.
    archive: &'a mut Option<ArchiveUpload>,
    /// The request reserved a document upload's memory up front.
    upload_reserved: bool,
}

/// What reading and unwrapping the body came to.
enum UnwrapStep {
    /// The body could not be read to its end (408, 413, 400).
    BodyFailed(BodyFailure),
    /// The document could not be kept: our side (503).
    SpoolFailed(SpoolFailure),
    /// The unwrap ended (or crashed), for the decisions to judge; the document as
    /// spooled (empty unless it succeeded).
    Unwrapped(UnwrapOutcome, SpooledDocument),
}

/// The body as it is read: each chunk counted and handed to the archive first.
struct BodyReader<'a> {
    chunks: futures::stream::BoxStream<'static, Result<Bytes, BodyFailure>>,
    archive: Option<&'a mut ArchiveUpload>,
    archive_failure: Option<as2_store::StoreError>,
}

impl<'a> BodyReader<'a> {
    fn new(
        body: RequestBody,
        received: &Arc<AtomicU64>,
        archive: Option<&'a mut ArchiveUpload>,
    ) -> Self {
        let chunks = match body {
            // Counted already; one chunk.
            RequestBody::Whole(bytes) => futures::stream::once(async { Ok(bytes) }).boxed(),
            RequestBody::Streaming(chunks) => {
                let received = received.clone();
                chunks
                    .inspect(move |chunk| {
                        if let Ok(chunk) = chunk {
                            received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    })
                    .boxed()
            }
        };
        Self {
            chunks,
            archive,
            archive_failure: None,
        }
    }

    /// The next chunk, `None` at the end of the body.
    async fn next(&mut self) -> Option<Result<Bytes, BodyFailure>> {
        let chunk = self.chunks.next().await?;
        if let Ok(chunk) = &chunk
            && let Some(upload) = self.archive.as_mut()
            && let Err(error) = upload.write(chunk.clone()).await
        {
            self.archive_failure = Some(error);
            self.archive = None;
        }
        Some(chunk)
    }

    /// Reads a small body ahead, whole, before the unwrap starts (so the unwrap's thread
    /// never waits for it): up to `limit` bytes, the chunks read and whether the body
    /// ended (or failed) within them.
    async fn read_ahead(&mut self, limit: usize) -> (Vec<Bytes>, Option<Result<(), BodyFailure>>) {
        let mut chunks = Vec::new();
        let mut held = 0;
        while held <= limit {
            match self.next().await {
                Some(Ok(chunk)) => {
                    held += chunk.len();
                    chunks.push(chunk);
                }
                Some(Err(failure)) => return (chunks, Some(Err(failure))),
                None => return (chunks, Some(Ok(()))),
            }
        }
        (chunks, None)
    }

    /// Reads the rest of the body, handing its chunks to the unwrap while it takes them
    /// (and discarding the rest once it stops); returns why the body failed, if it did.
    async fn read_rest(&mut self, sender: tokio::sync::mpsc::Sender<Bytes>) -> Option<BodyFailure> {
        let mut sender = Some(sender);
        while let Some(chunk) = self.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(failure) => return Some(failure),
            };
            if let Some(open) = &sender
                && open.send(chunk).await.is_err()
            {
                sender = None;
            }
        }
        None
    }
}

/// Bodies declared this small are read whole before the unwrap starts: one chunk or a
/// few, within the body channel's share of the request's reservation.
const READ_AHEAD_BYTES: usize = MAX_CHUNK;

/// The object-store key of a document too large for its record: by day and
/// partnership, then a random name.
fn document_key(partnership_id: &str) -> String {
    let day = time::OffsetDateTime::now_utc().date();
    format!(
        "{DOCUMENT_PREFIX}/{day}/{}/{}",
        as2_store::keys::segment(partnership_id),
        as2_store::keys::random_name(16)
    )
}

/// The key prefix under which documents referenced by records are stored.
pub const DOCUMENT_PREFIX: &str = "documents";

/// The declared Content-Length of a request, when it has one.
fn declared_length(headers: &[(String, String)]) -> Option<u64> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
}

#[cfg(test)]
mod tests;
