//! Prometheus metrics of the edge. Label sets are bounded: outcomes and disposition
//! modifiers come from fixed lists (unknown modifiers are counted as `other`).

use std::time::Duration;

use as2_protocol::mdn::{DispositionStatus, ProcessingError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How a request ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Published and answered with a "processed" MDN (or an async 200).
    Processed,
    /// A resend of a processed message, answered as before.
    Duplicate,
    /// Answered with an error or failure MDN (or 400 when no MDN was asked for).
    Rejected(DispositionStatus),
    /// 4xx before any MDN could be considered (missing AS2 headers, too large, slow).
    BadRequest,
    /// 503: a dependency, our own configuration or our own code (a panic while
    /// unwrapping) failed; the partner should resend.
    Unavailable,
}

impl Outcome {
    /// The metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Rejected(_) => "rejected",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
        }
    }

    /// The disposition label: the error modifier or failure, `processed` or `none`.
    pub fn disposition(&self) -> &'static str {
        match self {
            Self::Processed | Self::Duplicate => "processed",
            Self::Rejected(DispositionStatus::Error(error)) => match error {
                ProcessingError::AuthenticationFailed => "authentication-failed",
                ProcessingError::DecryptionFailed => "decryption-failed",
                ProcessingError::DecompressionFailed => "decompression-failed",
                ProcessingError::IntegrityCheckFailed => "integrity-check-failed",
                ProcessingError::InsufficientMessageSecurity => "insufficient-message-security",
                ProcessingError::UnexpectedProcessingError => "unexpected-processing-error",
                ProcessingError::Other(other) if other == "unknown-trading-partner" => {
                    "unknown-trading-partner"
                }
                ProcessingError::Other(_) => "other",
            },
            Self::Rejected(DispositionStatus::Failed(_)) => "failed",
            Self::Rejected(DispositionStatus::Warning(_) | DispositionStatus::Processed) => {
                "processed"
            }
            Self::BadRequest | Self::Unavailable => "none",
        }
    }
}

/// Labels of a finished message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// See [`Outcome::label`].
    pub outcome: &'static str,
    /// The MDN disposition, see [`Outcome`].
    pub disposition: &'static str,
}

/// Labels of a publish.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of a dedup hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DedupLabels {
    /// `in_flight` or `done`.
    pub state: &'static str,
}

/// Labels of a pending object the orphan sweep settled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrphanLabels {
    /// `deleted` (no record references it), `kept` (a record does) or `unknown` (the
    /// claim is gone: left to the retention sweep).
    pub outcome: &'static str,
}

/// Labels of a partnership lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCacheLabels {
    /// `hit` (answered from the cache) or `miss` (asked the routing service).
    pub result: &'static str,
}

/// The edge's metrics; all clones share values.
#[derive(Clone)]
pub struct EdgeMetrics {
    messages: Family<MessageLabels, Counter>,
    received_bytes: Counter,
    message_duration_seconds: Histogram,
    publish_duration_seconds: Family<PublishLabels, Histogram>,
    dedup_hits: Family<DedupLabels, Counter>,
    published_bytes: Counter,
    route_cache_lookups: Family<RouteCacheLabels, Counter>,
    budget_exhausted: Counter,
    stored_documents: Counter,
    archive_failures: Counter,
    orphan_objects: Family<OrphanLabels, Counter>,
}

impl EdgeMetrics {
    /// Creates the metrics and registers them under `as2_edge_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            messages: Family::default(),
            received_bytes: Counter::default(),
            message_duration_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            publish_duration_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            }),
            dedup_hits: Family::default(),
            published_bytes: Counter::default(),
            route_cache_lookups: Family::default(),
            budget_exhausted: Counter::default(),
            stored_documents: Counter::default(),
            archive_failures: Counter::default(),
            orphan_objects: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("as2_edge");
        registry.register(
            "messages",
            "AS2 messages by outcome and MDN disposition",
            metrics.messages.clone(),
        );
        registry.register(
            "received_bytes",
            "request body bytes of AS2 messages",
            metrics.received_bytes.clone(),
        );
        registry.register(
            "message_duration_seconds",
            "time from the complete request to the answer",
            metrics.message_duration_seconds.clone(),
        );
        registry.register(
            "kafka_publish_duration_seconds",
            "time from publish to broker acknowledgement",
            metrics.publish_duration_seconds.clone(),
        );
        registry.register(
            "dedup_hits",
            "resends recognised by duplicate detection",
            metrics.dedup_hits.clone(),
        );
        registry.register(
            "published_bytes",
            "document bytes published to kafka (after decryption and decompression)",
            metrics.published_bytes.clone(),
        );
        registry.register(
            "route_cache_lookups",
            "partnership lookups answered from the cache (hit) or by the routing service (miss)",
            metrics.route_cache_lookups.clone(),
        );
        registry.register(
            "memory_budget_exhausted",
            "requests answered 503 because the memory budget of buffered bytes was spent",
            metrics.budget_exhausted.clone(),
        );
        registry.register(
            "stored_documents",
            "documents too large for their record, stored in the object store (claim check)",
            metrics.stored_documents.clone(),
        );
        registry.register(
            "archive_failures",
            "messages answered but not archived (the object store failed at the end)",
            metrics.archive_failures.clone(),
        );
        registry.register(
            "orphan_objects",
            "objects of attempts that died before their claim ended, settled by the orphan sweep",
            metrics.orphan_objects.clone(),
        );
        // Series that alerts and dashboards rate() exist from the start, at zero.
        for state in ["done", "in_flight"] {
            let _ = metrics.dedup_hits.get_or_create(&DedupLabels { state });
        }
        for result in ["ok", "error"] {
            let _ = metrics
                .publish_duration_seconds
                .get_or_create(&PublishLabels { result });
        }
        for result in ["hit", "miss"] {
            let _ = metrics
                .route_cache_lookups
                .get_or_create(&RouteCacheLabels { result });
        }
        metrics
    }

    /// Records a finished message.
    pub fn observe(&self, outcome: &Outcome, received_bytes: usize, elapsed: Duration) {
        self.messages
            .get_or_create(&MessageLabels {
                outcome: outcome.label(),
                disposition: outcome.disposition(),
            })
            .inc();
        self.received_bytes
            .inc_by(u64::try_from(received_bytes).unwrap_or(u64::MAX));
        self.message_duration_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records a publish of `bytes` document bytes.
    pub fn observe_publish(&self, elapsed: Duration, bytes: usize, succeeded: bool) {
        let result = if succeeded { "ok" } else { "error" };
        if succeeded {
            self.published_bytes
                .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
        }
        self.publish_duration_seconds
            .get_or_create(&PublishLabels { result })
            .observe(elapsed.as_secs_f64());
    }

    /// Records a partnership lookup.
    pub fn route_cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.route_cache_lookups
            .get_or_create(&RouteCacheLabels { result })
            .inc();
    }

    /// Records a dedup hit.
    pub fn dedup_hit(&self, state: &'static str) {
        self.dedup_hits.get_or_create(&DedupLabels { state }).inc();
    }

    /// Counts a message whose archive entry could not be completed.
    pub fn archive_failed(&self) {
        self.archive_failures.inc();
    }

    /// Counts a document stored in the object store for a reference record.
    pub fn document_stored(&self) {
        self.stored_documents.inc();
    }

    /// Counts a pending object the orphan sweep settled.
    pub fn orphan_object(&self, outcome: &'static str) {
        self.orphan_objects
            .get_or_create(&OrphanLabels { outcome })
            .inc();
    }

    /// Counts a request answered 503 because the memory budget was spent.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }
}
