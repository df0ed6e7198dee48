//! Sending one document and reconciling MDNs: the sender's domain logic over Redis,
//! the routing service, the partner's HTTP endpoint and the receipts topic.
//!
//! A record's life: its record in Redis is created (`sending`) under a Message-ID
//! derived from the record, the partnership is resolved, the message built and POSTed;
//! transport failures and 5xx answers are retried with exponential backoff, resending
//! the same Message-ID (RFC 4130 5.5 restart convention), up to the partnership's
//! `max_retries`; then the outcome is recorded: `delivered` or `failed` with the
//! partner's MDN, or `awaiting-mdn` for an asynchronous MDN, which
//! [`OutboundSender::reconcile`] or the sweeper decide later. Only then is the record
//! done and its offset committable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use as2_partner::certificates::signing_certificates;
use as2_partner::keys::KeyStore;
pub use as2_partner::retry::Backoff;
use as2_partner::retry::random_jitter;
use as2_partner::target::AddressPolicy;
use as2_partner::transport::{PartnerClients, PartnerResponse, RequestBody, SendError};
use as2_protocol::{As2Id, ReceivedContentMic};
use as2_rpc::routing::v1::Partnership;
use as2_store::archive::{self, ArchiveEntry};
use bytes::Bytes;
use futures::TryStreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::clients::PartnershipDirectory;
use crate::documents::{self, Objects, OutboundArchive, StoredBody};
use crate::message::{
    self, MdnDelivery, MdnError, MdnVerdict, OutboundDocument, PlanError, SendPlan, Started,
};
use crate::metrics::SenderMetrics;
use crate::receipts::ReceiptPublisher;
use crate::store::{
    MessageRecord, MessageState, MessageStore, NewMessage, Outcome, ReceiptArm, SendFacts, Settled,
};
use as2_common::kafka::placement::Search;

/// Pause before a dependency (Redis, routing) is asked again.
const DEPENDENCY_RETRY: Duration = Duration::from_secs(1);

/// Unix time in milliseconds.
pub use as2_common::clock::unix_millis as now_ms;

/// The sender stopped before the record's outcome was recorded; it is sent again
/// (under the same Message-ID) by whoever consumes the record next.
#[derive(Debug, PartialEq, Eq)]
pub struct Interrupted;

/// How an asynchronous MDN was reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// Recorded as delivered.
    Delivered(MessageRecord),
    /// Recorded as failed.
    Failed(MessageRecord),
    /// The message had its outcome already.
    AlreadyReconciled(MessageRecord),
}

/// Why an MDN was not reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Not an MDN that can be parsed.
    #[error("{0}")]
    Invalid(String),
    /// No outbound message with that Original-Message-ID.
    #[error("no outbound message {0} awaits an MDN")]
    NotFound(String),
    /// The MDN is not authentic or not from the message's partner.
    #[error("{0}")]
    Rejected(String),
    /// Redis or the routing service failed.
    #[error("{0}")]
    Unavailable(String),
}

/// Settings of [`OutboundSender`].
#[derive(Clone, Debug)]
pub struct SenderSettings {
    /// Right-hand side of Message-IDs.
    pub message_id_domain: String,
    /// Signing key of partnerships that name none.
    pub default_signing_key_id: Option<String>,
    /// Retry timing.
    pub backoff: Backoff,
    /// How long an asynchronous MDN may take.
    pub async_mdn_timeout: Duration,
}

/// Sends documents and reconciles MDNs. Shared by the consumer's tasks, the gRPC API
/// and the sweeper.
pub struct OutboundSender {
    /// Redis records.
    pub store: MessageStore,
    /// Partnerships (the routing service).
    pub routing: Arc<dyn PartnershipDirectory>,
    /// Our keys.
    pub keys: Arc<KeyStore>,
    /// HTTP to partners: one client per partnership's HTTPS settings.
    pub clients: Arc<PartnerClients>,
    /// The object stores: referenced documents, large messages, the archive.
    pub objects: Arc<Objects>,
    /// The receipts topic.
    pub receipts: ReceiptPublisher,
    /// Metrics.
    pub metrics: SenderMetrics,
    /// Settings.
    pub settings: SenderSettings,
}

/// Builds of a large message that fail on the object store are tried again this often
/// (with the send backoff) before the record fails.
const STORE_RETRIES: u32 = 4;

