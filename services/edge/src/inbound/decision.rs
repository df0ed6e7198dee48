//! The decisions of the inbound path: what to answer, with which status, which
//! disposition or error MDN, what to publish and what to keep for duplicate detection.
//!
//! No I/O here: no network, no Redis, no Kafka, no key files, no clock, no randomness
//! (decisions are logged through `tracing`, nothing else leaves the function).
//! The I/O around it ([`super::InboundProcessor`]) asks these functions at every step,
//! hands them what it found (the partnership lookup, how the unwrap ended, the dedup
//! claim, the publish) and does what they say. Building and signing an MDN is left to
//! the I/O part too (it needs our keys and a fresh Message-ID); the decision says what
//! the MDN reports ([`MdnPlan`]) and which key signs it ([`MdnSigning`]).

use std::sync::Arc;

use as2_partner::algorithms::{encryption_cipher, signing_digest};
use as2_protocol::As2Error;
use as2_protocol::headers::{As2RequestHeaders, Importance, MicAlgorithm};
use as2_protocol::mdn::{
    self, BuiltMdn, Disposition, DispositionStatus, MdnReport, ProcessingError,
};
use as2_protocol::unwrap::UnwrappedMessage;
use as2_rpc::mdn::v1::{
    EnqueueMdnDeliveryRequest, HeaderField, PreparedMdn, enqueue_mdn_delivery_request,
};
use as2_rpc::routing::v1::{AsyncMdnPolicy, EncryptionCipher, SigningDigest};
use bytes::Bytes;

use super::Answer;
use crate::dedup::{Claim, ClaimToken, DedupError, PendingAsyncMdn, StoredReceipt};
use crate::kafka::{PublishError, StoredRecord};
use crate::metrics::Outcome;
use crate::routes::Route;

/// A fault of ours or of a dependency: the answer is 503 with Retry-After and nothing is
/// acknowledged, so the partner sends the message again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable(pub &'static str);

impl Unavailable {
    /// The 503 answer with this reason, asking for a resend after `retry_after_secs`.
    pub fn answer(self, retry_after_secs: u64) -> Answer {
        Answer::unavailable(self.0, retry_after_secs)
    }
}

/// The settings the decisions depend on.
#[derive(Clone, Copy, Debug)]
pub struct DecisionSettings<'a> {
    /// The Reporting-UA of our MDNs.
    pub reporting_ua: &'a str,
    /// Key id for partnerships that name no decryption key.
    pub default_decryption_key_id: Option<&'a str>,
    /// Key id for partnerships that name no MDN signing key, and for unknown partners.
    pub default_signing_key_id: Option<&'a str>,
    /// Whether an MDN service is configured to deliver asynchronous MDNs.
    pub async_mdn_available: bool,
}

/// What the partnership lookup found.
#[derive(Clone, Copy, Debug)]
pub enum RouteLookup<'r> {
    /// The partnership of the (AS2-From, AS2-To) pair.
    Found(&'r Arc<Route>),
    /// No partnership for the pair.
    Unknown,
    /// The routing service could not answer.
    Failed,
}

/// What to do once the partnership lookup is done.
#[derive(Debug)]
pub enum Admission {
    /// Unwrap the message (decrypt, decompress, verify).
    Unwrap {
        /// The partnership.
        route: Arc<Route>,
        /// Our key that decrypts it, `None` when no key is configured.
        decryption_key_id: Option<String>,
    },
    /// Do not unwrap: answer with this rejection.
    Reject(Box<Rejection>),
    /// Answer 503.
    Unavailable(Unavailable),
}

/// How the unwrap ended.
#[derive(Debug)]
pub enum UnwrapOutcome {
    /// It ran to its end: the message, or why the message is bad.
    Finished(Result<UnwrappedMessage, As2Error>),
    /// It panicked or was cancelled: a fault of ours, not of the message.
    Crashed,
}

/// What to do with an unwrapped message.
#[derive(Debug)]
pub enum Verdict {
    /// Claim it against duplicates, publish it and answer "processed".
    Accept(UnwrappedMessage),
    /// Publish nothing; answer with this rejection.
    Reject(Rejection),
    /// Publish nothing; answer 503.
    Unavailable(Unavailable),
}

/// The answer for a message that is not processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The disposition (also when no MDN is sent: it is counted).
    pub status: DispositionStatus,
    /// What the partner gets.
    pub reply: RejectionReply,
}

impl Rejection {
    /// The metrics outcome of the rejection.
    pub fn outcome(&self) -> Outcome {
        Outcome::Rejected(self.status.clone())
    }
}

/// What the partner gets for a message that is not processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectionReply {
    /// No MDN was asked for: this answer (400 with the reason).
    Plain(Answer),
    /// An error MDN, signed as [`MdnSigning`] says.
    Mdn(Box<MdnPlan>, MdnSigning),
}

/// What an MDN reports and where it goes; built and signed by the I/O part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnPlan {
    /// The machine-readable report (the disposition).
    pub report: MdnReport,
    /// The human-readable explanation.
    pub text: String,
    /// Where to deliver it asynchronously (Receipt-Delivery-Option); `None`: in the
    /// response.
    pub async_url: Option<String>,
}

/// Which of our keys signs an MDN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MdnSigning {
    /// The MDN goes unsigned (none asked for, or none offered to the partnership).
    Unsigned,
    /// Signed with our key `key_id`; a key that cannot be loaded makes it a 503.
    Required {
        /// Our key id.
        key_id: String,
        /// The digest the partner asked for.
        digest: MicAlgorithm,
    },
    /// Signed with our key `key_id` when it can be loaded, unsigned otherwise (error MDNs
    /// to unknown partners).
    IfAvailable {
        /// Our key id.
        key_id: String,
        /// The digest the partner asked for.
        digest: MicAlgorithm,
    },
}

/// An MDN ready to go out: what to answer and what to hand to the MDN service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnReply {
    /// The answer to the request: the MDN itself, or a short text when the MDN is
    /// asynchronous.
    pub answer: Answer,
    /// The asynchronous MDN, to hand to the MDN service before answering.
    pub async_mdn: Option<PendingAsyncMdn>,
}

impl MdnReply {
    /// What to keep for duplicate detection: the answer, and the asynchronous MDN while
    /// it has not been handed over (a resend then hands it over).
    pub fn receipt(&self, handed_over: bool) -> StoredReceipt {
        StoredReceipt {
            status: self.answer.status,
            headers: self.answer.headers.clone(),
            body: self.answer.body.to_vec(),
            pending_async_mdn: if handed_over {
                None
            } else {
                self.async_mdn.clone()
            },
        }
    }
}

