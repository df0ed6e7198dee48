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
//! | no MDN asked for, message bad | 400 with the reason |

use std::sync::Arc;
use std::time::Instant;

use as2_protocol::cms::{ContentCipher, Identity};
use as2_protocol::headers::{As2RequestHeaders, MessageId, MicAlgorithm};
use as2_protocol::mdn::{
    self, BuiltMdn, Disposition, DispositionStatus, MdnReport, MdnToSend, ProcessingError,
};
use as2_protocol::unwrap::{Limits, UnwrapContext, UnwrappedMessage};
use as2_protocol::{As2Error, unwrap_message};
use as2_rpc::mdn::v1::{
    EnqueueMdnDeliveryRequest, HeaderField, PreparedMdn, enqueue_mdn_delivery_request,
};
use as2_rpc::routing::v1::{EncryptionCipher, SigningDigest};
use bytes::Bytes;
use tracing::Instrument as _;

use crate::clients::{MdnDeliveryQueue, MdnReconciler};
use crate::config::InboundConfig;
use crate::dedup::{Claim, DedupStore, MessageKey, PendingAsyncMdn, StoredReceipt};
use crate::kafka::{DocumentSink, OutgoingRecord, PublishError};
use crate::keys::{KeyPair, KeyStore};
use crate::metrics::{EdgeMetrics, Outcome};
use crate::record;
use crate::routes::{Route, RouteCache};

/// A request as the HTTP layer hands it over: headers (values as text) and the whole body.
#[derive(Debug)]
pub struct InboundRequest {
    /// Header names and values in the order received.
    pub headers: Vec<(String, String)>,
    /// The exact body bytes.
    pub body: Bytes,
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