/// Why a message could not be built.
enum PrepareError {
    /// The object store failed: worth another try.
    Transient(String),
    /// The record cannot be sent (a missing or mismatched document, a build error).
    Permanent(String),
}

/// A message ready to send: its headers, its body and the MIC its MDN must return.
struct Prepared {
    headers: Vec<(String, String)>,
    body: PreparedBody,
    expected_mic: ReceivedContentMic,
}

enum PreparedBody {
    Memory(Bytes),
    Stored(StoredBody),
}

enum PartnershipLookup {
    Found(Box<Partnership>),
    Missing,
    Unavailable(String),
}

/// What one send led to.
enum SendResult {
    Accepted(PartnerResponse),
    Transient { reason: String, http_status: u32 },
    Permanent { reason: String, http_status: u32 },
}

impl OutboundSender {
    /// Sends one document, retrying as configured, and records its outcome. `stop`
    /// interrupts waits between retries (the record is then left for a later consumer).
    pub async fn process(
        &self,
        document: &OutboundDocument,
        stop: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let message_id = match document.message_id(&self.settings.message_id_domain) {
            Ok(message_id) => message_id,
            Err(error) => {
                tracing::warn!(%error, partnership = document.partnership_id, "cannot derive a message id, skipping the record");
                self.metrics.record("invalid");
                return Ok(());
            }
        };
        let id = message_id.original().to_owned();
        let new = NewMessage {
            message_id: &id,
            partnership_id: &document.partnership_id,
            source: &document.source,
            filename: document.filename.as_deref(),
            traceparent: &document.traceparent,
        };
        let begun_at = now_ms();
        let mut draft = new.draft(begun_at);
        let existing = self
            .retry_redis(stop, || self.store.begin(&new, begun_at))
            .await?;
        match existing {
            Some(state) if state.is_final() => {
                // Recorded before a restart; the receipt may not have been published.
                tracing::info!(
                    message_id = id,
                    state = state.as_str(),
                    "record already has its outcome"
                );
                self.publish_receipt(&id).await;
                self.metrics.record("skipped");
                return Ok(());
            }
            Some(MessageState::AwaitingMdn) => {
                self.metrics.record("skipped");
                return Ok(());
            }
            Some(_) | None => {}
        }
        let partnership = loop {
            match self.partnership(&document.partnership_id).await {
                PartnershipLookup::Found(partnership) => break partnership,
                PartnershipLookup::Missing => {
                    let reason = format!("unknown partnership {}", document.partnership_id);
                    return self.fail(stop, &mut draft, reason, 0).await;
                }
                PartnershipLookup::Unavailable(error) => {
                    tracing::warn!(error, "routing service unavailable, waiting");
                    wait(stop, DEPENDENCY_RETRY).await?;
                }
            }
        };
        let mut store_failures = 0;
        let (plan, prepared, archive) = loop {
            let started = match self.start(document, &partnership, message_id.clone()).await {
                Ok(started) => started,
                Err(error) => return self.fail(stop, &mut draft, error.to_string(), 0).await,
            };
            let archive = self.archive_entry(&started.plan, &partnership);
            match self.prepare(document, started, archive.as_ref()).await {
                Ok((plan, prepared)) => break (plan, prepared, archive),
                Err(PrepareError::Transient(reason)) if store_failures < STORE_RETRIES => {
                    store_failures += 1;
                    let delay = self.settings.backoff.delay(store_failures, random_jitter());
                    tracing::warn!(
                        message_id = id,
                        reason,
                        attempt = store_failures,
                        "cannot build the message yet, retrying"
                    );
                    wait(stop, delay).await?;
                }
                Err(PrepareError::Transient(reason) | PrepareError::Permanent(reason)) => {
                    return self.fail(stop, &mut draft, reason, 0).await;
                }
            }
        };
        let archive_location = archive
            .as_ref()
            .map(|archive| archive.store.object_url(&archive.entry.prefix))
            .unwrap_or_default();
        let facts = SendFacts {
            as2_from: &plan.as2_from,
            as2_to: &plan.as2_to,
            mdn_mode: plan.mdn.as_str(),
            expected_mic: prepared.expected_mic.to_string(),
            signed: plan.signed,
            signed_mdn_requested: plan.signed_mdn_requested,
            archive_location: &archive_location,
        };
        draft.apply_facts(&facts);
        let stored = self
            .retry_redis(stop, || self.store.record_send_facts(&id, &facts))
            .await?;
        if !stored {
            self.restore(stop, &draft).await?;
        }
        let sent = self
            .send_with_retries(&plan, &prepared, &mut draft, stop)
            .await;
        if let Ok(outcome) = &sent {
            if let Some(archive) = &archive
                && let Err(error) = archive.finish(outcome.as_ref().ok()).await
            {
                self.metrics.archive_failures.inc();
                tracing::warn!(message_id = id, %error, "could not archive the partner's answer");
            }
            if let PreparedBody::Stored(stored) = &prepared.body
                && stored.spooled
                && let Err(error) = stored.store.delete(&stored.key).await
            {
                tracing::warn!(message_id = id, %error, key = stored.key, "could not delete a spooled message");
            }
        }
        let response = match sent? {
            Ok(response) => response,
            Err((reason, http_status)) => {
                return self.fail(stop, &mut draft, reason, http_status).await;
            }
        };
        self.record_answer(
            stop,
            &plan,
            &prepared.expected_mic,
            &partnership,
            &mut draft,
            response,
        )
        .await
    }