/// What to do after claiming the message against duplicates.
#[derive(Debug)]
pub enum AfterClaim {
    /// The claim is ours: publish.
    Proceed(ClaimToken),
    /// Processed before: answer as then, publish nothing.
    Replay(Box<Replay>),
    /// Another request is processing the same message: 503, with a Retry-After of at
    /// most the time left on its lease.
    InFlight(Unavailable, std::time::Duration),
    /// The dedup store cannot answer: 503.
    StoreUnavailable(Unavailable),
}

/// The answer to a resend of a processed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// The answer sent the first time.
    pub answer: Answer,
    /// An asynchronous MDN that was not handed over the first time: hand it over first
    /// (a failure is a 503), then store [`Replay::handed_over`].
    pub pending_async_mdn: Option<PendingAsyncMdn>,
    /// The receipt to store once the pending MDN is handed over.
    pub handed_over: StoredReceipt,
}

/// What to do after the publish.
#[derive(Debug)]
pub enum AfterPublish {
    /// Stored: answer "processed".
    Published(StoredRecord),
    /// Release the claim and answer 503.
    Unavailable(Unavailable),
    /// Release the claim and reject the message with this error (Kafka will never take
    /// the record).
    Refused(As2Error),
}

/// Reads the AS2 headers; a request without usable AS2-From, AS2-To or Message-ID gets
/// 400 with the reason and no MDN.
pub fn read_headers(headers: &[(String, String)]) -> Result<As2RequestHeaders, Answer> {
    As2RequestHeaders::parse(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    )
    .map_err(|error| {
        tracing::info!(%error, "rejected a request without usable AS2 headers");
        Answer::text(400, error.to_string())
    })
}

/// The outcome of a partner's MDN for one of our messages, by the answer's status.
pub fn partner_mdn_outcome(answer: &Answer) -> Outcome {
    match answer.status {
        200 => Outcome::Processed,
        503 => Outcome::Unavailable,
        _ => Outcome::BadRequest,
    }
}

impl DecisionSettings<'_> {
    /// What to do once the partnership lookup is done: unwrap, reject without unwrapping
    /// (unknown partner, a required signed receipt that is not offered) or 503 (no
    /// routing service, or an asynchronous MDN asked for without an MDN service).
    pub fn admit(&self, headers: &As2RequestHeaders, lookup: RouteLookup<'_>) -> Admission {
        let route = match lookup {
            RouteLookup::Found(route) => route,
            RouteLookup::Unknown => {
                return Admission::Reject(Box::new(self.unknown_partner(headers)));
            }
            RouteLookup::Failed => {
                return Admission::Unavailable(Unavailable(
                    "the partnership registry is unavailable, please resend later",
                ));
            }
        };
        if headers.receipt_delivery_option.is_some() && !self.async_mdn_available {
            return Admission::Unavailable(Unavailable(
                "asynchronous MDNs are not available, please resend later",
            ));
        }
        if let Some(refusal) = refused_receipt_signature(headers, route) {
            return match self.rejection(headers, route, &refusal) {
                Ok(rejection) => Admission::Reject(Box::new(rejection)),
                Err(unavailable) => Admission::Unavailable(unavailable),
            };
        }
        Admission::Unwrap {
            route: route.clone(),
            decryption_key_id: self.decryption_key_id(route).map(str::to_owned),
        }
    }

    /// The rejection of a message from an unknown (AS2-From, AS2-To) pair: an error MDN
    /// (`unknown-trading-partner`) in the response even when an asynchronous MDN was
    /// asked for (we do not call out to URLs of parties we do not know), signed with
    /// the default key when one is configured and loads.
    pub fn unknown_partner(&self, headers: &As2RequestHeaders) -> Rejection {
        let status =
            DispositionStatus::Error(ProcessingError::Other("unknown-trading-partner".to_owned()));
        tracing::info!("no partnership for this pair");
        let reason = format!(
            "no partnership for AS2-From {:?} and AS2-To {:?}",
            headers.as2_from.as_str(),
            headers.as2_to.as_str()
        );
        if !headers.wants_mdn() {
            return Rejection {
                status,
                reply: RejectionReply::Plain(Answer::text(400, reason)),
            };
        }
        let mut report = MdnReport::for_outcome(
            self.reporting_ua,
            headers,
            Err(&As2Error::InvalidArgument(reason.clone())),
        );
        report.disposition = Disposition::automatic(status.clone());
        let text = explanation(headers, &status, Some(&reason));
        // Never signed: a signature is a private-key operation, and anyone can send
        // messages under an unknown pair, so signing them would let anyone spend our
        // CPU (and a partner we have no partnership with has nothing to verify it with).
        let signing = MdnSigning::Unsigned;
        let plan = MdnPlan {
            report,
            text,
            async_url: None,
        };
        Rejection {
            status,
            reply: RejectionReply::Mdn(Box::new(plan), signing),
        }
    }

    /// What to do with the message after the unwrap: accept it, reject it, or answer
    /// 503 when the fault is ours (the unwrap crashed, or decryption failed while our
    /// decryption key is not available: `decryption_key_error` says why).
    pub fn judge(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        unwrapped: UnwrapOutcome,
        decryption_key_error: Option<&str>,
    ) -> Verdict {
        let unwrapped = match unwrapped {
            UnwrapOutcome::Finished(unwrapped) => unwrapped,
            UnwrapOutcome::Crashed => {
                return Verdict::Unavailable(Unavailable(
                    "internal failure while unwrapping, please resend later",
                ));
            }
        };
        match unwrapped.and_then(|message| enforce_policy(route, message)) {
            Ok(message) => Verdict::Accept(message),
            Err(As2Error::DecryptionFailed(reason)) if decryption_key_error.is_some() => {
                tracing::error!(%reason, key_error = decryption_key_error, "cannot decrypt: our decryption key is not available");
                Verdict::Unavailable(Unavailable(
                    "our decryption key is not available, please resend later",
                ))
            }
            Err(error) => match self.rejection(headers, route, &error) {
                Ok(rejection) => Verdict::Reject(rejection),
                Err(unavailable) => Verdict::Unavailable(unavailable),
            },
        }
    }

    /// The rejection of a message of a known partnership that failed with `error`
    /// before it was known to be authentic: 400 with the reason when no MDN was asked
    /// for, else an error MDN (`processed/error` or `failed/Failure`). The MDN goes in
    /// the response, not to the Receipt-Delivery-Option URL, when the message did not
    /// authenticate as the partnership requires ([`honours_async_url`]): a URL from a
    /// message nobody vouches for is never called.
    pub fn rejection(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        error: &As2Error,
    ) -> Result<Rejection, Unavailable> {
        self.rejection_as(headers, route, error, honours_async_url(route, error))
    }

    /// The rejection of a message that was unwrapped and passed the partnership's
    /// policy but could not be stored (Kafka refused the record): the error MDN is
    /// delivered as asked.
    pub fn rejection_of_accepted(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        error: &As2Error,
    ) -> Result<Rejection, Unavailable> {
        self.rejection_as(headers, route, error, true)
    }

    fn rejection_as(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        error: &As2Error,
        authenticated: bool,
    ) -> Result<Rejection, Unavailable> {
        let status = error.disposition_status();
        // The detail keeps what the answer leaves out (why a decryption failed).
        tracing::info!(error = %error.detail(), disposition = %status, "message rejected");
        if !headers.wants_mdn() {
            return Ok(Rejection {
                status,
                reply: RejectionReply::Plain(Answer::text(400, error.to_string())),
            });
        }
        let report = MdnReport::for_outcome(self.reporting_ua, headers, Err(error));
        let text = explanation(headers, &status, Some(&error.to_string()));
        let signing = self.mdn_signing(headers, route)?;
        let async_url = async_url(headers);
        if async_url.is_some() && !authenticated {
            tracing::info!(
                "the message did not authenticate as the partnership requires: its error mdn goes in the response, not to its receipt-delivery-option url"
            );
        }
        let plan = MdnPlan {
            report,
            text,
            async_url: async_url.filter(|_| authenticated),
        };
        Ok(Rejection {
            status,
            reply: RejectionReply::Mdn(Box::new(plan), signing),
        })
    }

    /// The "processed" MDN for an accepted message, delivered as asked.
    pub fn processed_mdn(
        &self,
        headers: &As2RequestHeaders,
        message: &UnwrappedMessage,
    ) -> MdnPlan {
        MdnPlan {
            report: MdnReport::for_outcome(self.reporting_ua, headers, Ok(message)),
            text: explanation(headers, &DispositionStatus::Processed, None),
            async_url: async_url(headers),
        }
    }

    /// Which key signs the MDN for a message of `route`: none when no signed receipt is
    /// asked for or the partnership does not offer signed MDNs; 503 when one is asked
    /// for and offered but no key is configured.
    pub fn mdn_signing(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
    ) -> Result<MdnSigning, Unavailable> {
        let allow_md5 = route
            .partnership
            .security_policy
            .as_ref()
            .is_some_and(|policy| policy.allow_md5);
        let Some(digest) = signed_receipt_digest(headers, allow_md5) else {
            return Ok(MdnSigning::Unsigned);
        };
        if !signed_mdn_offered(route) {
            return Ok(MdnSigning::Unsigned);
        }
        let Some(key_id) =
            non_empty(&route.partnership.mdn_signing_key_id).or(self.default_signing_key_id)
        else {
            tracing::error!("a signed MDN was requested but no signing key is configured");
            return Err(Unavailable(
                "our MDN signing key is not available, please resend later",
            ));
        };
        Ok(MdnSigning::Required {
            key_id: key_id.to_owned(),
            digest,
        })
    }

    /// Our key that decrypts messages of `route`.
    pub fn decryption_key_id<'a>(&'a self, route: &'a Route) -> Option<&'a str> {
        non_empty(&route.partnership.decryption_key_id).or(self.default_decryption_key_id)
    }
}

