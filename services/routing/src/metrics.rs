//! Prometheus metrics of the routing service. Label sets are bounded: gRPC
//! method names and status codes, and one certificate-expiry series per partner
//! certificate in the registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// gRPC method, e.g. `ResolvePartnership`.
    pub method: &'static str,
    /// gRPC status code name, e.g. `ok`, `not_found`.
    pub code: &'static str,
}

/// Labels of a request duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method.
    pub method: &'static str,
}

/// Labels of a partner certificate's expiry gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// Partnership id.
    pub partnership: String,
    /// SHA-256 fingerprint of the certificate (lowercase hex).
    pub fingerprint: String,
}

/// The routing service's metrics; cheap to clone, all clones share values.
#[derive(Clone)]
pub struct RoutingMetrics {
    /// Finished requests by method and status code.
    pub requests: Family<RequestLabels, Counter>,
    /// Request durations by method.
    pub request_duration_seconds: Family<MethodLabels, Histogram>,
    /// Open WatchPartnerships streams.
    pub active_watchers: Gauge,
    /// Change events received from Redis pub/sub.
    pub events_received: Counter,
    /// 1 while the Redis pub/sub subscription for change events is live.
    pub event_subscription_up: Gauge,
    /// Days until each partner certificate expires (negative once expired).
    pub certificate_expiry_days: Family<CertificateLabels, Gauge<f64, AtomicU64>>,
}

fn request_duration_histogram() -> Histogram {
    // 0.5 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

impl RoutingMetrics {
    /// Creates the metrics and registers them under `as2_routing_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            request_duration_seconds: Family::new_with_constructor(request_duration_histogram),
            active_watchers: Gauge::default(),
            events_received: Counter::default(),
            event_subscription_up: Gauge::default(),
            certificate_expiry_days: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("as2_routing");
        registry.register(
            "requests",
            "finished grpc requests",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "grpc request durations",
            metrics.request_duration_seconds.clone(),
        );
        registry.register(
            "active_watchers",
            "open partnership watch streams",
            metrics.active_watchers.clone(),
        );
        registry.register(
            "events_received",
            "partnership change events received from redis",
            metrics.events_received.clone(),
        );
        registry.register(
            "event_subscription_up",
            "whether the redis subscription for change events is live",
            metrics.event_subscription_up.clone(),
        );
        registry.register(
            "certificate_expiry_days",
            "days until the partner certificate expires, per partnership and certificate",
            metrics.certificate_expiry_days.clone(),
        );
        metrics
    }
}