    /// The archive entry of a message to `partnership`, when its messages are archived.
    fn archive_entry(&self, plan: &SendPlan, partnership: &Partnership) -> Option<OutboundArchive> {
        let days = self.objects.archive_days(partnership)?;
        // As the edge's: written without an fsync per object on a local directory.
        let store = self.objects.own()?.unsynced();
        let hash = archive::message_hash(&plan.as2_from, &plan.as2_to, plan.message_id.original());
        let entry = ArchiveEntry::new(
            days,
            &partnership.id,
            &hash,
            time::OffsetDateTime::now_utc(),
        );
        Some(OutboundArchive { store, entry })
    }

    /// Builds the message: in memory for a document the record carries (and archives
    /// it), into the object store for a referenced one (`Err`: why the record fails).
    async fn prepare(
        &self,
        document: &OutboundDocument,
        started: Started,
        archive: Option<&OutboundArchive>,
    ) -> Result<(SendPlan, Prepared), PrepareError> {
        let Some(reference) = &document.reference else {
            let payload = document.payload.clone();
            let (plan, built) = tokio::task::spawn_blocking(move || started.build(&payload))
                .await
                .map_err(|error| {
                    PrepareError::Permanent(format!("the build task failed: {error}"))
                })?
                .map_err(|error| PrepareError::Permanent(error.to_string()))?;
            if let Some(archive) = archive
                && let Err(error) = archive.put_message(&built.headers, &built.body).await
            {
                self.metrics.archive_failures.inc();
                tracing::warn!(message_id = plan.message_id.original(), %error, "could not archive the message");
            }
            let prepared = Prepared {
                headers: built.headers,
                body: PreparedBody::Memory(Bytes::from(built.body)),
                expected_mic: built.expected_mic,
            };
            return Ok((plan, prepared));
        };
        let Started {
            plan,
            writer,
            headers,
        } = started;
        let (target, key, prefix, spooled) = match archive {
            Some(archive) => (
                archive.store.clone(),
                archive.entry.message_key(),
                archive::header_block(None, &headers),
                false,
            ),
            None => {
                let target = match self.objects.own() {
                    Some(own) => own.clone(),
                    None => self
                        .objects
                        .store_of(reference)
                        .map_err(PrepareError::from)?,
                };
                let hash =
                    archive::message_hash(&plan.as2_from, &plan.as2_to, plan.message_id.original());
                let key = documents::spool_key(&hash, time::OffsetDateTime::now_utc());
                (target, key, Vec::new(), true)
            }
        };
        let build_started = Instant::now();
        let (stored, expected_mic) = self
            .objects
            .build(reference, writer, &target, &key, &prefix, spooled)
            .await
            .map_err(PrepareError::from)?;
        tracing::info!(
            message_id = plan.message_id.original(),
            document_bytes = reference.size,
            body_bytes = stored.length,
            key = stored.key,
            elapsed_ms = build_started.elapsed().as_millis() as u64,
            "built a large message into the object store"
        );
        let prepared = Prepared {
            headers,
            body: PreparedBody::Stored(stored),
            expected_mic,
        };
        Ok((plan, prepared))
    }