impl MdnPlan {
    /// What a built MDN turns into: the answer itself when it goes in the response;
    /// else a short 200 text and the MDN to hand to the MDN service.
    pub fn reply(&self, built: BuiltMdn) -> MdnReply {
        let Some(url) = &self.async_url else {
            return MdnReply {
                answer: Answer {
                    status: 200,
                    headers: built.headers,
                    body: Bytes::from(built.body),
                },
                async_mdn: None,
            };
        };
        let text = if self.report.disposition.status.is_processed() {
            "message received, the MDN follows asynchronously"
        } else {
            "error MDN queued for asynchronous delivery"
        };
        MdnReply {
            answer: Answer::text(200, text),
            async_mdn: Some(PendingAsyncMdn {
                url: url.clone(),
                headers: built.headers,
                body: built.body,
            }),
        }
    }
}

/// What to do after claiming the message against duplicates.
pub fn after_claim(claim: Result<Claim, DedupError>) -> AfterClaim {
    match claim {
        Ok(Claim::Claimed(token)) => AfterClaim::Proceed(token),
        Ok(Claim::InFlight { retry_after }) => AfterClaim::InFlight(
            Unavailable("this message is being processed, please resend later"),
            retry_after,
        ),
        Ok(Claim::Done(receipt)) => {
            tracing::info!("duplicate of a processed message, answering as before");
            AfterClaim::Replay(Box::new(replay(receipt)))
        }
        Err(error) => {
            tracing::warn!(%error, "dedup claim failed");
            AfterClaim::StoreUnavailable(Unavailable(
                "the message store is unavailable, please resend later",
            ))
        }
    }
}

/// The answer to a resend of a processed message: what was answered then, after handing
/// over an asynchronous MDN that could not be handed over the first time.
pub fn replay(receipt: StoredReceipt) -> Replay {
    let answer = Answer {
        status: receipt.status,
        headers: receipt.headers.clone(),
        body: Bytes::from(receipt.body.clone()),
    };
    let mut handed_over = receipt;
    let pending_async_mdn = handed_over.pending_async_mdn.take();
    Replay {
        answer,
        pending_async_mdn,
        handed_over,
    }
}

/// What to do after the publish.
pub fn after_publish(published: Result<StoredRecord, PublishError>) -> AfterPublish {
    match published {
        Ok(stored) => AfterPublish::Published(stored),
        Err(PublishError::Unavailable(error)) => {
            tracing::warn!(%error, "publish failed");
            AfterPublish::Unavailable(Unavailable(
                "the document store is unavailable, please resend later",
            ))
        }
        Err(PublishError::Rejected(error)) => {
            tracing::error!(%error, "kafka refused the document");
            AfterPublish::Refused(As2Error::InvalidArgument(format!(
                "the document could not be stored: {error}"
            )))
        }
    }
}

/// Whether the asynchronous MDN of a message rejected with `error` may go to the
/// message's Receipt-Delivery-Option URL: only when the message authenticated as the
/// partnership requires. A message of a partnership that requires a signature was
/// rejected before its signature was known to be good (or because it was not), and a
/// signature that failed to verify marks a message as not the partner's whatever the
/// partnership requires; both get their MDN in the response instead.
pub fn honours_async_url(route: &Route, error: &As2Error) -> bool {
    let requires_signature = route
        .partnership
        .security_policy
        .as_ref()
        .is_some_and(|policy| policy.require_signature);
    !requires_signature
        && !matches!(
            error,
            As2Error::AuthenticationFailed(_) | As2Error::IntegrityCheckFailed(_)
        )
}

