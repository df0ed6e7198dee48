//! The `as2.mdn.v1.MdnDeliveryService` gRPC service.

use std::time::Instant;

use as2_rpc::mdn::v1::mdn_delivery_service_server::MdnDeliveryService;
use as2_rpc::mdn::v1::{
    DeliveryState, DeliveryStatus, EnqueueMdnDeliveryRequest, EnqueueMdnDeliveryResponse,
    GetDeliveryStatusRequest, GetDeliveryStatusResponse, ListDeliveriesRequest,
    ListDeliveriesResponse,
};
use as2_rpc::prost_types::Timestamp;
use as2_rpc::tonic::{Request, Response, Status};
use as2_rpc::{ErrorKind, ServiceError, status_from_error};

use crate::job::{FieldError, is_delivery_id, validate_request};
use crate::metrics::{EnqueueLabels, MdnMetrics, RequestLabels};
use crate::store::{DeliveryRecord, DeliveryStore, Enqueued, ListCursor, ListFilter, StoreError};
use crate::tracking::{StatusEvent, StatusEvents};
use crate::worker::now_ms;

/// Page size when the request gives none.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size.
const MAX_PAGE_SIZE: u32 = 1_000;
/// Most index entries one listing call looks at (filters may skip many).
const LIST_SCAN_LIMIT: usize = 10_000;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum MdnApiError {
    /// The request fails validation.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such delivery (or its record has expired).
    #[error("delivery {0:?} not found")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for MdnApiError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Store(error) if error.is_unavailable() => ErrorKind::Unavailable,
            Self::Store(_) => ErrorKind::Internal,
        }
    }
}

/// Serves enqueue and status requests from the store.
#[derive(Clone)]
pub struct MdnApi {
    store: DeliveryStore,
    events: StatusEvents,
    metrics: MdnMetrics,
}

impl MdnApi {
    /// The service over `store`.
    pub fn new(store: DeliveryStore, events: StatusEvents, metrics: MdnMetrics) -> Self {
        Self {
            store,
            events,
            metrics,
        }
    }

    /// Validates and stores a delivery; see the proto for the contract.
    pub async fn enqueue(
        &self,
        request: EnqueueMdnDeliveryRequest,
    ) -> Result<EnqueueMdnDeliveryResponse, MdnApiError> {
        let mut delivery = validate_request(request)?;
        if delivery.traceparent.is_empty() {
            // A caller that did not name its trace still gets the delivery in the
            // trace of this call (continued from the gRPC metadata when it sent one).
            delivery.traceparent = as2_common::telemetry::current_traceparent().unwrap_or_default();
        }
        let refusal = delivery.refusal();
        let now = now_ms();
        let enqueued = self
            .store
            .enqueue(&delivery, refusal.as_deref(), now)
            .await?;
        let outcome = match &enqueued {
            Enqueued::Duplicate => "duplicate",
            Enqueued::Queued => "new",
            Enqueued::Failed(_) => "unsupported",
        };
        self.metrics
            .enqueued
            .get_or_create(&EnqueueLabels { outcome })
            .inc();
        let created = enqueued != Enqueued::Duplicate;
        if created {
            let failed = match &enqueued {
                Enqueued::Failed(reason) => Some(reason.as_str()),
                Enqueued::Duplicate | Enqueued::Queued => None,
            };
            let record = DeliveryRecord::enqueued(&delivery, failed, now);
            let event = if failed.is_some() { "failed" } else { "queued" };
            self.events
                .publish(&StatusEvent::new(event, &record, now), &record.traceparent);
            match failed {
                Some(reason) => tracing::warn!(
                    delivery_id = delivery.delivery_id,
                    partnership = delivery.partnership_id,
                    url = delivery.url(),
                    reason,
                    "mdn delivery recorded as failed at once"
                ),
                None => tracing::debug!(
                    delivery_id = delivery.delivery_id,
                    partnership = delivery.partnership_id,
                    "mdn delivery queued"
                ),
            }
        }
        Ok(EnqueueMdnDeliveryResponse {
            delivery_id: delivery.delivery_id,
            already_enqueued: !created,
        })
    }

    /// The status of one delivery.
    pub async fn get_status(&self, delivery_id: &str) -> Result<DeliveryStatus, MdnApiError> {
        if !is_delivery_id(delivery_id) {
            return Err(MdnApiError::NotFound(delivery_id.to_owned()));
        }
        self.store
            .status(delivery_id)
            .await?
            .map(|record| delivery_status(&record))
            .ok_or_else(|| MdnApiError::NotFound(delivery_id.to_owned()))
    }

