//! Status events on a Kafka tracking topic.
//!
//! One JSON record per state change (`queued`, `retry-scheduled`, `delivered`,
//! `failed`), keyed by the partnership id (the delivery id when there is none) so one
//! partnership's events share a partition, with the delivery's `traceparent` as a header.
//! `queued` is published after the enqueue is stored, so a quick first attempt can publish
//! its outcome before it; `attempts` orders one delivery's events.
//! The producer is the shared idempotent one (`acks=all`, [`as2_common::kafka`]), which
//! replaces itself when its idempotence state breaks. Events are informational: the status in
//! Redis is authoritative, so a broker outage never holds up deliveries; events that
//! cannot be queued or are not acknowledged are counted and logged.

use std::sync::Arc;
use std::time::Duration;

use as2_common::kafka::{IdempotentProducer, KafkaConfig, ProducerSettings, Record};
use rdkafka::error::KafkaError;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::TrackingConfig;
use crate::metrics::{MdnMetrics, StateLabels};
use crate::store::DeliveryRecord;

/// How long librdkafka keeps trying to deliver one event, unless configured.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One status event as published.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEvent {
    /// `queued`, `retry-scheduled`, `delivered` or `failed`.
    pub event: &'static str,
    /// The delivery.
    pub delivery_id: String,
    /// Message-ID of the message the MDN answers.
    pub original_message_id: String,
    /// Partnership of the original message.
    pub partnership_id: String,
    /// AS2-From of the enqueue request.
    pub as2_from: String,
    /// AS2-To of the enqueue request.
    pub as2_to: String,
    /// Receipt-Delivery-Option URL.
    pub delivery_url: String,
    /// Attempts made.
    pub attempts: u32,
    /// HTTP status of the last attempt, 0 without one.
    pub http_status: u32,
    /// Why the last attempt failed; empty otherwise.
    pub error: String,
    /// When the event happened (RFC 3339).
    pub at: String,
    /// When the next attempt is due (RFC 3339), for `retry-scheduled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

impl StatusEvent {
    /// The event for `record` in its current state, at `now_ms`.
    pub fn new(event: &'static str, record: &DeliveryRecord, now_ms: i64) -> Self {
        Self {
            event,
            delivery_id: record.delivery_id.clone(),
            original_message_id: record.original_message_id.clone(),
            partnership_id: record.partnership_id.clone(),
            as2_from: record.as2_from.clone(),
            as2_to: record.as2_to.clone(),
            delivery_url: record.url.clone(),
            attempts: record.attempts,
            http_status: record.last_http_status,
            error: record.last_error.clone(),
            at: rfc3339(now_ms),
            next_attempt_at: (record.next_attempt_at_ms > 0)
                .then(|| rfc3339(record.next_attempt_at_ms)),
        }
    }
}

/// Unix milliseconds as RFC 3339 (the epoch for out-of-range values).
pub fn rfc3339(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Publishes status events; does nothing when no brokers are configured. Cheap to
/// clone.
#[derive(Clone)]
pub struct StatusEvents {
    inner: Option<Publisher>,
    metrics: MdnMetrics,
}

#[derive(Clone)]
struct Publisher {
    producer: IdempotentProducer,
    topic: Arc<str>,
}

impl StatusEvents {
    /// Creates the producer when `kafka` names brokers. Connecting happens in the
    /// background.
    pub fn new(
        kafka: &KafkaConfig,
        tracking: &TrackingConfig,
        metrics: MdnMetrics,
    ) -> Result<Self, KafkaError> {
        let Some(bootstrap) = kafka.configured_bootstrap_servers() else {
            return Ok(Self {
                inner: None,
                metrics,
            });
        };
        let producer = IdempotentProducer::new(
            kafka,
            bootstrap,
            ProducerSettings {
                client_id: "as2-mdn",
                default_publish_timeout: EVENT_TIMEOUT,
                linger: Duration::from_millis(5),
            },
        )?;
        Ok(Self {
            inner: Some(Publisher {
                producer,
                topic: tracking.topic().into(),
            }),
            metrics,
        })
    }

    /// Events that go nowhere (for tests and API-only set-ups).
    pub fn disabled(metrics: MdnMetrics) -> Self {
        Self {
            inner: None,
            metrics,
        }
    }

    /// Queues `event` for publishing and returns at once; the acknowledgement is awaited
    /// in the background.
    pub fn publish(&self, event: &StatusEvent, traceparent: &str) {
        let Some(publisher) = &self.inner else { return };
        let payload = match serde_json::to_vec(event) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode a status event");
                return;
            }
        };
        let key = if event.partnership_id.is_empty() {
            event.delivery_id.as_str()
        } else {
            event.partnership_id.as_str()
        };
        let headers = if traceparent.is_empty() {
            Vec::new()
        } else {
            vec![("traceparent", traceparent.to_owned())]
        };
        let record = Record {
            topic: &publisher.topic,
            key,
            partition: None,
            headers,
            payload: &payload,
        };
        let state = event.event;
        match publisher.producer.enqueue(record) {
            Ok(acknowledgement) => {
                let metrics = self.metrics.clone();
                let delivery_id = event.delivery_id.clone();
                tokio::spawn(async move {
                    let label = match acknowledgement.await {
                        Ok(_stored) => state,
                        Err(error) => {
                            tracing::warn!(
                                delivery_id,
                                event = state,
                                %error,
                                "status event not published"
                            );
                            "dropped"
                        }
                    };
                    metrics
                        .tracking_events
                        .get_or_create(&StateLabels { state: label })
                        .inc();
                });
            }
            Err(error) => {
                tracing::warn!(delivery_id = event.delivery_id, event = state, %error, "status event not queued");
                self.metrics
                    .tracking_events
                    .get_or_create(&StateLabels { state: "dropped" })
                    .inc();
            }
        }
    }

    /// Waits up to `timeout` for queued events to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) {
        if let Some(publisher) = &self.inner {
            publisher.producer.flush(timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_rfc3339_times() {
        let record = DeliveryRecord {
            delivery_id: "d".to_owned(),
            attempts: 2,
            next_attempt_at_ms: 1_700_000_000_000,
            ..DeliveryRecord::default()
        };
        let event = StatusEvent::new("retry-scheduled", &record, 0);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "retry-scheduled");
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        assert_eq!(json["next_attempt_at"], "2023-11-14T22:13:20Z");
        let queued = StatusEvent::new("queued", &DeliveryRecord::default(), 0);
        assert!(
            serde_json::to_value(&queued)
                .unwrap()
                .get("next_attempt_at")
                .is_none()
        );
    }
}