    /// POSTs until the partner accepts, a permanent failure, or the retries are used up
    /// (`Err((reason, http_status))`).
    async fn send_with_retries(
        &self,
        plan: &SendPlan,
        prepared: &Prepared,
        draft: &mut MessageRecord,
        stop: &CancellationToken,
    ) -> Result<Result<PartnerResponse, (String, u32)>, Interrupted> {
        let id = plan.message_id.original();
        let timeout = Duration::from_secs(u64::from(plan.timeout_secs));
        // Operators set the URL, so any address is allowed.
        let transport = match self.clients.client(AddressPolicy::Any, &plan.https) {
            Ok(transport) => transport,
            Err(error) => return Ok(Err((format!("not sent: {error}"), 0))),
        };
        let (mut last_error, mut last_status) = (String::new(), 0);
        loop {
            let counted = self
                .retry_redis(stop, || {
                    self.store.record_attempt(id, &last_error, last_status)
                })
                .await?;
            let attempts = match counted {
                Some(attempts) => attempts,
                None => {
                    // Redis lost the record: write it again with this send counted.
                    draft.attempts += 1;
                    draft.reason.clone_from(&last_error);
                    draft.http_status = last_status;
                    self.restore(stop, draft).await?;
                    draft.attempts
                }
            };
            draft.attempts = attempts;
            let started = Instant::now();
            let result = match request_body(plan, prepared).await {
                Ok(body) => {
                    transport
                        .post_body(&plan.url, &prepared.headers, body, timeout)
                        .await
                }
                Err(error) => Err(SendError::Connection(format!(
                    "cannot read the message from the object store: {error}"
                ))),
            };
            self.metrics
                .send_duration
                .observe(started.elapsed().as_secs_f64());
            let result = classify(result);
            let (reason, http_status) = match result {
                SendResult::Accepted(response) => {
                    self.metrics.attempt("accepted");
                    tracing::info!(
                        message_id = id,
                        attempts,
                        status = response.status,
                        "partner accepted the message"
                    );
                    return Ok(Ok(response));
                }
                SendResult::Permanent {
                    reason,
                    http_status,
                } => {
                    return Ok(Err((reason, http_status)));
                }
                SendResult::Transient {
                    reason,
                    http_status,
                } => (reason, http_status),
            };
            if attempts > plan.max_retries {
                let reason =
                    format!("no success after {attempts} attempts, the last one: {reason}");
                return Ok(Err((reason, http_status)));
            }
            let delay = self.settings.backoff.delay(attempts, random_jitter());
            tracing::info!(
                message_id = id,
                attempts,
                reason,
                delay_ms = delay.as_millis() as u64,
                "send failed, retrying"
            );
            (last_error, last_status) = (reason, http_status);
            wait(stop, delay).await?;
        }
    }

    async fn record_answer(
        &self,
        stop: &CancellationToken,
        plan: &SendPlan,
        expected_mic: &ReceivedContentMic,
        partnership: &Partnership,
        draft: &mut MessageRecord,
        response: PartnerResponse,
    ) -> Result<(), Interrupted> {
        let id = plan.message_id.original();
        let http_status = u32::from(response.status);
        match plan.mdn {
            MdnDelivery::None => {
                let outcome = Outcome {
                    delivered: true,
                    http_status,
                    ..Outcome::default()
                };
                self.finish(stop, draft, outcome).await
            }
            MdnDelivery::Async => {
                let deadline = now_ms().saturating_add(
                    i64::try_from(self.settings.async_mdn_timeout.as_millis()).unwrap_or(i64::MAX),
                );
                let mut state = self
                    .retry_redis(stop, || self.store.await_mdn(id, deadline, http_status))
                    .await?;
                if state.is_none() {
                    draft.state = MessageState::AwaitingMdn.as_str().to_owned();
                    draft.mdn_deadline_ms = deadline;
                    draft.http_status = http_status;
                    self.restore(stop, draft).await?;
                    state = Some(MessageState::AwaitingMdn);
                }
                if state.is_some_and(MessageState::is_final) {
                    self.publish_receipt(id).await;
                }
                self.metrics.record("awaiting_mdn");
                tracing::info!(message_id = id, "awaiting the asynchronous mdn");
                Ok(())
            }
            MdnDelivery::Sync => {
                let content_type = response
                    .header("content-type")
                    .unwrap_or_default()
                    .to_owned();
                let certificates = signing_certificates(partnership);
                let verdict = message::judge_mdn(
                    &content_type,
                    &response.body,
                    &certificates,
                    plan.signed_mdn_requested,
                    check_validity(partnership),
                    expected_mic,
                    plan.signed,
                );
                let mdn_headers = response.headers.clone();
                let outcome = outcome_of(verdict, http_status, mdn_headers, response.body);
                self.finish(stop, draft, outcome).await
            }
        }
    }