    /// One page of deliveries, newest first.
    pub async fn list(
        &self,
        request: ListDeliveriesRequest,
    ) -> Result<ListDeliveriesResponse, MdnApiError> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(
                ListCursor::from_token(&request.page_token).ok_or_else(|| FieldError {
                    field: "page_token",
                    reason: "not a token from a previous page".to_owned(),
                })?,
            )
        };
        let state = DeliveryState::try_from(request.state).map_err(|_| FieldError {
            field: "state",
            reason: format!("unknown state {}", request.state),
        })?;
        let filter = ListFilter {
            partnership_id: Some(request.partnership_id).filter(|id| !id.is_empty()),
            state: Some(state).filter(|state| *state != DeliveryState::Unspecified),
        };
        let (records, next) = self
            .store
            .list(&filter, page_size as usize, after, LIST_SCAN_LIMIT)
            .await?;
        Ok(ListDeliveriesResponse {
            deliveries: records.iter().map(delivery_status).collect(),
            next_page_token: next.map(|cursor| cursor.to_token()).unwrap_or_default(),
        })
    }

    fn count(&self, method: &'static str, code: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
    }

    fn answer<T>(
        &self,
        method: &'static str,
        result: Result<T, MdnApiError>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(value) => {
                self.count(method, "ok");
                Ok(Response::new(value))
            }
            Err(error) => {
                let kind = error.error_kind();
                self.count(method, kind.as_str());
                if matches!(kind, ErrorKind::Unavailable | ErrorKind::Internal) {
                    tracing::warn!(method, %error, "mdn request failed");
                }
                Err(status_from_error(&error))
            }
        }
    }
}

/// The proto form of a record.
pub fn delivery_status(record: &DeliveryRecord) -> DeliveryStatus {
    DeliveryStatus {
        delivery_id: record.delivery_id.clone(),
        original_message_id: record.original_message_id.clone(),
        partnership_id: record.partnership_id.clone(),
        delivery_url: record.url.clone(),
        state: record.state as i32,
        attempts: record.attempts,
        last_http_status: record.last_http_status,
        last_error: record.last_error.clone(),
        enqueued_at: timestamp(record.enqueued_at_ms),
        last_attempt_at: timestamp(record.last_attempt_at_ms),
        next_attempt_at: timestamp(record.next_attempt_at_ms),
        delivered_at: timestamp(record.delivered_at_ms),
    }
}

fn timestamp(unix_ms: i64) -> Option<Timestamp> {
    (unix_ms > 0).then(|| Timestamp {
        seconds: unix_ms / 1000,
        // In 0..1_000_000_000 for non-negative milliseconds.
        nanos: i32::try_from((unix_ms % 1000) * 1_000_000).unwrap_or(0),
    })
}

#[as2_rpc::tonic::async_trait]
impl MdnDeliveryService for MdnApi {
    async fn enqueue_mdn_delivery(
        &self,
        request: Request<EnqueueMdnDeliveryRequest>,
    ) -> Result<Response<EnqueueMdnDeliveryResponse>, Status> {
        let started = Instant::now();
        let result = self.enqueue(request.into_inner()).await;
        tracing::trace!(
            elapsed_ms = started.elapsed().as_millis(),
            "enqueue handled"
        );
        self.answer("EnqueueMdnDelivery", result)
    }

    async fn get_delivery_status(
        &self,
        request: Request<GetDeliveryStatusRequest>,
    ) -> Result<Response<GetDeliveryStatusResponse>, Status> {
        let result = self
            .get_status(&request.into_inner().delivery_id)
            .await
            .map(|status| GetDeliveryStatusResponse {
                status: Some(status),
            });
        self.answer("GetDeliveryStatus", result)
    }

    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        let result = self.list(request.into_inner()).await;
        self.answer("ListDeliveries", result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds() {
        let stamp = timestamp(1_700_000_000_123).unwrap();
        assert_eq!(stamp.seconds, 1_700_000_000);
        assert_eq!(stamp.nanos, 123_000_000);
        assert!(timestamp(0).is_none());
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        let invalid = MdnApiError::Invalid(FieldError {
            field: "as2_from",
            reason: "must not be empty".to_owned(),
        });
        assert_eq!(
            status_from_error(&invalid).code(),
            as2_rpc::tonic::Code::InvalidArgument
        );
        let missing = MdnApiError::NotFound("x".to_owned());
        assert_eq!(
            status_from_error(&missing).code(),
            as2_rpc::tonic::Code::NotFound
        );
    }
}