/// The request that hands `mdn` to the MDN service, for the message `headers` of the
/// partnership `partnership_id` whose asynchronous MDN policy is `policy`.
pub fn enqueue_request(
    headers: &As2RequestHeaders,
    partnership_id: &str,
    policy: Option<AsyncMdnPolicy>,
    mdn: &PendingAsyncMdn,
    traceparent: String,
) -> EnqueueMdnDeliveryRequest {
    EnqueueMdnDeliveryRequest {
        policy,
        original_message_id: headers.message_id.original().to_owned(),
        partnership_id: partnership_id.to_owned(),
        // The original message's pair, as the contract asks (the MDN itself carries the
        // reverse pair in its prepared headers).
        as2_from: headers.as2_from.as_str().to_owned(),
        as2_to: headers.as2_to.as_str().to_owned(),
        delivery_url: mdn.url.clone(),
        traceparent,
        mdn: Some(enqueue_mdn_delivery_request::Mdn::Prepared(PreparedMdn {
            headers: mdn
                .headers
                .iter()
                .map(|(name, value)| HeaderField {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            body: mdn.body.clone(),
        })),
    }
}

fn async_url(headers: &As2RequestHeaders) -> Option<String> {
    headers
        .receipt_delivery_option
        .as_ref()
        .map(|option| option.url().to_owned())
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
    let required = protocol.importance == Importance::Required;
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

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
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
    use as2_protocol::ReceivedContentMic;
    use as2_protocol::cms::SignatureScheme;
    use as2_protocol::unwrap::{Payload, SecurityFacts, SignatureFacts, SignedContentForm};
    use as2_rpc::routing::v1::{MdnPreferences, Partnership, SecurityPolicy};
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    use super::*;
    use crate::inbound::tests::{ASYNC_MDN, MDN_URL, REQUEST_HEADERS, RETRY_AFTER_SECS, SYNC_MDN};

    const SIGNED_RECEIPT: (&str, &str) = (
        "Disposition-Notification-Options",
        "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-384, sha256",
    );
    const SIGNED_RECEIPT_REQUIRED: (&str, &str) = (
        "Disposition-Notification-Options",
        "signed-receipt-protocol=required, pkcs7-signature; signed-receipt-micalg=optional, sha256",
    );
    const UNSUPPORTED_MICALG_REQUIRED: (&str, &str) = (
        "Disposition-Notification-Options",
        "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=required, whirlpool",
    );

    /// The edge's settings in a row.
    #[derive(Clone, Copy)]
    enum Config {
        /// Default keys configured, an MDN service configured.
        Standard,
        /// No MDN service.
        NoMdnService,
        /// No default keys.
        NoDefaultKeys,
    }

    impl Config {
        fn decisions(self) -> DecisionSettings<'static> {
            DecisionSettings {
                reporting_ua: "edge under test",
                default_decryption_key_id: match self {
                    Self::NoDefaultKeys => None,
                    Self::Standard | Self::NoMdnService => Some("default-decryption"),
                },
                default_signing_key_id: match self {
                    Self::NoDefaultKeys => None,
                    Self::Standard | Self::NoMdnService => Some("default-signing"),
                },
                async_mdn_available: !matches!(self, Self::NoMdnService),
            }
        }
    }

    /// The partnership in a row.
    #[derive(Clone, Copy)]
    enum Partner {
        /// Names its own keys, no policy.
        Plain,
        /// Names no keys (the defaults apply).
        NoKeys,
        /// Does not offer signed MDNs.
        NoSignedMdn,
        /// Allows SHA-256 signatures only.
        Sha256Only,
    }

    fn route(partner: Partner) -> Arc<Route> {
        let mut partnership = Partnership {
            id: "p-1".to_owned(),
            as2_from: "partner".to_owned(),
            as2_to: "us".to_owned(),
            kafka_topic: "inbound.p-1".to_owned(),
            decryption_key_id: "p-decryption".to_owned(),
            mdn_signing_key_id: "p-signing".to_owned(),
            ..Partnership::default()
        };
        match partner {
            Partner::Plain => {}
            Partner::NoKeys => {
                partnership.decryption_key_id.clear();
                partnership.mdn_signing_key_id.clear();
            }
            Partner::NoSignedMdn => {
                partnership.mdn_preferences = Some(MdnPreferences {
                    offer_signed_mdn: Some(false),
                    ..MdnPreferences::default()
                });
            }
            Partner::Sha256Only => {
                partnership.security_policy = Some(SecurityPolicy {
                    allowed_signing_digests: vec![SigningDigest::Sha256 as i32],
                    ..SecurityPolicy::default()
                });
            }
        }
        Arc::new(Route::new(partnership))
    }

    fn request(extra: &[(&str, &str)]) -> As2RequestHeaders {
        let mut headers = REQUEST_HEADERS.to_vec();
        headers.extend_from_slice(extra);
        As2RequestHeaders::parse(headers).expect("test headers parse")
    }

    fn unwrapped(signature_digest: Option<MicAlgorithm>) -> UnwrappedMessage {
        UnwrappedMessage {
            payload: Payload {
                content_type: "application/edi-x12".to_owned(),
                filename: None,
                data: b"ISA*00*~".to_vec(),
            },
            facts: SecurityFacts {
                signature: signature_digest.map(|digest| SignatureFacts {
                    digest,
                    scheme: SignatureScheme::RsaPkcs1v15,
                    certificate_index: 0,
                    opaque: false,
                    form: SignedContentForm::Exact,
                }),
                encryption: None,
                compression: None,
            },
            mic: ReceivedContentMic {
                digest: vec![7; 32],
                algorithm: MicAlgorithm::Sha256,
            },
        }
    }

    /// The stand-in for a built MDN (building is the I/O part's).
    fn built_mdn() -> BuiltMdn {
        BuiltMdn {
            headers: vec![(
                "Content-Type".to_owned(),
                "multipart/report; report-type=disposition-notification; boundary=b".to_owned(),
            )],
            body: b"--b--\r\n".to_vec(),
        }
    }

    fn stored(status: u16, pending: bool) -> StoredReceipt {
        StoredReceipt {
            status,
            headers: vec![("Content-Type".to_owned(), "multipart/report".to_owned())],
            body: b"the first MDN".to_vec(),
            pending_async_mdn: pending.then(|| PendingAsyncMdn {
                url: MDN_URL.to_owned(),
                headers: Vec::new(),
                body: b"the async MDN".to_vec(),
            }),
        }
    }

    /// What the partnership lookup found, in a row.
    #[derive(Clone, Copy)]
    enum Found {
        Partnership(Partner),
        Nothing,
        Failure,
    }

    /// The step a row decides, with what the I/O found before it.
    enum Step {
        /// The request's headers are read.
        Headers(&'static [(&'static str, &'static str)]),
        /// The partnership lookup is done.
        Lookup(&'static [(&'static str, &'static str)], Found),
        /// The unwrap is done.
        Unwrap {
            headers: &'static [(&'static str, &'static str)],
            partner: Partner,
            unwrapped: fn() -> UnwrapOutcome,
            decryption_key_error: Option<&'static str>,
        },
        /// The dedup claim is answered.
        Claim(fn() -> Result<Claim, DedupError>),
        /// The publish is answered.
        Publish(
            &'static [(&'static str, &'static str)],
            fn() -> Result<StoredRecord, PublishError>,
        ),
        /// The document is published: the processed MDN, and what dedup keeps when the
        /// asynchronous MDN could not be handed over.
        Processed(&'static [(&'static str, &'static str)], Partner),
    }

    /// What comes after the step.
    #[derive(Debug, PartialEq, Eq)]
    enum Next {
        /// Answer the partner now.
        Answer,
        /// Look the partnership up.
        Lookup,
        /// Unwrap, decrypting with this key.
        Unwrap(Option<String>),
        /// Claim and publish.
        Publish,
    }

    /// What a step decided, as the partner and our stores see it.
    #[derive(Debug, PartialEq, Eq)]
    struct Decided {
        next: Next,
        /// HTTP status of the answer.
        status: Option<u16>,
        /// The Retry-After header of the answer.
        retry_after: Option<String>,
        /// The MDN's disposition (or the counted one of a 400 without MDN).
        disposition: Option<String>,
        /// Where the MDN goes: `None` (no MDN), `Some(None)` in the response,
        /// `Some(Some(url))` to the MDN service.
        mdn_to: Option<Option<&'static str>>,
        /// The key that signs the MDN.
        signing: Option<MdnSigning>,
        /// What dedup keeps: status and whether an async MDN is still pending.
        stored: Option<(u16, bool)>,
    }

    impl Decided {
        fn next(next: Next) -> Self {
            Self {
                next,
                status: None,
                retry_after: None,
                disposition: None,
                mdn_to: None,
                signing: None,
                stored: None,
            }
        }

        fn answer(answer: &Answer) -> Self {
            Self {
                status: Some(answer.status),
                retry_after: answer
                    .headers
                    .iter()
                    .find(|(name, _)| name == "Retry-After")
                    .map(|(_, value)| value.clone()),
                ..Self::next(Next::Answer)
            }
        }

        fn unavailable(unavailable: Unavailable) -> Self {
            Self::answer(&unavailable.answer(RETRY_AFTER_SECS))
        }

        fn rejection(rejection: Rejection) -> Self {
            match rejection.reply {
                RejectionReply::Plain(answer) => Self {
                    disposition: Some(rejection.status.to_string()),
                    ..Self::answer(&answer)
                },
                RejectionReply::Mdn(plan, signing) => {
                    assert_eq!(plan.report.disposition.status, rejection.status);
                    Self {
                        signing: Some(signing),
                        ..Self::mdn(&plan)
                    }
                }
            }
        }

        fn mdn(plan: &MdnPlan) -> Self {
            let reply = plan.reply(built_mdn());
            assert_eq!(
                reply.async_mdn.as_ref().map(|mdn| mdn.url.as_str()),
                plan.async_url.as_deref()
            );
            Self {
                disposition: Some(plan.report.disposition.status.to_string()),
                mdn_to: Some(plan.async_url.as_ref().map(|_| MDN_URL)),
                ..Self::answer(&reply.answer)
            }
        }
    }

    fn decide(config: Config, step: &Step) -> Decided {
        let decisions = config.decisions();
        match step {
            Step::Headers(headers) => {
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect();
                match read_headers(&headers) {
                    Ok(_) => Decided::next(Next::Lookup),
                    Err(answer) => Decided::answer(&answer),
                }
            }
            Step::Lookup(headers, found) => {
                let headers = request(headers);
                let route = match found {
                    Found::Partnership(partner) => Some(route(*partner)),
                    Found::Nothing | Found::Failure => None,
                };
                let lookup = match (found, &route) {
                    (Found::Partnership(_), Some(route)) => RouteLookup::Found(route),
                    (Found::Failure, _) => RouteLookup::Failed,
                    _ => RouteLookup::Unknown,
                };
                match decisions.admit(&headers, lookup) {
                    Admission::Unwrap {
                        decryption_key_id,
                        route: admitted,
                    } => {
                        assert_eq!(admitted.partnership.id, "p-1");
                        Decided::next(Next::Unwrap(decryption_key_id))
                    }
                    Admission::Reject(rejection) => Decided::rejection(*rejection),
                    Admission::Unavailable(unavailable) => Decided::unavailable(unavailable),
                }
            }
            Step::Unwrap {
                headers,
                partner,
                unwrapped,
                decryption_key_error,
            } => {
                let headers = request(headers);
                let route = route(*partner);
                match decisions.judge(&headers, &route, unwrapped(), *decryption_key_error) {
                    Verdict::Accept(_) => Decided::next(Next::Publish),
                    Verdict::Reject(rejection) => Decided::rejection(rejection),
                    Verdict::Unavailable(unavailable) => Decided::unavailable(unavailable),
                }
            }
            Step::Claim(claim) => match after_claim(claim()) {
                AfterClaim::Proceed(_) => Decided::next(Next::Publish),
                AfterClaim::Replay(replay) => Decided {
                    // A pending MDN goes to the MDN service before the answer.
                    mdn_to: replay.pending_async_mdn.as_ref().map(|_| Some(MDN_URL)),
                    stored: Some((
                        replay.handed_over.status,
                        replay.handed_over.pending_async_mdn.is_some(),
                    )),
                    ..Decided::answer(&replay.answer)
                },
                AfterClaim::InFlight(unavailable, _)
                | AfterClaim::StoreUnavailable(unavailable) => Decided::unavailable(unavailable),
            },
            Step::Publish(headers, published) => match after_publish(published()) {
                AfterPublish::Published(_) => Decided::next(Next::Answer),
                AfterPublish::Unavailable(unavailable) => Decided::unavailable(unavailable),
                AfterPublish::Refused(error) => {
                    match decisions.rejection(&request(headers), &route(Partner::Plain), &error) {
                        Ok(rejection) => Decided::rejection(rejection),
                        Err(unavailable) => Decided::unavailable(unavailable),
                    }
                }
            },
            Step::Processed(headers, partner) => {
                let headers = request(headers);
                let route = route(*partner);
                let signing = match decisions.mdn_signing(&headers, &route) {
                    Ok(signing) => signing,
                    Err(unavailable) => return Decided::unavailable(unavailable),
                };
                let plan = decisions.processed_mdn(&headers, &unwrapped(None));
                let receipt = plan.reply(built_mdn()).receipt(false);
                Decided {
                    signing: Some(signing),
                    stored: Some((receipt.status, receipt.pending_async_mdn.is_some())),
                    ..Decided::mdn(&plan)
                }
            }
        }
    }

    struct Row {
        name: &'static str,
        config: Config,
        step: Step,
        expect: Decided,
    }

    fn answer(status: u16) -> Decided {
        Decided {
            status: Some(status),
            ..Decided::next(Next::Answer)
        }
    }

    fn retry_later() -> Decided {
        Decided {
            retry_after: Some(RETRY_AFTER_SECS.to_string()),
            ..answer(503)
        }
    }

    fn with_mdn(disposition: &str, to: Option<&'static str>, signing: MdnSigning) -> Decided {
        Decided {
            disposition: Some(disposition.to_owned()),
            mdn_to: Some(to),
            signing: Some(signing),
            ..answer(200)
        }
    }

    fn bad_request(disposition: &str) -> Decided {
        Decided {
            disposition: Some(disposition.to_owned()),
            ..answer(400)
        }
    }

    fn required(key_id: &str, digest: MicAlgorithm) -> MdnSigning {
        MdnSigning::Required {
            key_id: key_id.to_owned(),
            digest,
        }
    }

    macro_rules! unwrap_failure {
        ($error:expr) => {{
            fn outcome() -> UnwrapOutcome {
                UnwrapOutcome::Finished(Err($error))
            }
            outcome as fn() -> UnwrapOutcome
        }};
    }

    fn rows() -> Vec<Row> {
        vec![
            // The outcome table of the module docs, row by row.
            Row {
                name: "AS2-From missing: 400 without MDN",
                config: Config::Standard,
                step: Step::Headers(&[("AS2-To", "us"), ("Message-ID", "<m@p>"), SYNC_MDN]),
                expect: answer(400),
            },
            Row {
                name: "Message-ID malformed: 400 without MDN",
                config: Config::Standard,
                step: Step::Headers(&[
                    ("AS2-From", "partner"),
                    ("AS2-To", "us"),
                    ("Message-ID", "<>"),
                ]),
                expect: answer(400),
            },
            Row {
                name: "bad signature: error MDN in the response, nothing published",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::AuthenticationFailed(
                        "bad signature".to_owned()
                    )),
                    decryption_key_error: None,
                },
                expect: with_mdn(
                    "processed/error: authentication-failed",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "required MIC algorithms unsupported, async MDN: failed/Failure to the MDN service, signed with SHA-256",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN, ASYNC_MDN, UNSUPPORTED_MICALG_REQUIRED],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::UnsupportedMicAlgorithms(
                        "whirlpool".to_owned()
                    )),
                    decryption_key_error: None,
                },
                expect: with_mdn(
                    "failed/Failure: unsupported MIC-algorithms",
                    Some(MDN_URL),
                    required("p-signing", MicAlgorithm::Sha256),
                ),
            },
            Row {
                name: "unknown partner: unknown-trading-partner MDN in the response",
                config: Config::Standard,
                step: Step::Lookup(&[SYNC_MDN], Found::Nothing),
                expect: with_mdn(
                    "processed/error: unknown-trading-partner",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "unknown partner asking for an async signed MDN: in the response all the same, unsigned (no private-key work for strangers)",
                config: Config::Standard,
                step: Step::Lookup(&[SYNC_MDN, ASYNC_MDN, SIGNED_RECEIPT], Found::Nothing),
                expect: with_mdn(
                    "processed/error: unknown-trading-partner",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "processed, sync MDN: the MDN in the response, kept for resends",
                config: Config::Standard,
                step: Step::Processed(&[SYNC_MDN], Partner::Plain),
                expect: Decided {
                    stored: Some((200, false)),
                    ..with_mdn("processed", None, MdnSigning::Unsigned)
                },
            },
            Row {
                name: "processed, async signed MDN: 200 and the MDN to the MDN service, pending until handed over",
                config: Config::Standard,
                step: Step::Processed(&[SYNC_MDN, ASYNC_MDN, SIGNED_RECEIPT], Partner::Plain),
                expect: Decided {
                    stored: Some((200, true)),
                    ..with_mdn(
                        "processed",
                        Some(MDN_URL),
                        required("p-signing", MicAlgorithm::Sha384),
                    )
                },
            },
            Row {
                name: "processed before: the stored answer again, nothing published",
                config: Config::Standard,
                step: Step::Claim(|| Ok(Claim::Done(stored(200, false)))),
                expect: Decided {
                    stored: Some((200, false)),
                    ..answer(200)
                },
            },
            Row {
                name: "processed before, async MDN not handed over then: hand it over, then the stored answer",
                config: Config::Standard,
                step: Step::Claim(|| Ok(Claim::Done(stored(200, true)))),
                expect: Decided {
                    mdn_to: Some(Some(MDN_URL)),
                    stored: Some((200, false)),
                    ..answer(200)
                },
            },
            Row {
                name: "being processed right now: 503 with Retry-After",
                config: Config::Standard,
                step: Step::Claim(|| {
                    Ok(Claim::InFlight {
                        retry_after: std::time::Duration::from_secs(3),
                    })
                }),
                expect: retry_later(),
            },
            Row {
                name: "dedup store unavailable: 503 with Retry-After",
                config: Config::Standard,
                step: Step::Claim(|| {
                    Err(DedupError::Corrupt(
                        serde_json::from_str::<u8>("not json").expect_err("not json"),
                    ))
                }),
                expect: retry_later(),
            },
            Row {
                name: "Kafka unavailable: 503 with Retry-After",
                config: Config::Standard,
                step: Step::Publish(&[SYNC_MDN], || {
                    Err(PublishError::Unavailable(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageTimedOut,
                    )))
                }),
                expect: retry_later(),
            },
            Row {
                name: "routing service unavailable: 503 with Retry-After",
                config: Config::Standard,
                step: Step::Lookup(&[SYNC_MDN], Found::Failure),
                expect: retry_later(),
            },
            Row {
                name: "async MDN asked for without an MDN service: 503 with Retry-After",
                config: Config::NoMdnService,
                step: Step::Lookup(&[SYNC_MDN, ASYNC_MDN], Found::Partnership(Partner::Plain)),
                expect: retry_later(),
            },
            Row {
                name: "no MDN asked for, message bad: 400 with the reason",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::IntegrityCheckFailed(
                        "digest mismatch".to_owned()
                    )),
                    decryption_key_error: None,
                },
                expect: bad_request("processed/error: integrity-check-failed"),
            },
            // Edge cases of the code.
            Row {
                name: "headers complete: go on",
                config: Config::Standard,
                step: Step::Headers(&[
                    ("AS2-From", "partner"),
                    ("AS2-To", "us"),
                    ("Message-ID", "<m@p>"),
                ]),
                expect: Decided::next(Next::Lookup),
            },
            Row {
                name: "unknown partner, no MDN asked for: 400",
                config: Config::Standard,
                step: Step::Lookup(&[], Found::Nothing),
                expect: bad_request("processed/error: unknown-trading-partner"),
            },
            Row {
                name: "unknown partner asking for a signed MDN without a default key: unsigned",
                config: Config::NoDefaultKeys,
                step: Step::Lookup(&[SYNC_MDN, SIGNED_RECEIPT], Found::Nothing),
                expect: with_mdn(
                    "processed/error: unknown-trading-partner",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "known partner: unwrap with the default decryption key",
                config: Config::Standard,
                step: Step::Lookup(&[SYNC_MDN], Found::Partnership(Partner::NoKeys)),
                expect: Decided::next(Next::Unwrap(Some("default-decryption".to_owned()))),
            },
            Row {
                name: "known partner naming its decryption key: unwrap with that key",
                config: Config::Standard,
                step: Step::Lookup(&[SYNC_MDN], Found::Partnership(Partner::Plain)),
                expect: Decided::next(Next::Unwrap(Some("p-decryption".to_owned()))),
            },
            Row {
                name: "known partner, no decryption key anywhere: unwrap without one",
                config: Config::NoDefaultKeys,
                step: Step::Lookup(&[], Found::Partnership(Partner::NoKeys)),
                expect: Decided::next(Next::Unwrap(None)),
            },
            Row {
                name: "async MDN asked for without an MDN service but no partnership: the unknown-partner MDN",
                config: Config::NoMdnService,
                step: Step::Lookup(&[SYNC_MDN, ASYNC_MDN], Found::Nothing),
                expect: with_mdn(
                    "processed/error: unknown-trading-partner",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "signed receipt required, not offered: failed/Failure unsigned, without unwrapping",
                config: Config::Standard,
                step: Step::Lookup(
                    &[SYNC_MDN, SIGNED_RECEIPT_REQUIRED],
                    Found::Partnership(Partner::NoSignedMdn),
                ),
                expect: with_mdn(
                    "failed/Failure: unsupported format",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "signed receipt required, not offered, async: failed/Failure to the MDN service",
                config: Config::Standard,
                step: Step::Lookup(
                    &[SYNC_MDN, ASYNC_MDN, SIGNED_RECEIPT_REQUIRED],
                    Found::Partnership(Partner::NoSignedMdn),
                ),
                expect: with_mdn(
                    "failed/Failure: unsupported format",
                    Some(MDN_URL),
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "signed receipt optional, not offered: unwrap, the MDN goes unsigned",
                config: Config::Standard,
                step: Step::Lookup(
                    &[SYNC_MDN, SIGNED_RECEIPT],
                    Found::Partnership(Partner::NoSignedMdn),
                ),
                expect: Decided::next(Next::Unwrap(Some("p-decryption".to_owned()))),
            },
            Row {
                name: "processed, signed receipt not offered: unsigned MDN",
                config: Config::Standard,
                step: Step::Processed(&[SYNC_MDN, SIGNED_RECEIPT], Partner::NoSignedMdn),
                expect: Decided {
                    stored: Some((200, false)),
                    ..with_mdn("processed", None, MdnSigning::Unsigned)
                },
            },
            Row {
                name: "processed, signed receipt, partnership names no key: the default key",
                config: Config::Standard,
                step: Step::Processed(&[SYNC_MDN, SIGNED_RECEIPT], Partner::NoKeys),
                expect: Decided {
                    stored: Some((200, false)),
                    ..with_mdn(
                        "processed",
                        None,
                        required("default-signing", MicAlgorithm::Sha384),
                    )
                },
            },
            Row {
                name: "processed, signed receipt, no signing key anywhere: 503",
                config: Config::NoDefaultKeys,
                step: Step::Processed(&[SYNC_MDN, SIGNED_RECEIPT], Partner::NoKeys),
                expect: retry_later(),
            },
            Row {
                name: "bad message, signed receipt, no signing key anywhere: 503 rather than an unsigned error MDN",
                config: Config::NoDefaultKeys,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN, SIGNED_RECEIPT],
                    partner: Partner::NoKeys,
                    unwrapped: unwrap_failure!(As2Error::AuthenticationFailed(
                        "bad signature".to_owned()
                    )),
                    decryption_key_error: None,
                },
                expect: retry_later(),
            },
            Row {
                name: "decryption failed while our key is missing: 503, no MDN",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::DecryptionFailed(
                        "no recipient matches".to_owned()
                    )),
                    decryption_key_error: Some("cannot read key"),
                },
                expect: retry_later(),
            },
            Row {
                name: "decryption failed with our key loaded: decryption-failed MDN",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::DecryptionFailed(
                        "no recipient matches".to_owned()
                    )),
                    decryption_key_error: None,
                },
                expect: with_mdn(
                    "processed/error: decryption-failed",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "other failures while our key is missing: the message's fault, an error MDN",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Plain,
                    unwrapped: unwrap_failure!(As2Error::MalformedMime("no boundary".to_owned())),
                    decryption_key_error: Some("cannot read key"),
                },
                expect: with_mdn(
                    "processed/error: unexpected-processing-error",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "our unwrap crashed: 503 with Retry-After, not an error MDN",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN, SIGNED_RECEIPT],
                    partner: Partner::Plain,
                    unwrapped: || UnwrapOutcome::Crashed,
                    decryption_key_error: None,
                },
                expect: retry_later(),
            },
            Row {
                name: "our unwrap crashed, no MDN asked for: 503 all the same, not 400",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[],
                    partner: Partner::Plain,
                    unwrapped: || UnwrapOutcome::Crashed,
                    decryption_key_error: None,
                },
                expect: retry_later(),
            },
            Row {
                name: "unwrapped and within the policy: publish",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Sha256Only,
                    unwrapped: || {
                        UnwrapOutcome::Finished(Ok(unwrapped(Some(MicAlgorithm::Sha256))))
                    },
                    decryption_key_error: None,
                },
                expect: Decided::next(Next::Publish),
            },
            Row {
                name: "signature digest outside the policy: insufficient-message-security MDN",
                config: Config::Standard,
                step: Step::Unwrap {
                    headers: &[SYNC_MDN],
                    partner: Partner::Sha256Only,
                    unwrapped: || UnwrapOutcome::Finished(Ok(unwrapped(Some(MicAlgorithm::Sha1)))),
                    decryption_key_error: None,
                },
                expect: with_mdn(
                    "processed/error: insufficient-message-security",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "Kafka refuses the record for good: error MDN, nothing published",
                config: Config::Standard,
                step: Step::Publish(&[SYNC_MDN], || {
                    Err(PublishError::Rejected(KafkaError::MessageProduction(
                        RDKafkaErrorCode::MessageSizeTooLarge,
                    )))
                }),
                expect: with_mdn(
                    "processed/error: unexpected-processing-error",
                    None,
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "Kafka refuses the record, async MDN: the error MDN to the MDN service",
                config: Config::Standard,
                step: Step::Publish(&[SYNC_MDN, ASYNC_MDN], || {
                    Err(PublishError::Rejected(KafkaError::MessageProduction(
                        RDKafkaErrorCode::TopicAuthorizationFailed,
                    )))
                }),
                expect: with_mdn(
                    "processed/error: unexpected-processing-error",
                    Some(MDN_URL),
                    MdnSigning::Unsigned,
                ),
            },
            Row {
                name: "published: answer with the processed MDN",
                config: Config::Standard,
                step: Step::Publish(&[SYNC_MDN], || {
                    Ok(StoredRecord {
                        partition: 0,
                        offset: 7,
                    })
                }),
                expect: Decided::next(Next::Answer),
            },
        ]
    }

    #[test]
    fn every_outcome_is_decided_as_the_module_docs_say() {
        let mut failures = Vec::new();
        for row in rows() {
            let decided = decide(row.config, &row.step);
            if decided != row.expect {
                failures.push(format!(
                    "{}:\n  expected {:?}\n  decided  {:?}",
                    row.name, row.expect, decided
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn async_replies_say_what_follows_and_keep_the_mdn_until_handed_over() {
        let decisions = Config::Standard.decisions();
        let headers = request(&[SYNC_MDN, ASYNC_MDN]);
        let plan = decisions.processed_mdn(&headers, &unwrapped(None));
        let reply = plan.reply(built_mdn());
        assert_eq!(
            reply.answer,
            Answer::text(200, "message received, the MDN follows asynchronously")
        );
        let pending = reply.async_mdn.clone().expect("an async MDN");
        assert_eq!(pending.url, MDN_URL);
        assert_eq!(pending.body, built_mdn().body);
        assert_eq!(reply.receipt(false).pending_async_mdn, Some(pending));
        assert_eq!(reply.receipt(true).pending_async_mdn, None);
        assert_eq!(reply.receipt(true).body, reply.answer.body.to_vec());

        let error = As2Error::DecompressionFailed("corrupt".to_owned());
        let rejection = decisions
            .rejection(&headers, &route(Partner::Plain), &error)
            .expect("a rejection");
        let RejectionReply::Mdn(plan, _) = rejection.reply else {
            panic!("an error MDN was asked for");
        };
        assert_eq!(
            plan.reply(built_mdn()).answer,
            Answer::text(200, "error MDN queued for asynchronous delivery")
        );
    }

    /// The async URL of a rejected message of `route` failing with `error`.
    fn rejection_url(route: &Route, error: &As2Error, accepted: bool) -> Option<String> {
        let decisions = Config::Standard.decisions();
        let headers = request(&[SYNC_MDN, ASYNC_MDN]);
        let rejection = if accepted {
            decisions.rejection_of_accepted(&headers, route, error)
        } else {
            decisions.rejection(&headers, route, error)
        };
        let RejectionReply::Mdn(plan, _) = rejection.expect("a rejection").reply else {
            panic!("an error MDN was asked for");
        };
        plan.async_url
    }

    #[test]
    fn only_messages_that_authenticated_as_required_have_their_async_url_honoured() {
        let plain = route(Partner::Plain);
        let signed = Route::new(Partnership {
            security_policy: Some(SecurityPolicy {
                require_signature: true,
                ..SecurityPolicy::default()
            }),
            ..plain.partnership.clone()
        });
        let url = Some(MDN_URL.to_owned());
        for error in [
            As2Error::AuthenticationFailed("bad signature".to_owned()),
            As2Error::IntegrityCheckFailed("digest mismatch".to_owned()),
        ] {
            assert_eq!(rejection_url(&plain, &error, false), None, "{error}");
        }
        for error in [
            As2Error::DecompressionFailed("corrupt".to_owned()),
            As2Error::DecryptionFailed("no key".to_owned()),
            As2Error::InsufficientMessageSecurity("unsigned".to_owned()),
            As2Error::AuthenticationFailed("bad signature".to_owned()),
        ] {
            assert_eq!(rejection_url(&signed, &error, false), None, "{error}");
        }
        let decompression = As2Error::DecompressionFailed("corrupt".to_owned());
        assert_eq!(rejection_url(&plain, &decompression, false), url);
        // Accepted (verified as required), then refused by Kafka: the URL is honoured.
        let refused = As2Error::InvalidArgument("the document could not be stored".to_owned());
        assert_eq!(rejection_url(&signed, &refused, true), url);
    }

    #[test]
    fn decryption_failures_answer_the_same_whatever_the_reason() {
        let decisions = Config::Standard.decisions();
        let answers = |headers: &As2RequestHeaders| {
            [
                "bad padding",
                "no recipient matches",
                "GCM authentication failed",
            ]
            .map(|reason| {
                let error = As2Error::DecryptionFailed(reason.to_owned());
                let rejection = decisions
                    .rejection(headers, &route(Partner::Plain), &error)
                    .expect("a rejection");
                let answer = match rejection.reply {
                    RejectionReply::Mdn(plan, _) => plan.text,
                    RejectionReply::Plain(answer) => format!("{answer:?}"),
                };
                assert!(!answer.contains(reason), "{answer}");
                (rejection.status.to_string(), answer)
            })
        };
        for headers in [request(&[SYNC_MDN]), request(&[])] {
            let [first, rest @ ..] = answers(&headers);
            assert_eq!(first.0, "processed/error: decryption-failed");
            assert!(
                rest.iter().all(|answer| *answer == first),
                "{first:?} {rest:?}"
            );
        }
    }

    #[test]
    fn the_enqueue_request_names_the_original_message_and_carries_the_prepared_mdn() {
        let headers = request(&[SYNC_MDN, ASYNC_MDN]);
        let mdn = PendingAsyncMdn {
            url: MDN_URL.to_owned(),
            headers: vec![("AS2-From".to_owned(), "us".to_owned())],
            body: b"mdn".to_vec(),
        };
        let request = enqueue_request(&headers, "p-1", None, &mdn, "00-trace".to_owned());
        assert_eq!(request.original_message_id, "<m-1@partner.example>");
        assert_eq!(request.partnership_id, "p-1");
        assert_eq!(
            (request.as2_from.as_str(), request.as2_to.as_str()),
            ("partner", "us")
        );
        assert_eq!(request.delivery_url, MDN_URL);
        assert_eq!(request.traceparent, "00-trace");
        let Some(enqueue_mdn_delivery_request::Mdn::Prepared(prepared)) = request.mdn else {
            panic!("a prepared MDN");
        };
        assert_eq!(prepared.body, b"mdn".to_vec());
        assert_eq!(prepared.headers.len(), 1);
        assert_eq!(prepared.headers[0].name, "AS2-From");
    }

    #[test]
    fn partner_mdn_answers_are_counted_by_status() {
        assert_eq!(
            partner_mdn_outcome(&Answer::text(200, "")).label(),
            "processed"
        );
        assert_eq!(
            partner_mdn_outcome(&Answer::text(503, "")).label(),
            "unavailable"
        );
        assert_eq!(
            partner_mdn_outcome(&Answer::text(404, "")).label(),
            "bad_request"
        );
        assert_eq!(
            partner_mdn_outcome(&Answer::text(403, "")).label(),
            "bad_request"
        );
    }
}