    fn from_stored(receipt: &StoredReceipt) -> Self {
        Self {
            status: receipt.status,
            headers: receipt.headers.clone(),
            body: Bytes::from(receipt.body.clone()),
        }
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
}

/// A fault of ours or of a dependency: the partner should resend later.
struct Unavailable(&'static str);

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
            let outcome = match answer.status {
                200 => Outcome::Processed,
                503 => Outcome::Unavailable,
                _ => Outcome::BadRequest,
            };
            return Handled::new(answer, outcome);
        }
        let headers = match As2RequestHeaders::parse(
            request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        ) {
            Ok(headers) => headers,
            Err(error) => {
                tracing::info!(%error, "rejected a request without usable AS2 headers");
                return Handled::new(Answer::text(400, error.to_string()), Outcome::BadRequest);
            }
        };
        let span = tracing::info_span!(
            "as2_message",
            otel.kind = "server",
            as2_from = headers.as2_from.as_str(),
            as2_to = headers.as2_to.as_str(),
            message_id = headers.message_id.original(),
            request_bytes = request.body.len(),
            document_bytes = tracing::field::Empty,
            partnership = tracing::field::Empty,
            outcome = tracing::field::Empty,
            disposition = tracing::field::Empty,
        );
        // The span is attached to the future, not entered: a guard held across `.await`
        // leaks into other requests on the same worker thread and corrupts the span stack.
        let handled = async {
            match self.handle_message(&headers, request.body).await {
                Ok(handled) => handled,
                Err(Unavailable(reason)) => {
                    tracing::warn!(reason, "answering 503");
                    Handled::new(
                        Answer::unavailable(reason, self.settings.retry_after_secs),
                        Outcome::Unavailable,
                    )
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.record("outcome", handled.outcome.label());
        span.record("disposition", handled.outcome.disposition());
        handled
    }

    async fn handle_message(
        &self,
        headers: &As2RequestHeaders,
        body: Bytes,
    ) -> Result<Handled, Unavailable> {
        let route = match self
            .routes
            .resolve(headers.as2_from.as_str(), headers.as2_to.as_str())
            .await
        {
            Ok(Some(route)) => route,
            Ok(None) => return Ok(self.unknown_partner(headers)),
            Err(error) => {
                tracing::warn!(%error, "partnership lookup failed");
                return Err(Unavailable(
                    "the partnership registry is unavailable, please resend later",
                ));
            }
        };
        tracing::Span::current().record("partnership", route.partnership.id.as_str());
        if headers.receipt_delivery_option.is_some() && self.mdn_delivery.is_none() {
            return Err(Unavailable(
                "asynchronous MDNs are not available, please resend later",
            ));
        }

        if let Some(refusal) = refused_receipt_signature(headers, &route) {
            return self.reject(headers, &route, &refusal).await;
        }

        let decryption_key = self.decryption_key(&route);
        let unwrapped = self
            .unwrap(&route, headers, body, decryption_key.as_ref().ok().cloned())
            .await;
        let unwrapped = match unwrapped.and_then(|message| enforce_policy(&route, message)) {
            Ok(message) => {
                tracing::Span::current().record("document_bytes", message.payload.data.len());
                message
            }
            Err(As2Error::DecryptionFailed(reason)) if decryption_key.is_err() => {
                tracing::error!(%reason, key_error = ?decryption_key.err(), "cannot decrypt: our decryption key is not available");
                return Err(Unavailable(
                    "our decryption key is not available, please resend later",
                ));
            }
            Err(error) => return self.reject(headers, &route, &error).await,
        };
        self.accept(headers, &route, unwrapped).await
    }

    /// Runs the CPU-heavy unwrap on the blocking pool.
    async fn unwrap(
        &self,
        route: &Arc<Route>,
        headers: &As2RequestHeaders,
        body: Bytes,
        decryption_key: Option<Arc<KeyPair>>,
    ) -> Result<UnwrappedMessage, As2Error> {
        let route = route.clone();
        let headers = headers.clone();
        let limits = Limits {
            max_decompressed_size: self.settings.max_document_bytes,
            ..Limits::default()
        };
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
        outcome.unwrap_or_else(|join_error| {
            tracing::error!(%join_error, "unwrap task failed");
            Err(As2Error::InvalidArgument(
                "internal failure while unwrapping".to_owned(),
            ))
        })
    }

    /// The answer for a message that cannot be processed.
    async fn reject(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        error: &As2Error,
    ) -> Result<Handled, Unavailable> {
        let status = error.disposition_status();
        tracing::info!(%error, disposition = %status, "message rejected");
        let outcome = Outcome::Rejected(status.clone());
        if !headers.wants_mdn() {
            return Ok(Handled::new(Answer::text(400, error.to_string()), outcome));
        }
        let report = MdnReport::for_outcome(&self.settings.reporting_ua, headers, Err(error));
        let text = explanation(headers, &status, Some(&error.to_string()));
        let signing = self.mdn_signing(headers, Some(route))?;
        let built = self.build_mdn(headers, &report, &text, signing)?;
        if let Some(option) = &headers.receipt_delivery_option {
            self.enqueue_async(headers, route, option.url(), &built)
                .await?;
            return Ok(Handled::new(
                Answer::text(200, "error MDN queued for asynchronous delivery"),
                outcome,
            ));
        }
        Ok(Handled::new(mdn_answer(built), outcome))
    }

    /// The answer for a message from an unknown (AS2-From, AS2-To) pair.
    fn unknown_partner(&self, headers: &As2RequestHeaders) -> Handled {
        let status =
            DispositionStatus::Error(ProcessingError::Other("unknown-trading-partner".to_owned()));
        let outcome = Outcome::Rejected(status.clone());
        tracing::info!("no partnership for this pair");
        let reason = format!(
            "no partnership for AS2-From {:?} and AS2-To {:?}",
            headers.as2_from.as_str(),
            headers.as2_to.as_str()
        );
        if !headers.wants_mdn() {
            return Handled::new(Answer::text(400, reason), outcome);
        }
        let mut report = MdnReport::for_outcome(
            &self.settings.reporting_ua,
            headers,
            Err(&As2Error::InvalidArgument(reason.clone())),
        );
        report.disposition = Disposition::automatic(status.clone());
        let text = explanation(headers, &status, Some(&reason));
        // Sign only when a default key is configured and usable; otherwise unsigned.
        let signing = self
            .default_signing_key_id
            .as_deref()
            .and_then(|id| self.keys.get(id).ok())
            .zip(signed_receipt_digest(headers, false));
        match self.build_mdn(headers, &report, &text, signing) {
            Ok(built) => Handled::new(mdn_answer(built), outcome),
            Err(Unavailable(reason)) => Handled::new(Answer::text(400, reason), outcome),
        }
    }

    /// Dedup, publish, answer.
    async fn accept(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        message: UnwrappedMessage,
    ) -> Result<Handled, Unavailable> {
        let message_key = MessageKey {
            as2_from: headers.as2_from.as_str(),
            as2_to: headers.as2_to.as_str(),
            message_id: headers.message_id.original(),
        };
        let claim = match self.dedup.claim(&message_key).await {
            Ok(Claim::Claimed(claim)) => claim,
            Ok(Claim::InFlight) => {
                self.metrics.dedup_hit("in_flight");
                return Err(Unavailable(
                    "this message is being processed, please resend later",
                ));
            }
            Ok(Claim::Done(receipt)) => {
                self.metrics.dedup_hit("done");
                tracing::info!("duplicate of a processed message, answering as before");
                return self.replay(&message_key, headers, route, receipt).await;
            }
            Err(error) => {
                tracing::warn!(%error, "dedup claim failed");
                return Err(Unavailable(
                    "the message store is unavailable, please resend later",
                ));
            }
        };

        // Everything that can fail for reasons of ours is settled before the publish.
        let signing = match self.mdn_signing(headers, Some(route)) {
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
        match published {
            Ok(stored) => {
                tracing::info!(
                    partition = stored.partition,
                    offset = stored.offset,
                    bytes = message.payload.data.len(),
                    "document published"
                );
            }
            Err(PublishError::Unavailable(error)) => {
                tracing::warn!(%error, "publish failed");
                self.release(claim).await;
                return Err(Unavailable(
                    "the document store is unavailable, please resend later",
                ));
            }
            Err(PublishError::Rejected(error)) => {
                tracing::error!(%error, "kafka refused the document");
                self.release(claim).await;
                let failure =
                    As2Error::InvalidArgument(format!("the document could not be stored: {error}"));
                return self.reject(headers, route, &failure).await;
            }
        }

        let report = MdnReport::for_outcome(&self.settings.reporting_ua, headers, Ok(&message));
        let text = explanation(headers, &DispositionStatus::Processed, None);
        let built = match self.build_mdn(headers, &report, &text, signing) {
            Ok(built) => built,
            Err(unavailable) => {
                // Published but no receipt: keep the claim so a resend does not publish
                // again; it expires and the resend then goes through dedup as new.
                return Err(unavailable);
            }
        };
        let (receipt, answer) = match &headers.receipt_delivery_option {
            None => {
                let answer = mdn_answer(built);
                (stored_receipt(&answer, None), answer)
            }
            Some(option) => {
                let answer = Answer::text(200, "message received, the MDN follows asynchronously");
                let pending = PendingAsyncMdn {
                    url: option.url().to_owned(),
                    headers: built.headers.clone(),
                    body: built.body.clone(),
                };
                if let Err(unavailable) = self
                    .enqueue_async(headers, route, option.url(), &built)
                    .await
                {
                    let receipt = stored_receipt(&answer, Some(pending));
                    self.remember(claim, &receipt).await;
                    return Err(unavailable);
                }
                (stored_receipt(&answer, None), answer)
            }
        };
        self.remember(claim, &receipt).await;
        Ok(Handled::new(answer, Outcome::Processed))
    }

    /// Answers a resend of a processed message as before, handing over an asynchronous
    /// MDN that could not be handed over the first time.
    async fn replay(
        &self,
        message_key: &MessageKey<'_>,
        headers: &As2RequestHeaders,
        route: &Route,
        mut receipt: StoredReceipt,
    ) -> Result<Handled, Unavailable> {
        if let Some(pending) = receipt.pending_async_mdn.take() {
            let built = BuiltMdn {
                headers: pending.headers.clone(),
                body: pending.body.clone(),
            };
            self.enqueue_async(headers, route, &pending.url, &built)
                .await?;
            if let Err(error) = self.dedup.update_receipt(message_key, &receipt).await {
                tracing::warn!(%error, "could not record the async MDN hand-over");
            }
        }
        Ok(Handled::new(
            Answer::from_stored(&receipt),
            Outcome::Duplicate,
        ))
    }

    async fn remember(&self, claim: crate::dedup::ClaimToken, receipt: &StoredReceipt) {
        if let Err(error) = self.dedup.complete(claim, receipt).await {
            // The document is in Kafka and the partner gets its receipt; only a resend
            // within the claim's lifetime is still recognised.
            tracing::warn!(%error, "could not store the receipt for duplicate detection");
        }
    }

    async fn release(&self, claim: crate::dedup::ClaimToken) {
        if let Err(error) = self.dedup.release(claim).await {
            tracing::warn!(%error, "could not release the dedup claim; it expires by itself");
        }
    }

    fn decryption_key(&self, route: &Route) -> Result<Arc<KeyPair>, String> {
        let id = non_empty(&route.partnership.decryption_key_id)
            .or(self.default_decryption_key_id.as_deref())
            .ok_or_else(|| "no decryption key configured".to_owned())?;
        self.keys.get(id).map_err(|error| error.to_string())
    }

    /// The key and digest to sign the MDN with, or `None` for an unsigned MDN.
    fn mdn_signing(
        &self,
        headers: &As2RequestHeaders,
        route: Option<&Route>,
    ) -> Result<Option<(Arc<KeyPair>, MicAlgorithm)>, Unavailable> {
        let Some(route) = route else { return Ok(None) };
        let allow_md5 = route
            .partnership
            .security_policy
            .as_ref()
            .is_some_and(|policy| policy.allow_md5);
        let Some(digest) = signed_receipt_digest(headers, allow_md5) else {
            return Ok(None);
        };
        let offered = signed_mdn_offered(route);
        if !offered {
            return Ok(None);
        }
        let id = non_empty(&route.partnership.mdn_signing_key_id)
            .or(self.default_signing_key_id.as_deref());
        let Some(id) = id else {
            tracing::error!("a signed MDN was requested but no signing key is configured");
            return Err(Unavailable(
                "our MDN signing key is not available, please resend later",
            ));
        };
        match self.keys.get(id) {
            Ok(key) => Ok(Some((key, digest))),
            Err(error) => {
                tracing::error!(%error, "a signed MDN was requested but the signing key is unusable");
                Err(Unavailable(
                    "our MDN signing key is not available, please resend later",
                ))
            }
        }
    }

    fn build_mdn(
        &self,
        headers: &As2RequestHeaders,
        report: &MdnReport,
        text: &str,
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
            text,
            report,
            signing: signing
                .as_ref()
                .map(|(key, digest)| (&key.identity, *digest)),
        };
        mdn::build_mdn(&to_send).map_err(|error| {
            tracing::error!(%error, "cannot build the MDN");
            Unavailable("cannot build the MDN, please resend later")
        })
    }

    async fn enqueue_async(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        url: &str,
        built: &BuiltMdn,
    ) -> Result<(), Unavailable> {
        let Some(client) = &self.mdn_delivery else {
            return Err(Unavailable(
                "asynchronous MDNs are not available, please resend later",
            ));
        };
        let traceparent = as2_common::telemetry::current_traceparent().unwrap_or_default();
        let request = EnqueueMdnDeliveryRequest {
            original_message_id: headers.message_id.original().to_owned(),
            partnership_id: route.partnership.id.clone(),
            // The original message's pair, as the contract asks (the MDN itself
            // carries the reverse pair in its prepared headers).
            as2_from: headers.as2_from.as_str().to_owned(),
            as2_to: headers.as2_to.as_str().to_owned(),
            delivery_url: url.to_owned(),
            traceparent,
            mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(PreparedMdn {
                headers: built
                    .headers
                    .iter()
                    .map(|(name, value)| HeaderField {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                body: built.body.clone(),
            })),
        };
        match client.enqueue(request).await {
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

/// The digest a signed receipt is asked for with, or `None` when no signed receipt is
/// wanted. When the request's micalg list cannot be honoured the message fails anyway
/// (failed/Failure); that MDN is signed with SHA-256.
fn signed_receipt_digest(headers: &As2RequestHeaders, allow_md5: bool) -> Option<MicAlgorithm> {
    let options = headers.disposition_notification_options.as_ref()?;
    if !options.wants_signed_receipt() {
        return None;
    }
    match mdn::receipt_signing_algorithm(Some(options), allow_md5) {
        Ok(digest) => digest,
        Err(_) => Some(MicAlgorithm::Sha256),
    }
}

/// Whether the partnership signs MDNs when asked (the default).
fn signed_mdn_offered(route: &Route) -> bool {
    route
        .partnership
        .mdn_preferences
        .as_ref()
        .and_then(|preferences| preferences.offer_signed_mdn)
        .unwrap_or(true)
}

/// A signed receipt requested as `required` from a partnership that does not offer
/// signed MDNs cannot be honoured (RFC 4130 7.5.3: failed/Failure).
fn refused_receipt_signature(headers: &As2RequestHeaders, route: &Route) -> Option<As2Error> {
    let options = headers.disposition_notification_options.as_ref()?;
    let protocol = options.signed_receipt_protocol.as_ref()?;
    let required = protocol.importance == as2_protocol::headers::Importance::Required;
    (required && options.wants_signed_receipt() && !signed_mdn_offered(route)).then(|| {
        As2Error::UnsupportedFormat("signed receipts are not offered to this partner".to_owned())
    })
}

/// Checks what the unwrap found against the partnership's allowed algorithms.
fn enforce_policy(route: &Route, message: UnwrappedMessage) -> Result<UnwrappedMessage, As2Error> {
    let Some(policy) = &route.partnership.security_policy else {
        return Ok(message);
    };
    if let Some(signature) = &message.facts.signature {
        let digest = signing_digest(signature.digest);
        let listed: Vec<SigningDigest> = policy.allowed_signing_digests().collect();
        if !listed.is_empty() && !listed.contains(&digest) {
            return Err(As2Error::InsufficientMessageSecurity(format!(
                "signature digest {} is not allowed for this partnership",
                signature.digest
            )));
        }
    }
    if let Some(encryption) = &message.facts.encryption {
        let listed: Vec<EncryptionCipher> = policy.allowed_encryption_ciphers().collect();
        let cipher = encryption_cipher(encryption.cipher);
        if !listed.is_empty() && !cipher.is_some_and(|cipher| listed.contains(&cipher)) {
            return Err(As2Error::InsufficientMessageSecurity(format!(
                "cipher {} is not allowed for this partnership",
                encryption.cipher.as_str()
            )));
        }
    }
    Ok(message)
}

fn signing_digest(algorithm: MicAlgorithm) -> SigningDigest {
    match algorithm {
        MicAlgorithm::Md5 => SigningDigest::Md5,
        MicAlgorithm::Sha1 => SigningDigest::Sha1,
        MicAlgorithm::Sha224 => SigningDigest::Sha224,
        MicAlgorithm::Sha256 => SigningDigest::Sha256,
        MicAlgorithm::Sha384 => SigningDigest::Sha384,
        MicAlgorithm::Sha512 => SigningDigest::Sha512,
    }
}

/// The policy's name for a cipher; `None` for ciphers the policy cannot list.
fn encryption_cipher(cipher: ContentCipher) -> Option<EncryptionCipher> {
    Some(match cipher {
        ContentCipher::TripleDesCbc => EncryptionCipher::DesEde3Cbc,
        ContentCipher::Aes128Cbc => EncryptionCipher::Aes128Cbc,
        ContentCipher::Aes192Cbc => EncryptionCipher::Aes192Cbc,
        ContentCipher::Aes256Cbc => EncryptionCipher::Aes256Cbc,
        ContentCipher::Aes128Gcm => EncryptionCipher::Aes128Gcm,
        ContentCipher::Aes256Gcm => EncryptionCipher::Aes256Gcm,
        ContentCipher::Aes192Gcm => return None,
    })
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

fn mdn_answer(built: BuiltMdn) -> Answer {
    Answer {
        status: 200,
        headers: built.headers,
        body: Bytes::from(built.body),
    }
}

fn stored_receipt(answer: &Answer, pending_async_mdn: Option<PendingAsyncMdn>) -> StoredReceipt {
    StoredReceipt {
        status: answer.status,
        headers: answer.headers.clone(),
        body: answer.body.to_vec(),
        pending_async_mdn,
    }
}

/// The human-readable first part of an MDN.
fn explanation(
    headers: &As2RequestHeaders,
    status: &DispositionStatus,
    reason: Option<&str>,
) -> String {
    let subject = format!(
        "The AS2 message {} sent by {} to {}",
        headers.message_id.original(),
        headers.as2_from.as_str(),
        headers.as2_to.as_str()
    );
    match (status.is_processed(), reason) {
        (true, _) => format!(
            "{subject} was received and stored for processing. This receipt proves delivery; it says nothing about whether the content was read or understood."
        ),
        (false, Some(reason)) => format!("{subject} could not be processed: {reason}."),
        (false, None) => format!("{subject} could not be processed ({status})."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_names_map_to_the_policy_enum() {
        assert_eq!(
            encryption_cipher(ContentCipher::Aes256Cbc),
            Some(EncryptionCipher::Aes256Cbc)
        );
        assert_eq!(
            encryption_cipher(ContentCipher::TripleDesCbc),
            Some(EncryptionCipher::DesEde3Cbc)
        );
        assert_eq!(encryption_cipher(ContentCipher::Aes192Gcm), None);
    }
}
