//! The sender's metrics (prefix `as2_sender_`); every label set is bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A bounded outcome label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// One of a fixed set per metric (see the registration's help text).
    pub outcome: &'static str,
}

/// Counters and histograms. Cheap to clone.
#[derive(Clone)]
pub struct SenderMetrics {
    /// Records finished, by `delivered|failed|awaiting_mdn|invalid|skipped`.
    pub records: Family<OutcomeLabels, Counter>,
    /// Sends, by `accepted|http_4xx|http_5xx|http_other|connection_error|timeout`.
    pub send_attempts: Family<OutcomeLabels, Counter>,
    /// Asynchronous MDNs, by `delivered|failed|already_reconciled|not_found|rejected|invalid`.
    pub mdns_reconciled: Family<OutcomeLabels, Counter>,
    /// Asynchronous MDNs that never came (messages failed by the sweeper).
    pub mdn_timeouts: Counter,
    /// Receipts, by `published|found|error` (`found`: an earlier attempt had landed).
    pub receipts: Family<OutcomeLabels, Counter>,
    /// Records being worked on now.
    pub in_flight: Gauge,
    /// Records parked because their partnership had all its slots taken.
    pub parked: Counter,
    /// Duration of one send (request and answer).
    pub send_duration: Histogram,
    /// Archive writes that failed (the message, the partner's answer or MDN); the send
    /// goes on.
    pub archive_failures: Counter,
    /// Messages whose record Redis lost, by `restored` (written again from memory by the
    /// replica sending it) or `unknown` (found by the recovery: an outcome-unknown receipt).
    pub state_lost: Family<OutcomeLabels, Counter>,
    /// Recoveries after Redis lost the sender's state, by `done|failed`.
    pub recoveries: Family<OutcomeLabels, Counter>,
}

impl SenderMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            records: Family::default(),
            send_attempts: Family::default(),
            mdns_reconciled: Family::default(),
            mdn_timeouts: Counter::default(),
            receipts: Family::default(),
            in_flight: Gauge::default(),
            parked: Counter::default(),
            send_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            archive_failures: Counter::default(),
            state_lost: Family::default(),
            recoveries: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("as2_sender");
        registry.register(
            "records",
            "outbound records finished (delivered, failed, awaiting_mdn, invalid, skipped)",
            metrics.records.clone(),
        );
        registry.register(
            "send_attempts",
            "sends to partners by outcome",
            metrics.send_attempts.clone(),
        );
        registry.register(
            "mdns_reconciled",
            "asynchronous MDNs handed over by the edge, by outcome",
            metrics.mdns_reconciled.clone(),
        );
        registry.register(
            "mdn_timeouts",
            "messages failed because their asynchronous MDN did not arrive in time",
            metrics.mdn_timeouts.clone(),
        );
        registry.register(
            "receipts",
            "receipts published or failed to publish",
            metrics.receipts.clone(),
        );
        registry.register(
            "records_in_flight",
            "outbound records being worked on",
            metrics.in_flight.clone(),
        );
        registry.register(
            "records_parked",
            "records that waited because their partnership had all its slots taken",
            metrics.parked.clone(),
        );
        registry.register(
            "send_duration_seconds",
            "duration of one send",
            metrics.send_duration.clone(),
        );
        registry.register(
            "archive_failures",
            "archive writes that failed (message, answer or asynchronous MDN)",
            metrics.archive_failures.clone(),
        );
        registry.register(
            "state_lost",
            "messages whose Redis record was lost (restored from memory, or reported unknown)",
            metrics.state_lost.clone(),
        );
        registry.register(
            "recoveries",
            "recoveries after Redis lost the sender's state (done, failed)",
            metrics.recoveries.clone(),
        );
        metrics
    }

    /// Counts a message whose record Redis lost.
    pub fn state_lost(&self, outcome: &'static str) {
        self.state_lost
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a recovery.
    pub fn recovery(&self, outcome: &'static str) {
        self.recoveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a record's end.
    pub fn record(&self, outcome: &'static str) {
        self.records.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a send.
    pub fn attempt(&self, outcome: &'static str) {
        self.send_attempts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a reconciliation.
    pub fn reconciled(&self, outcome: &'static str) {
        self.mdns_reconciled
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a receipt.
    pub fn receipt(&self, outcome: &'static str) {
        self.receipts
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}
