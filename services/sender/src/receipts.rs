//! Receipts: one Kafka record per outcome, on the receipts topic.
//!
//! The value is JSON ([`Receipt`]); the key is the partnership id; headers name the
//! Message-ID, the partnership and the outcome, plus the document's `traceparent` and,
//! when the message is archived, `as2-archive-location` (its archive entry). The
//! producer is the shared idempotent one (`acks=all`, replaced when its state breaks) and
//! [`ReceiptPublisher::publish`] waits for the acknowledgement.
//!
//! One receipt per message: an outcome enters the Redis outbox when it is recorded and
//! leaves it once its receipt is acknowledged. Before producing, the publisher arms the
//! message's record with the receipt's partition, an offset at or below the one it will
//! get, and the end of the window in which it may land ([`crate::store::ReceiptArm`]).
//! Whoever publishes it later (the sweeper, a replica that reads the record again after a
//! crash) and finds an armed attempt whose window ended without an acknowledgement on
//! record first reads that partition from there: a receipt found is marked published,
//! and only a receipt not found is produced again. The exception is a Redis that lost
//! the record ([`crate::recovery`]).

use std::sync::Arc;
use std::time::Duration;

use as2_common::kafka::placement::{Placement, PlacingProducer, Search, header_value};
use as2_common::kafka::{IdempotentProducer, ProducerSettings, PublishError, Record};
use base64::Engine as _;
use rdkafka::error::KafkaError;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::SenderKafkaConfig;
use crate::store::MessageRecord;

/// How long one receipt may take to be acknowledged, unless configured.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// The receipt of one outbound message.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Receipt {
    /// `delivered` or `failed`.
    pub outcome: String,
    /// Our Message-ID, with angle brackets.
    pub message_id: String,
    /// The partnership.
    pub partnership_id: String,
    /// Our AS2 id.
    pub as2_from: String,
    /// The partner's AS2 id.
    pub as2_to: String,
    /// The outbound record this receipt answers.
    pub source: ReceiptSource,
    /// The document's filename, if it had one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub filename: String,
    /// Sends made.
    pub attempts: u32,
    /// `none`, `sync` or `async`.
    pub mdn_mode: String,
    /// HTTP status of the last send; 0 without a response.
    pub http_status: u32,
    /// The MDN's Disposition, e.g. `processed` or `processed/error: decryption-failed`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub disposition: String,
    /// The MDN's Received-Content-MIC.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub received_mic: String,
    /// The MIC of the message as sent.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expected_mic: String,
    /// Whether the two MICs were compared and matched.
    pub mic_verified: bool,
    /// Why the message failed; absent when delivered.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The partner's MDN exactly as received, for non-repudiation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mdn: Option<ReceiptMdn>,
    /// When the outcome was recorded (RFC 3339).
    pub at: String,
}

/// Where the outbound record was.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReceiptSource {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The partner's MDN as received.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReceiptMdn {
    /// HTTP headers of the MDN (the response for a sync MDN, the request for an async
    /// one), in order.
    pub headers: Vec<(String, String)>,
    /// The body, base64.
    pub body_base64: String,
}

