//! The inbound path, in order: read the AS2 headers, resolve the partnership, unwrap
//! (decrypt, decompress, verify, decompress), enforce the partnership's policy, claim
//! the message against duplicates, publish the document and wait for the broker's
//! acknowledgement, and only then answer with an MDN.
//!
//! What the partner gets back:
//!
//! | situation | answer |
//! |---|---|
//! | AS2-From, AS2-To or Message-ID missing or malformed | 400 with the reason, no MDN |
//! | the message itself is bad (signature, decryption, policy, ...) | 200 with an error MDN (`processed/error: ...` or `failed/Failure: ...`), nothing published |
//! | unknown (AS2-From, AS2-To) pair | 200 with an error MDN (`unknown-trading-partner`), in the response even when an asynchronous MDN was asked for: we do not call out to URLs of parties we do not know |
//! | processed | 200 with the sync MDN, or 200 and the MDN handed to the MDN service |
//! | processed before (same Message-ID) | the stored answer again, nothing published |
//! | the same Message-ID is being processed right now | 503 with Retry-After |
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
use as2_protocol::unwrap::{Limits, UnwrapContext, UnwrappedMessage};
use bytes::Bytes;
use tracing::Instrument as _;

use crate::clients::{MdnDeliveryQueue, MdnReconciler};
use crate::config::InboundConfig;
use crate::dedup::{ClaimToken, DedupStore, MessageKey, PendingAsyncMdn, StoredReceipt};
use crate::kafka::{DocumentSink, OutgoingRecord};
use crate::keys::{KeyPair, KeyStore};
use crate::metrics::{EdgeMetrics, Outcome};
use crate::record;
use crate::routes::{Route, RouteCache};

pub mod decision;

use decision::{
    Admission, AfterClaim, AfterPublish, DecisionSettings, MdnPlan, MdnSigning, Rejection,
    RejectionReply, RouteLookup, Unavailable, UnwrapOutcome, Verdict,
};

/// The CMS/MIME unwrap: [`as2_protocol::unwrap_message`] in production.
pub type UnwrapFn = fn(
    &As2RequestHeaders,
    &[u8],
    &UnwrapContext<'_>,
) -> Result<UnwrappedMessage, as2_protocol::As2Error>;

/// A request as the HTTP layer hands it over: headers (values as text) and the whole body.
#[derive(Debug)]
pub struct InboundRequest {
    /// Header names and values in the order received.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes.
    pub body: Bytes,
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
    /// Read the body and hand it to [`InboundProcessor::process`] with this (`None`: a
    /// request that may be a partner's MDN, judged with its body).
    ReadBody(Option<Box<AdmittedMessage>>),
}