    async fn fail(
        &self,
        stop: &CancellationToken,
        draft: &mut MessageRecord,
        reason: String,
        http_status: u32,
    ) -> Result<(), Interrupted> {
        let outcome = Outcome {
            delivered: false,
            http_status,
            reason,
            ..Outcome::default()
        };
        self.finish(stop, draft, outcome).await
    }

    /// Redis lost the record of a message this replica is working on (a restart without
    /// persistence, a failover to a replica that lagged): writes it again from memory.
    async fn restore(
        &self,
        stop: &CancellationToken,
        draft: &MessageRecord,
    ) -> Result<(), Interrupted> {
        tracing::warn!(
            message_id = draft.message_id,
            state = draft.state,
            "redis lost the record of a message being sent, writing it again"
        );
        self.metrics.state_lost("restored");
        self.retry_redis(stop, || self.store.restore(draft)).await?;
        Ok(())
    }

    async fn finish(
        &self,
        stop: &CancellationToken,
        draft: &mut MessageRecord,
        outcome: Outcome,
    ) -> Result<(), Interrupted> {
        let message_id = draft.message_id.clone();
        let message_id = message_id.as_str();
        let label = if outcome.delivered {
            "delivered"
        } else {
            "failed"
        };
        if outcome.delivered {
            tracing::info!(
                message_id,
                disposition = outcome.disposition,
                "message delivered"
            );
        } else {
            tracing::warn!(message_id, reason = outcome.reason, "message failed");
        }
        let finished_at = now_ms();
        let settled = self
            .retry_redis(stop, || {
                self.store.settle(message_id, &outcome, finished_at)
            })
            .await?;
        let decided = match settled {
            Settled::Decided => true,
            Settled::AlreadyFinal => false,
            Settled::Missing => {
                draft.apply_outcome(&outcome, finished_at);
                self.restore(stop, draft).await?;
                true
            }
        };
        if decided {
            self.metrics.record(label);
        }
        self.publish_receipt(message_id).await;
        Ok(())
    }

