//! Prometheus metrics of the MDN service. Label sets are bounded: gRPC method names and
//! status codes, attempt outcome classes, final states.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one finished gRPC request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method, e.g. `EnqueueMdnDelivery`.
    pub method: &'static str,
    /// Error kind, or `ok`.
    pub code: &'static str,
}

/// Labels of an enqueue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnqueueLabels {
    /// `new`, `duplicate` or `unsupported` (recorded as failed at once).
    pub outcome: &'static str,
}

/// Labels of one attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// `delivered`, `http_4xx`, `http_5xx`, `http_other`, `connection_error`, `timeout`.
    pub outcome: &'static str,
}

/// Labels of a finished delivery or a status event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `delivered`, `failed`, `retry-scheduled`, `queued`, or for events `dropped`.
    pub state: &'static str,
}

/// Labels of a queue gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `ready` (stream: waiting or being attempted) or `scheduled` (retries).
    pub queue: &'static str,
}

/// The MDN service's metrics; cheap to clone, all clones share values.
#[derive(Clone)]
pub struct MdnMetrics {
    /// Finished gRPC requests.
    pub requests: Family<RequestLabels, Counter>,
    /// Enqueue requests by outcome.
    pub enqueued: Family<EnqueueLabels, Counter>,
    /// Delivery attempts by outcome.
    pub attempts: Family<AttemptLabels, Counter>,
    /// Deliveries that ended, by final state.
    pub finished: Family<StateLabels, Counter>,
    /// Retries scheduled.
    pub retries_scheduled: Counter,
    /// Jobs taken over from replicas that did not finish them.
    pub reclaimed: Counter,
    /// Jobs in the queues (sampled by every replica).
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Attempts in progress in this replica.
    pub in_flight: Gauge,
    /// Duration of one attempt.
    pub attempt_duration_seconds: Histogram,
    /// Time from the enqueue to the successful delivery.
    pub delivery_latency_seconds: Histogram,
    /// Status events by state, `dropped` for those not published.
    pub tracking_events: Family<StateLabels, Counter>,
}

impl MdnMetrics {
    /// Creates the metrics and registers them under `as2_mdn_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            enqueued: Family::default(),
            attempts: Family::default(),
            finished: Family::default(),
            retries_scheduled: Counter::default(),
            reclaimed: Counter::default(),
            queue_depth: Family::default(),
            in_flight: Gauge::default(),
            // 5 ms to about 80 s.
            attempt_duration_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            // 10 ms to about 45 h: retries stretch delivery over hours.
            delivery_latency_seconds: Histogram::new(exponential_buckets(0.01, 3.0, 17)),
            tracking_events: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("as2_mdn");
        registry.register(
            "requests",
            "finished grpc requests",
            metrics.requests.clone(),
        );
        registry.register(
            "enqueued",
            "enqueue requests by outcome",
            metrics.enqueued.clone(),
        );
        registry.register(
            "delivery_attempts",
            "mdn delivery attempts by outcome",
            metrics.attempts.clone(),
        );
        registry.register(
            "deliveries_finished",
            "mdn deliveries that ended, by final state",
            metrics.finished.clone(),
        );
        registry.register(
            "retries_scheduled",
            "retries scheduled after failed attempts",
            metrics.retries_scheduled.clone(),
        );
        registry.register(
            "jobs_reclaimed",
            "jobs taken over after their replica did not finish them",
            metrics.reclaimed.clone(),
        );
        registry.register(
            "queue_depth",
            "jobs ready (stream) and scheduled (retries)",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "attempts_in_flight",
            "attempts in progress in this replica",
            metrics.in_flight.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "duration of one delivery attempt",
            metrics.attempt_duration_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "time from enqueue to successful delivery",
            metrics.delivery_latency_seconds.clone(),
        );
        registry.register(
            "tracking_events",
            "status events published to kafka, dropped ones as state=dropped",
            metrics.tracking_events.clone(),
        );
        // Series that alerts rate() exist from the start, at zero.
        for state in ["delivered", "failed"] {
            let _ = metrics.finished.get_or_create(&StateLabels { state });
        }
        metrics
    }
}
