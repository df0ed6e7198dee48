//! The `as2.routing.v1.RoutingService` gRPC service.

use std::time::{Instant, SystemTime};

use as2_common::grpc::auth::caller_identity;
use as2_rpc::routing::v1::routing_service_server::RoutingService;
use as2_rpc::routing::v1::{
    CreatePartnershipRequest, CreatePartnershipResponse, DeletePartnershipRequest,
    DeletePartnershipResponse, GetPartnershipRequest, GetPartnershipResponse,
    ListPartnershipsRequest, ListPartnershipsResponse, Partnership, PartnershipEvent,
    ResolvePartnershipRequest, ResolvePartnershipResponse, UpdatePartnershipRequest,
    UpdatePartnershipResponse, WatchPartnershipsRequest,
};
use as2_rpc::tonic::{Request, Response, Status};
use as2_rpc::{ErrorKind, ServiceError, status_from_error};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::events::EventHub;
use crate::metrics::{MethodLabels, RequestLabels, RoutingMetrics};
use crate::store::{PartnershipStore, StoreError};
use crate::validation::{FieldError, check_partnership_id, prepare_partnership};

/// The log target of partnership changes (each also in the audit stream in Redis,
/// [`PartnershipStore::audit_log`]), so log collectors can route them apart.
pub const AUDIT_TARGET: &str = "as2_audit";

/// Page size when the request gives none.
const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size.
const MAX_PAGE_SIZE: u32 = 1_000;

/// Why a routing request failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The request fails validation.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for RoutingError {
    fn error_kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::InvalidArgument,
            Self::Store(error) => match error {
                StoreError::NotFound { .. } | StoreError::PairNotFound { .. } => {
                    ErrorKind::NotFound
                }
                StoreError::IdTaken { .. } | StoreError::PairTaken { .. } => {
                    ErrorKind::AlreadyExists
                }
                StoreError::RevisionMismatch { .. } | StoreError::Contended { .. } => {
                    ErrorKind::Conflict
                }
                StoreError::Redis(_) if error.is_unavailable() => ErrorKind::Unavailable,
                StoreError::Redis(_)
                | StoreError::Corrupt { .. }
                | StoreError::UnexpectedReply(_) => ErrorKind::Internal,
            },
        }
    }
}

/// Serves partnerships from the store and change events from the hub.
#[derive(Clone)]
pub struct RoutingApi {
    store: PartnershipStore,
    events: EventHub,
    metrics: RoutingMetrics,
    /// Cancelled when the server drains, which ends open watch streams.
    draining: CancellationToken,
}

impl RoutingApi {
    /// The service over `store` and `events`.
    pub fn new(
        store: PartnershipStore,
        events: EventHub,
        metrics: RoutingMetrics,
        draining: CancellationToken,
    ) -> Self {
        Self {
            store,
            events,
            metrics,
            draining,
        }
    }

    /// Records the outcome of one request and turns errors into statuses.
    fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        result: Result<T, RoutingError>,
    ) -> Result<Response<T>, Status> {
        let result = result.map_err(|error| {
            let kind = error.error_kind();
            match kind {
                ErrorKind::Internal => tracing::error!(method, %error, "request failed"),
                ErrorKind::Unavailable => tracing::warn!(method, %error, "request failed"),
                _ => tracing::debug!(method, %error, "request refused"),
            }
            status_from_error(&error)
        });
        let code = match &result {
            Ok(_) => "ok",
            Err(status) => code_label(status.code()),
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
        self.metrics
            .request_duration_seconds
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        result.map(Response::new)
    }

    async fn create(
        &self,
        request: CreatePartnershipRequest,
        caller: &str,
    ) -> Result<Partnership, RoutingError> {
        let now = SystemTime::now();
        let mut partnership = prepare_partnership(request.partnership.unwrap_or_default(), now)?;
        if partnership.id.is_empty() {
            partnership.id = generate_partnership_id();
        }
        partnership.created_at = Some(now.into());
        partnership.updated_at = partnership.created_at;
        let created = self.store.create(partnership, caller).await?;
        tracing::info!(
            target: AUDIT_TARGET,
            caller,
            partnership = %created.id,
            revision = created.revision,
            as2_from = %created.as2_from,
            as2_to = %created.as2_to,
            "partnership created"
        );
        Ok(created)
    }

    async fn update(
        &self,
        request: UpdatePartnershipRequest,
        caller: &str,
    ) -> Result<Partnership, RoutingError> {
        let now = SystemTime::now();
        let replacement = request.partnership.unwrap_or_default();
        if replacement.id.is_empty() {
            return Err(
                FieldError::new("partnership.id", "required to update a partnership").into(),
            );
        }
        let replacement = prepare_partnership(replacement, now)?;
        let updated = self
            .store
            .update(replacement, request.expected_revision, now, caller)
            .await?;
        tracing::info!(
            target: AUDIT_TARGET,
            caller,
            partnership = %updated.id,
            revision = updated.revision,
            "partnership updated"
        );
        Ok(updated)
    }

    async fn delete(
        &self,
        request: DeletePartnershipRequest,
        caller: &str,
    ) -> Result<Partnership, RoutingError> {
        check_id_field(&request.id)?;
        let deleted = self
            .store
            .delete(&request.id, request.expected_revision, caller)
            .await?;
        tracing::info!(
            target: AUDIT_TARGET,
            caller,
            partnership = %deleted.id,
            revision = deleted.revision,
            "partnership deleted"
        );
        Ok(deleted)
    }

    async fn list(
        &self,
        request: ListPartnershipsRequest,
    ) -> Result<ListPartnershipsResponse, RoutingError> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            check_partnership_id(&request.page_token)
                .map_err(|_| FieldError::new("page_token", "not a token this service issued"))?;
            Some(request.page_token.as_str())
        };
        let page = self.store.list(after, page_size as usize).await?;
        Ok(ListPartnershipsResponse {
            partnerships: page.partnerships,
            next_page_token: page.next_after.unwrap_or_default(),
        })
    }
}