    /// Publishes the receipt of a finished message, once, and takes it out of the outbox;
    /// a failure, or another attempt that may still land, leaves it there for the
    /// sweeper (see [`crate::receipts`]).
    pub async fn publish_receipt(&self, message_id: &str) {
        let window_ms =
            u64::try_from(self.receipts.publish_window().as_millis()).unwrap_or(u64::MAX);
        let mut searched = String::new();
        // At most: an earlier attempt searched for, then this one armed.
        for _ in 0..3 {
            let record = match self.store.load(message_id).await {
                Ok(Some(record)) if record.state().is_some_and(MessageState::is_final) => record,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(message_id, %error, "cannot load the record for its receipt");
                    return;
                }
            };
            let placement = match self.receipts.place(&record).await {
                Ok(placement) => placement,
                Err(error) => {
                    self.metrics.receipt("error");
                    tracing::warn!(message_id, %error, "receipt not published, the sweeper tries again");
                    return;
                }
            };
            let arming = std::time::Instant::now();
            let arm = self
                .store
                .arm_receipt(
                    message_id,
                    placement.partition,
                    placement.scan_from,
                    window_ms,
                    &searched,
                )
                .await;
            match arm {
                Err(error) => {
                    tracing::warn!(message_id, %error, "cannot arm the receipt, the sweeper tries again");
                    return;
                }
                Ok(ReceiptArm::Published | ReceiptArm::NotFinal) => return,
                Ok(ReceiptArm::Busy { left_ms }) => {
                    tracing::debug!(
                        message_id,
                        left_ms,
                        "another attempt at this receipt may still land"
                    );
                    return;
                }
                Ok(ReceiptArm::Search {
                    partition,
                    scan_from,
                    armed,
                }) => match self.receipts.find(partition, scan_from, message_id).await {
                    Ok(Search::Found(_)) => {
                        tracing::info!(
                            message_id,
                            "an earlier attempt at this receipt landed, marking it published"
                        );
                        self.metrics.receipt("found");
                        self.mark_receipt_published(message_id).await;
                        return;
                    }
                    Ok(Search::Absent { .. }) => searched = armed,
                    Err(error) => {
                        tracing::warn!(message_id, %error, "cannot search for an earlier receipt, the sweeper tries again");
                        return;
                    }
                },
                Ok(ReceiptArm::Armed)
                    if arming.elapsed() >= as2_common::kafka::placement::PRODUCE_DEADLINE =>
                {
                    // The window counts from arming: a record produced later could land
                    // after it. Once the window has passed, a search and a new arming.
                    tracing::warn!(
                        message_id,
                        "arming the receipt took too long; the sweeper tries again"
                    );
                    return;
                }
                Ok(ReceiptArm::Armed) => {
                    match self.receipts.publish(&record, placement.partition).await {
                        Ok(()) => {
                            self.metrics.receipt("published");
                            crate::fault::after_receipt();
                            self.mark_receipt_published(message_id).await;
                        }
                        Err(error) => {
                            self.metrics.receipt("error");
                            tracing::warn!(message_id, %error, "receipt not published, the sweeper tries again");
                        }
                    }
                    return;
                }
            }
        }
    }

    async fn mark_receipt_published(&self, message_id: &str) {
        if let Err(error) = self.store.receipt_published(message_id).await {
            tracing::warn!(message_id, %error, "receipt published but still in the outbox");
        }
    }

    /// Reconciles an asynchronous MDN the edge received (`headers` and `body` of the
    /// partner's request).
    pub async fn reconcile(
        &self,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Reconciled, ReconcileError> {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let content_type = header("content-type")
            .ok_or_else(|| ReconcileError::Invalid("the MDN has no Content-Type".to_owned()))?;
        let peeked = message::peek_mdn(content_type, body)
            .map_err(|error| ReconcileError::Invalid(error.to_string()))?;
        let original = peeked.report.original_message_id.trim().to_owned();
        let unavailable =
            |error: crate::store::StoreError| ReconcileError::Unavailable(error.to_string());
        let record = self
            .store
            .load(&original)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| ReconcileError::NotFound(original.clone()))?;
        if record.state().is_some_and(MessageState::is_final) {
            return Ok(Reconciled::AlreadyReconciled(record));
        }
        let partnership = match self.partnership(&record.partnership_id).await {
            PartnershipLookup::Found(partnership) => partnership,
            PartnershipLookup::Missing => {
                return Err(ReconcileError::Rejected(format!(
                    "partnership {} no longer exists",
                    record.partnership_id
                )));
            }
            PartnershipLookup::Unavailable(error) => {
                return Err(ReconcileError::Unavailable(error));
            }
        };
        if let Some(from) = header("as2-from") {
            // pyas2lib quotes an already quoted id again (`"\"a b\""`): compare without
            // any layer of quoting; the signature is what authenticates the MDN.
            let matches = As2Id::parse_header(from)
                .is_ok_and(|from| from.as_str().trim_matches(['"', '\\']) == record.as2_to);
            if !matches {
                let reason = format!(
                    "refused an MDN from AS2-From {from:?}, not the partner {:?}",
                    record.as2_to
                );
                return Err(self.refuse(&original, reason).await);
            }
        }
        let expected = ReceivedContentMic::parse(&record.expected_mic).map_err(|_| {
            ReconcileError::Rejected(format!("message {original} has not been sent yet"))
        })?;
        let certificates = signing_certificates(&partnership);
        let verdict = message::judge_mdn(
            content_type,
            body,
            &certificates,
            record.signed_mdn_requested,
            check_validity(&partnership),
            &expected,
            record.signed,
        );
        if let Err(MdnError::NotAuthentic(error)) = &verdict {
            let reason = format!("refused an MDN that is not authentic: {error}");
            return Err(self.refuse(&original, reason).await);
        }
        if let Some(store) = self.objects.own()
            && let Some(entry) = store.key_of_url(&record.archive_location)
            && let Err(error) =
                documents::put_async_mdn(&store.unsynced(), entry, headers, body).await
        {
            self.metrics.archive_failures.inc();
            tracing::warn!(message_id = original, %error, "could not archive the asynchronous mdn");
        }
        let outcome = outcome_of(verdict, record.http_status, headers.to_vec(), body.to_vec());
        let delivered = outcome.delivered;
        if !delivered {
            tracing::warn!(
                message_id = original,
                reason = outcome.reason,
                "message failed"
            );
        }
        let decided = self
            .store
            .finish(&original, &outcome, now_ms())
            .await
            .map_err(unavailable)?;
        let record = self
            .store
            .load(&original)
            .await
            .map_err(unavailable)?
            .unwrap_or(record);
        if !decided {
            return Ok(Reconciled::AlreadyReconciled(record));
        }
        self.metrics
            .record(if delivered { "delivered" } else { "failed" });
        self.publish_receipt(&original).await;
        Ok(if delivered {
            Reconciled::Delivered(record)
        } else {
            Reconciled::Failed(record)
        })
    }

    /// Keeps why an MDN for a pending message was refused; the message keeps waiting.
    async fn refuse(&self, message_id: &str, reason: String) -> ReconcileError {
        tracing::warn!(message_id, reason, "refused a partner mdn");
        if let Err(error) = self.store.record_rejected_mdn(message_id, &reason).await {
            tracing::warn!(%error, "cannot record the refused mdn");
        }
        ReconcileError::Rejected(reason)
    }

    /// Fails messages whose asynchronous MDN is overdue and publishes receipts left in
    /// the outbox; one pass.
    pub async fn sweep(&self) -> Result<(), crate::store::StoreError> {
        let now = now_ms();
        for id in self.store.overdue(now, 100).await? {
            let Some(record) = self.store.load_by_id(&id).await? else {
                self.store.forget_awaiting(&id).await?;
                continue;
            };
            let mut reason = format!(
                "no MDN arrived within {} s of the send",
                self.settings.async_mdn_timeout.as_secs()
            );
            if !record.last_rejected_mdn.is_empty() {
                reason = format!(
                    "{reason}; the last MDN was refused: {}",
                    record.last_rejected_mdn
                );
            }
            let outcome = Outcome {
                delivered: false,
                http_status: record.http_status,
                reason,
                ..Outcome::default()
            };
            if self.store.finish(&record.message_id, &outcome, now).await? {
                tracing::warn!(
                    message_id = record.message_id,
                    "asynchronous mdn overdue, message failed"
                );
                self.metrics.mdn_timeouts.inc();
                self.metrics.record("failed");
                self.publish_receipt(&record.message_id).await;
            } else {
                self.store.forget_awaiting(&id).await?;
            }
        }
        for id in self.store.unpublished(now - 30_000, 100).await? {
            match self.store.load_by_id(&id).await? {
                Some(record) => self.publish_receipt(&record.message_id).await,
                None => self.store.receipt_published_by_id(&id).await?,
            }
        }
        Ok(())
    }

    async fn partnership(&self, id: &str) -> PartnershipLookup {
        match self.routing.partnership(id).await {
            Ok(Some(partnership)) => PartnershipLookup::Found(Box::new(partnership)),
            Ok(None) => PartnershipLookup::Missing,
            Err(status) => {
                PartnershipLookup::Unavailable(format!("routing service: {}", status.message()))
            }
        }
    }

    async fn start(
        &self,
        document: &OutboundDocument,
        partnership: &Partnership,
        message_id: as2_protocol::MessageId,
    ) -> Result<Started, PlanError> {
        let document = OutboundDocument {
            payload: Vec::new(),
            ..document.clone()
        };
        let partnership = partnership.clone();
        let keys = self.keys.clone();
        let default_key = self.settings.default_signing_key_id.clone();
        // Key loading and RSA run on the blocking pool, not on the async workers.
        tokio::task::spawn_blocking(move || {
            message::start(
                &document,
                &partnership,
                &keys,
                default_key.as_deref(),
                message_id,
            )
        })
        .await
        .unwrap_or_else(|error| {
            Err(PlanError::Unsupported(format!(
                "the build task failed: {error}"
            )))
        })
    }

    /// Runs a Redis operation until it succeeds or `stop` fires.
    async fn retry_redis<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        mut operation: F,
    ) -> Result<T, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, crate::store::StoreError>>,
    {
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::warn!(%error, "redis unavailable, waiting");
                    wait(stop, DEPENDENCY_RETRY).await?;
                }
            }
        }
    }
}