impl Receipt {
    /// The receipt of a finished message.
    pub fn from_record(record: &MessageRecord) -> Self {
        Self {
            outcome: record.state.clone(),
            message_id: record.message_id.clone(),
            partnership_id: record.partnership_id.clone(),
            as2_from: record.as2_from.clone(),
            as2_to: record.as2_to.clone(),
            source: ReceiptSource {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
            },
            filename: record.filename.clone(),
            attempts: record.attempts,
            mdn_mode: record.mdn_mode.clone(),
            http_status: record.http_status,
            disposition: record.disposition.clone(),
            received_mic: record.received_mic.clone(),
            expected_mic: record.expected_mic.clone(),
            mic_verified: record.mic_verified,
            reason: record.reason.clone(),
            mdn: (!record.mdn_body.is_empty()).then(|| ReceiptMdn {
                headers: record.mdn_headers.clone(),
                body_base64: base64::engine::general_purpose::STANDARD.encode(&record.mdn_body),
            }),
            at: rfc3339(record.finished_at_ms),
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

/// Why a receipt was not published.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The JSON could not be encoded.
    #[error("cannot encode the receipt: {0}")]
    Encode(#[from] serde_json::Error),
    /// Kafka did not acknowledge it.
    #[error("kafka: {0}")]
    Kafka(#[from] PublishError),
}

/// The idempotent producer of receipts (the shared one of [`as2_common::kafka`], with
/// placement and search). Cheap to clone.
#[derive(Clone)]
pub struct ReceiptPublisher {
    producer: PlacingProducer,
    topic: Arc<str>,
}

impl ReceiptPublisher {
    /// Creates the producer; connecting happens in the background.
    pub fn new(config: &SenderKafkaConfig) -> Result<Self, KafkaError> {
        let producer = IdempotentProducer::new(
            &config.client,
            config.bootstrap_servers(),
            ProducerSettings {
                client_id: "as2-sender",
                default_publish_timeout: PUBLISH_TIMEOUT,
                linger: Duration::from_millis(2),
            },
        )?;
        let consumer_config = config.client.client_config(
            config.bootstrap_servers(),
            "as2-sender-search",
            &[("group.id", "as2-sender-search")],
        );
        Ok(Self {
            producer: PlacingProducer::new(producer, consumer_config),
            topic: config.receipts_topic().into(),
        })
    }

    /// How long after arming a receipt may still land
    /// ([`as2_common::kafka::placement::publish_window`]).
    pub fn publish_window(&self) -> Duration {
        self.producer.producer().publish_window()
    }

    /// Where the receipt of `record` goes (keyed by its partnership).
    pub async fn place(&self, record: &MessageRecord) -> Result<Placement, PublishError> {
        self.producer
            .place(&self.topic, &record.partnership_id)
            .await
    }

    /// Reads `partition` from `from` for the receipt of `message_id`.
    pub async fn find(
        &self,
        partition: i32,
        from: i64,
        message_id: &str,
    ) -> Result<Search, PublishError> {
        let message_id = message_id.to_owned();
        let matches = Box::new(move |record: &rdkafka::message::BorrowedMessage<'_>| {
            header_value(record, "as2-message-id") == Some(message_id.as_str())
        });
        self.producer
            .find(&self.topic, partition, from, matches)
            .await
    }

    /// Publishes the receipt of `record` to `partition` and waits for the
    /// acknowledgement.
    pub async fn publish(
        &self,
        record: &MessageRecord,
        partition: i32,
    ) -> Result<(), ReceiptError> {
        let receipt = Receipt::from_record(record);
        let payload = serde_json::to_vec(&receipt)?;
        let mut headers = vec![
            ("as2-message-id", receipt.message_id.clone()),
            ("as2-partnership-id", receipt.partnership_id.clone()),
            ("as2-outcome", receipt.outcome.clone()),
        ];
        if !record.traceparent.is_empty() {
            headers.push(("traceparent", record.traceparent.clone()));
        }
        if !record.archive_location.is_empty() {
            headers.push(("as2-archive-location", record.archive_location.clone()));
        }
        self.producer
            .publish(Record {
                topic: &self.topic,
                key: &receipt.partnership_id,
                partition: Some(partition),
                headers,
                payload: &payload,
            })
            .await?;
        Ok(())
    }

    /// Waits up to `timeout` for queued receipts to be acknowledged. Blocks.
    pub fn flush(&self, timeout: Duration) {
        self.producer.producer().flush(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_carry_the_mdn_for_non_repudiation() {
        let record = MessageRecord {
            message_id: "<m@gw>".to_owned(),
            state: "delivered".to_owned(),
            mdn_headers: vec![("Content-Type".to_owned(), "multipart/report".to_owned())],
            mdn_body: b"mdn".to_vec(),
            finished_at_ms: 1_700_000_000_000,
            ..MessageRecord::default()
        };
        let json = serde_json::to_value(Receipt::from_record(&record)).unwrap();
        assert_eq!(json["outcome"], "delivered");
        assert_eq!(json["mdn"]["body_base64"], "bWRu");
        assert_eq!(json["mdn"]["headers"][0][0], "Content-Type");
        assert_eq!(json["at"], "2023-11-14T22:13:20Z");
        assert!(json.get("reason").is_none());
    }
}