fn check_id_field(id: &str) -> Result<(), FieldError> {
    check_partnership_id(id).map_err(|reason| FieldError::new("id", reason))
}

/// A random id: 20 lowercase hex digits.
fn generate_partnership_id() -> String {
    let mut bytes = [0_u8; 10];
    if openssl::rand::rand_bytes(&mut bytes).is_err() {
        // The CSPRNG failing is next to impossible; fall back to the clock so
        // that creation still works (uniqueness is enforced by the store).
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        bytes.copy_from_slice(&nanos.to_be_bytes()[6..]);
    }
    crate::certificate::hex(&bytes)
}

fn code_label(code: as2_rpc::tonic::Code) -> &'static str {
    use as2_rpc::tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::Aborted => "aborted",
        Code::Unavailable => "unavailable",
        Code::Internal => "internal",
        _ => "other",
    }
}

#[as2_rpc::tonic::async_trait]
impl RoutingService for RoutingApi {
    async fn create_partnership(
        &self,
        request: Request<CreatePartnershipRequest>,
    ) -> Result<Response<CreatePartnershipResponse>, Status> {
        let started = Instant::now();
        let caller = caller_identity(&request);
        let result = self
            .create(request.into_inner(), &caller)
            .await
            .map(|partnership| CreatePartnershipResponse {
                partnership: Some(partnership),
            });
        self.finish("CreatePartnership", started, result)
    }

    async fn update_partnership(
        &self,
        request: Request<UpdatePartnershipRequest>,
    ) -> Result<Response<UpdatePartnershipResponse>, Status> {
        let started = Instant::now();
        let caller = caller_identity(&request);
        let result = self
            .update(request.into_inner(), &caller)
            .await
            .map(|partnership| UpdatePartnershipResponse {
                partnership: Some(partnership),
            });
        self.finish("UpdatePartnership", started, result)
    }

    async fn delete_partnership(
        &self,
        request: Request<DeletePartnershipRequest>,
    ) -> Result<Response<DeletePartnershipResponse>, Status> {
        let started = Instant::now();
        let caller = caller_identity(&request);
        let result = self
            .delete(request.into_inner(), &caller)
            .await
            .map(|partnership| DeletePartnershipResponse {
                partnership: Some(partnership),
            });
        self.finish("DeletePartnership", started, result)
    }

    async fn get_partnership(
        &self,
        request: Request<GetPartnershipRequest>,
    ) -> Result<Response<GetPartnershipResponse>, Status> {
        let started = Instant::now();
        let id = request.into_inner().id;
        let result = match check_id_field(&id) {
            Err(error) => Err(error.into()),
            Ok(()) => self.store.get(&id).await.map_err(RoutingError::from),
        };
        let result = result.map(|partnership| GetPartnershipResponse {
            partnership: Some(partnership),
        });
        self.finish("GetPartnership", started, result)
    }

    async fn list_partnerships(
        &self,
        request: Request<ListPartnershipsRequest>,
    ) -> Result<Response<ListPartnershipsResponse>, Status> {
        let started = Instant::now();
        let result = self.list(request.into_inner()).await;
        self.finish("ListPartnerships", started, result)
    }

    async fn resolve_partnership(
        &self,
        request: Request<ResolvePartnershipRequest>,
    ) -> Result<Response<ResolvePartnershipResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .store
            .resolve(&request.as2_from, &request.as2_to)
            .await
            .map(|partnership| ResolvePartnershipResponse {
                partnership: Some(partnership),
            })
            .map_err(RoutingError::from);
        self.finish("ResolvePartnership", started, result)
    }

    type WatchPartnershipsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<PartnershipEvent, Status>> + Send + 'static>,
    >;

    async fn watch_partnerships(
        &self,
        _request: Request<WatchPartnershipsRequest>,
    ) -> Result<Response<Self::WatchPartnershipsStream>, Status> {
        let started = Instant::now();
        let events = ReceiverStream::new(self.events.watch(self.draining.child_token())).map(Ok);
        let stream: Self::WatchPartnershipsStream = Box::pin(events);
        self.finish("WatchPartnerships", started, Ok(stream))
    }
}