impl From<documents::BuildError> for PrepareError {
    fn from(error: documents::BuildError) -> Self {
        match error {
            documents::BuildError::Store(_) => Self::Transient(error.to_string()),
            _ => Self::Permanent(error.to_string()),
        }
    }
}

/// The body of one send.
async fn request_body(
    plan: &SendPlan,
    prepared: &Prepared,
) -> Result<RequestBody, as2_store::StoreError> {
    Ok(match &prepared.body {
        PreparedBody::Memory(body) => RequestBody::Bytes {
            body: body.clone(),
            chunked: plan.chunked,
        },
        PreparedBody::Stored(stored) => RequestBody::Stream {
            stream: Box::pin(
                stored
                    .open()
                    .await?
                    .map_err(|error| Box::new(error) as as2_partner::transport::BodyError),
            ),
            length: (!plan.chunked).then_some(stored.length),
        },
    })
}

fn check_validity(partnership: &Partnership) -> bool {
    !partnership
        .interop
        .as_ref()
        .is_some_and(|switches| switches.skip_certificate_validity_check)
}

fn classify(result: Result<PartnerResponse, SendError>) -> SendResult {
    match result {
        Ok(response) if (200..300).contains(&response.status) => SendResult::Accepted(response),
        Ok(response) => {
            let status = response.status;
            let reason = format!(
                "the partner answered {status} {}",
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|code| code.canonical_reason())
                    .unwrap_or_default()
            )
            .trim_end()
            .to_owned();
            if status >= 500 || status == 408 || status == 429 {
                SendResult::Transient {
                    reason,
                    http_status: u32::from(status),
                }
            } else {
                SendResult::Permanent {
                    reason,
                    http_status: u32::from(status),
                }
            }
        }
        // A certificate that is not trusted stays so until an operator acts.
        Err(error @ (SendError::Request(_) | SendError::Untrusted(_))) => SendResult::Permanent {
            reason: error.to_string(),
            http_status: 0,
        },
        Err(error) => SendResult::Transient {
            reason: error.to_string(),
            http_status: 0,
        },
    }
}

