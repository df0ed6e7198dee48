//! The decisions of the inbound path: what to answer, with which status, which
//! disposition or error MDN, what to publish and what to keep for duplicate detection.
//!
//! No I/O here: no network, no Redis, no Kafka, no key files, no clock, no randomness.
//! The I/O around it ([`super::InboundProcessor`]) asks these functions at every step,
//! hands them what it found (the partnership lookup, how the unwrap ended, the dedup
//! claim, the publish) and does what they say. Building and signing an MDN is left to
//! the I/O part too (it needs our keys and a fresh Message-ID); the decision says what
//! the MDN reports ([`MdnPlan`]) and which key signs it ([`MdnSigning`]).

use std::sync::Arc;

use as2_protocol::As2Error;
use as2_protocol::cms::ContentCipher;
use as2_protocol::headers::{As2RequestHeaders, Importance, MicAlgorithm};
use as2_protocol::mdn::{
    self, BuiltMdn, Disposition, DispositionStatus, MdnReport, ProcessingError,
};
use as2_protocol::unwrap::UnwrappedMessage;
use as2_rpc::mdn::v1::{
    EnqueueMdnDeliveryRequest, HeaderField, PreparedMdn, enqueue_mdn_delivery_request,
};
use as2_rpc::routing::v1::{EncryptionCipher, SigningDigest};
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
    /// Another request is processing the same message: 503.
    InFlight(Unavailable),
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
        let signing = match (
            self.default_signing_key_id,
            signed_receipt_digest(headers, false),
        ) {
            (Some(key_id), Some(digest)) => MdnSigning::IfAvailable {
                key_id: key_id.to_owned(),
                digest,
            },
            _ => MdnSigning::Unsigned,
        };
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
            UnwrapOutcome::Crashed => Err(As2Error::InvalidArgument(
                "internal failure while unwrapping".to_owned(),
            )),
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

    /// The rejection of a message of a known partnership that failed with `error`: 400
    /// with the reason when no MDN was asked for, else an error MDN (`processed/error`
    /// or `failed/Failure`), delivered as asked (in the response or asynchronously).
    pub fn rejection(
        &self,
        headers: &As2RequestHeaders,
        route: &Route,
        error: &As2Error,
    ) -> Result<Rejection, Unavailable> {
        let status = error.disposition_status();
        tracing::info!(%error, disposition = %status, "message rejected");
        if !headers.wants_mdn() {
            return Ok(Rejection {
                status,
                reply: RejectionReply::Plain(Answer::text(400, error.to_string())),
            });
        }
        let report = MdnReport::for_outcome(self.reporting_ua, headers, Err(error));
        let text = explanation(headers, &status, Some(&error.to_string()));
        let signing = self.mdn_signing(headers, route)?;
        let plan = MdnPlan {
            report,
            text,
            async_url: async_url(headers),
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
        Ok(Claim::InFlight) => AfterClaim::InFlight(Unavailable(
            "this message is being processed, please resend later",
        )),
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

/// The request that hands `mdn` to the MDN service, for the message `headers` of the
/// partnership `partnership_id`.
pub fn enqueue_request(
    headers: &As2RequestHeaders,
    partnership_id: &str,
    mdn: &PendingAsyncMdn,
    traceparent: String,
) -> EnqueueMdnDeliveryRequest {
    EnqueueMdnDeliveryRequest {
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