/// A message admitted from its headers: parsed, its partnership found and its
/// decryption key chosen, inside the message's span.
pub struct AdmittedMessage {
    span: tracing::Span,
    headers: As2RequestHeaders,
    route: Arc<Route>,
    decryption_key_id: Option<String>,
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
    /// The CMS/MIME unwrap, run on the blocking pool: [`as2_protocol::unwrap_message`].
    /// A panic in it is answered 503 with Retry-After (our fault, not the message's).
    pub unwrap_message: UnwrapFn,
}

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
        let received_bytes = request.body.len();
        let handled = self.handle(request).await;
        self.metrics
            .observe(&handled.outcome, received_bytes, started.elapsed());
        handled.answer
    }

    async fn handle(&self, request: InboundRequest) -> Handled {
        // A partner's MDN for one of our outbound messages goes to the sender.
        if crate::partner_mdn::is_mdn(&request) {
            let answer = crate::partner_mdn::reconcile(
                self.mdn_reconciler.as_deref(),
                &request,
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
                } = *admitted;
                span.record("request_bytes", request.body.len());
                (headers, span, Some((route, decryption_key_id)))
            }
            None => match decision::read_headers(&request.headers) {
                Ok(headers) => {
                    let span = message_span(&headers, Some(request.body.len()));
                    (headers, span, None)
                }
                Err(answer) => return Handled::new(answer, Outcome::BadRequest),
            },
        };
        // The span is attached to the future, not entered: a guard held across `.await`
        // leaks into other requests on the same worker thread and corrupts the span stack.
        let handled = async {
            let handled = self.handle_message(&headers, admitted, request.body).await;
            self.settle(handled)
        }
        .instrument(span.clone())
        .await;
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
    /// A request that may be a partner's MDN (`multipart/report`, or `multipart/signed`
    /// whose signed part only the body shows) always has its body read: it goes to the
    /// sender, whatever the pair. The answer given here is counted in the metrics like
    /// any other.
    pub async fn preflight(&self, headers: &[(String, String)]) -> Preflight {
        if crate::partner_mdn::may_be_mdn(headers) {
            return Preflight::ReadBody(None);
        }
        let started = Instant::now();
        let handled = match decision::read_headers(headers) {
            Err(answer) => Handled::new(answer, Outcome::BadRequest),
            Ok(headers) => {
                let span = message_span(&headers, None);
                let admitted = self.admit(&headers).instrument(span.clone()).await;
                let handled = match admitted {
                    Admitted::Unwrap(route, decryption_key_id) => {
                        return Preflight::ReadBody(Some(Box::new(AdmittedMessage {
                            span,
                            headers,
                            route,
                            decryption_key_id,
                        })));
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
        admitted: Option<(Arc<Route>, Option<String>)>,
        body: Bytes,
    ) -> Result<Handled, Unavailable> {
        let admitted = match admitted {
            Some(admitted) => admitted,
            None => match self.admit(headers).await {
                Admitted::Unwrap(route, decryption_key_id) => (route, decryption_key_id),
                Admitted::Answered(handled) => return handled,
            },
        };
        let (route, decryption_key_id) = admitted;
        let decisions = self.decisions();

        let decryption_key = match decryption_key_id.as_deref() {
            Some(id) => self.keys.get(id).map_err(|error| error.to_string()),
            None => Err("no decryption key configured".to_owned()),
        };
        let unwrapped = self
            .unwrap(&route, headers, body, decryption_key.as_ref().ok().cloned())
            .await;
        let key_error = decryption_key.as_ref().err().map(String::as_str);
        match decisions.judge(headers, &route, unwrapped, key_error) {
            Verdict::Accept(message) => {
                tracing::Span::current().record("document_bytes", message.payload.data.len());
                self.accept(headers, &route, message).await
            }
            Verdict::Reject(rejection) => {
                self.deliver_rejection(headers, Some(&route), rejection)
                    .await
            }
            Verdict::Unavailable(unavailable) => Err(unavailable),
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

    /// Runs the CPU-heavy unwrap on the blocking pool.
    async fn unwrap(
        &self,
        route: &Arc<Route>,
        headers: &As2RequestHeaders,
        body: Bytes,
        decryption_key: Option<Arc<KeyPair>>,
    ) -> UnwrapOutcome {
        let route = route.clone();
        let headers = headers.clone();
        let limits = Limits {
            max_decompressed_size: self.settings.max_document_bytes,
            ..Limits::default()
        };
        let unwrap_message = self.unwrap_message;
        // Created here, entered on the blocking thread: a child of the message's span.
        let span = tracing::info_span!("as2_unwrap", request_bytes = body.len());
        let outcome = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
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
            unwrap_message(&headers, &body, &context)
        })
        .await;
        match outcome {
            Ok(unwrapped) => UnwrapOutcome::Finished(unwrapped),
            Err(join_error) => {
                // Our bug, not the partner's message: no error MDN, the partner resends.
                tracing::error!(%join_error, "unwrap task failed");
                UnwrapOutcome::Crashed
            }
        }
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
            let partnership_id = route.map_or("", |route| route.partnership.id.as_str());
            self.enqueue_async(headers, partnership_id, mdn).await?;
        }
        Ok(Handled::new(reply.answer, outcome))
    }

    /// Dedup, publish, answer.
    async fn accept(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        message: UnwrappedMessage,
    ) -> Result<Handled, Unavailable> {
        let decisions = self.decisions();
        let message_key = MessageKey {
            as2_from: headers.as2_from.as_str(),
            as2_to: headers.as2_to.as_str(),
            message_id: headers.message_id.original(),
        };
        let claim = match decision::after_claim(self.dedup.claim(&message_key).await) {
            AfterClaim::Proceed(claim) => claim,
            AfterClaim::Replay(replay) => {
                self.metrics.dedup_hit("done");
                return self.replay(&message_key, headers, route, *replay).await;
            }
            AfterClaim::InFlight(unavailable) => {
                self.metrics.dedup_hit("in_flight");
                return Err(unavailable);
            }
            AfterClaim::StoreUnavailable(unavailable) => return Err(unavailable),
        };

        // Everything that can fail for reasons of ours is settled before the publish.
        let signing = match decisions
            .mdn_signing(headers, route)
            .and_then(|signing| self.load_signing(&signing))
        {
            Ok(signing) => signing,
            Err(unavailable) => {
                self.release(claim).await;
                return Err(unavailable);
            }
        };

        let received_at = record::now_rfc3339();
        let record_headers = record::document_headers(headers, route, &message, &received_at);
        let publish_started = Instant::now();
        let published = self
            .publisher
            .publish(OutgoingRecord {
                topic: &route.partnership.kafka_topic,
                key: &route.partnership.id,
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
            AfterPublish::Published(stored) => {
                tracing::info!(
                    partition = stored.partition,
                    offset = stored.offset,
                    bytes = message.payload.data.len(),
                    "document published"
                );
            }
            AfterPublish::Unavailable(unavailable) => {
                self.release(claim).await;
                return Err(unavailable);
            }
            AfterPublish::Refused(failure) => {
                self.release(claim).await;
                let rejection = decisions.rejection(headers, route, &failure)?;
                return self
                    .deliver_rejection(headers, Some(route), rejection)
                    .await;
            }
        }

        let plan = decisions.processed_mdn(headers, &message);
        // Published but no receipt: keep the claim so a resend does not publish again; it
        // expires and the resend then goes through dedup as new.
        let built = self.build_mdn(headers, &plan, signing)?;
        let reply = plan.reply(built);
        if let Some(mdn) = &reply.async_mdn
            && let Err(unavailable) = self
                .enqueue_async(headers, &route.partnership.id, mdn)
                .await
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
            self.enqueue_async(headers, &route.partnership.id, pending)
                .await?;
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

    async fn remember(&self, claim: ClaimToken, receipt: &StoredReceipt) {
        if let Err(error) = self.dedup.complete(claim, receipt).await {
            // The document is in Kafka and the partner gets its receipt; only a resend
            // within the claim's lifetime is still recognised.
            tracing::warn!(%error, "could not store the receipt for duplicate detection");
        }
    }

    async fn release(&self, claim: ClaimToken) {
        if let Err(error) = self.dedup.release(claim).await {
            tracing::warn!(%error, "could not release the dedup claim; it expires by itself");
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

    /// Hands an asynchronous MDN to the MDN service.
    async fn enqueue_async(
        &self,
        headers: &As2RequestHeaders,
        partnership_id: &str,
        mdn: &PendingAsyncMdn,
    ) -> Result<(), Unavailable> {
        let Some(queue) = &self.mdn_delivery else {
            return Err(Unavailable(
                "asynchronous MDNs are not available, please resend later",
            ));
        };
        let traceparent = as2_common::telemetry::current_traceparent().unwrap_or_default();
        let request = decision::enqueue_request(headers, partnership_id, mdn, traceparent);
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

#[cfg(test)]
mod tests;