fn outcome_of(
    verdict: Result<MdnVerdict, MdnError>,
    http_status: u32,
    mdn_headers: Vec<(String, String)>,
    mdn_body: Vec<u8>,
) -> Outcome {
    let base = Outcome {
        http_status,
        mdn_headers,
        mdn_body,
        ..Outcome::default()
    };
    match verdict {
        Ok(MdnVerdict::Delivered {
            disposition,
            mic,
            mic_verified,
        }) => Outcome {
            delivered: true,
            disposition,
            received_mic: mic.unwrap_or_default(),
            mic_verified,
            ..base
        },
        Ok(MdnVerdict::Failed {
            disposition,
            mic,
            reason,
        }) => Outcome {
            delivered: false,
            disposition,
            received_mic: mic.unwrap_or_default(),
            reason,
            ..base
        },
        Err(error) => Outcome {
            delivered: false,
            reason: error.to_string(),
            ..base
        },
    }
}

/// Sleeps `delay` unless `stop` fires first.
async fn wait(stop: &CancellationToken, delay: Duration) -> Result<(), Interrupted> {
    tokio::select! {
        () = stop.cancelled() => Err(Interrupted),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_timeouts_are_retried_client_errors_are_not() {
        let answer = |status| {
            classify(Ok(PartnerResponse {
                status,
                headers: Vec::new(),
                body: Vec::new(),
            }))
        };
        assert!(matches!(answer(200), SendResult::Accepted(_)));
        assert!(matches!(
            answer(503),
            SendResult::Transient {
                http_status: 503,
                ..
            }
        ));
        assert!(matches!(answer(429), SendResult::Transient { .. }));
        assert!(matches!(answer(400), SendResult::Permanent { .. }));
        assert!(matches!(
            classify(Err(SendError::Timeout(5))),
            SendResult::Transient { .. }
        ));
        assert!(matches!(
            classify(Err(SendError::Request("x".into()))),
            SendResult::Permanent { .. }
        ));
    }
}
