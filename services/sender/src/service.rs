//! The gRPC API (`as2.sender.v1.OutboundService`): asynchronous MDN reconciliation.

use std::sync::Arc;

use as2_rpc::sender::v1::outbound_service_server::OutboundService;
use as2_rpc::sender::v1::{ReconcileMdnRequest, ReconcileMdnResponse, ReconcileOutcome};
use as2_rpc::tonic::{Request, Response, Status};

use crate::outbound::{OutboundSender, ReconcileError, Reconciled};

/// Largest MDN accepted for reconciliation.
const MAX_MDN_BYTES: usize = 1024 * 1024;

/// The gRPC service over an [`OutboundSender`].
pub struct OutboundApi {
    sender: Arc<OutboundSender>,
}

impl OutboundApi {
    /// Serves `sender`.
    pub fn new(sender: Arc<OutboundSender>) -> Self {
        Self { sender }
    }
}

#[as2_rpc::tonic::async_trait]
impl OutboundService for OutboundApi {
    async fn reconcile_mdn(
        &self,
        request: Request<ReconcileMdnRequest>,
    ) -> Result<Response<ReconcileMdnResponse>, Status> {
        let request = request.into_inner();
        if request.body.len() > MAX_MDN_BYTES {
            self.sender.metrics.reconciled("invalid");
            return Err(Status::invalid_argument(format!(
                "the MDN is larger than {MAX_MDN_BYTES} bytes"
            )));
        }
        let headers: Vec<(String, String)> = request
            .headers
            .into_iter()
            .map(|field| (field.name, field.value))
            .collect();
        let (outcome, label, record) = match self.sender.reconcile(&headers, &request.body).await {
            Ok(Reconciled::Delivered(record)) => (ReconcileOutcome::Delivered, "delivered", record),
            Ok(Reconciled::Failed(record)) => (ReconcileOutcome::Failed, "failed", record),
            Ok(Reconciled::AlreadyReconciled(record)) => (
                ReconcileOutcome::AlreadyReconciled,
                "already_reconciled",
                record,
            ),
            Err(error) => {
                let (label, status) = match &error {
                    ReconcileError::Invalid(_) => {
                        ("invalid", Status::invalid_argument(error.to_string()))
                    }
                    ReconcileError::NotFound(_) => {
                        ("not_found", Status::not_found(error.to_string()))
                    }
                    ReconcileError::Rejected(_) => {
                        ("rejected", Status::permission_denied(error.to_string()))
                    }
                    ReconcileError::Unavailable(_) => {
                        ("unavailable", Status::unavailable(error.to_string()))
                    }
                };
                self.sender.metrics.reconciled(label);
                return Err(status);
            }
        };
        self.sender.metrics.reconciled(label);
        Ok(Response::new(ReconcileMdnResponse {
            outcome: outcome.into(),
            original_message_id: record.message_id,
            partnership_id: record.partnership_id,
            reason: record.reason,
        }))
    }
}
