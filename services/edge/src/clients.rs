//! The gRPC services the edge calls, each behind a trait: the routing service
//! ([`PartnershipRegistry`]), the MDN service ([`MdnDeliveryQueue`]) and the sender
//! ([`MdnReconciler`]).
//!
//! The tonic clients implement the traits; tests implement them with fakes, so the
//! inbound path can be exercised without a network. The methods return boxed futures so
//! that the traits stay dyn-compatible and the edge holds `Arc<dyn ...>`.
//!
//! The tonic implementations add the caller's trace context to the request metadata
//! when the method is called, so call them inside the span the call belongs to.

use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::mdn::v1::{EnqueueMdnDeliveryRequest, EnqueueMdnDeliveryResponse};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    Partnership, PartnershipEvent, ResolvePartnershipRequest, WatchPartnershipsRequest,
};
use as2_rpc::sender::v1::outbound_service_client::OutboundServiceClient;
use as2_rpc::sender::v1::{ReconcileMdnRequest, ReconcileMdnResponse};
use as2_rpc::tonic::transport::Channel;
use as2_rpc::tonic::{Code, Request, Status};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

/// The stream of partnership changes the routing service sends.
pub type PartnershipEvents = BoxStream<'static, Result<PartnershipEvent, Status>>;

/// The routing service (`as2.routing.v1`) as the edge uses it.
pub trait PartnershipRegistry: Send + Sync {
    /// The partnership for the pair (`as2_from`, `as2_to`), or `None` when the registry
    /// has none; an error when the registry cannot answer.
    fn resolve(
        &self,
        as2_from: &str,
        as2_to: &str,
    ) -> BoxFuture<'_, Result<Option<Partnership>, Status>>;

    /// Opens the stream of partnership changes.
    fn watch(&self) -> BoxFuture<'_, Result<PartnershipEvents, Status>>;
}

impl PartnershipRegistry for RoutingServiceClient<Channel> {
    fn resolve(
        &self,
        as2_from: &str,
        as2_to: &str,
    ) -> BoxFuture<'_, Result<Option<Partnership>, Status>> {
        let mut request = Request::new(ResolvePartnershipRequest {
            as2_from: as2_from.to_owned(),
            as2_to: as2_to.to_owned(),
        });
        as2_common::telemetry::inject_grpc(&mut request);
        let mut client = self.clone();
        Box::pin(async move {
            match client.resolve_partnership(request).await {
                Ok(response) => Ok(response.into_inner().partnership),
                Err(status) if status.code() == Code::NotFound => Ok(None),
                Err(status) => Err(status),
            }
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<PartnershipEvents, Status>> {
        let mut client = self.clone();
        Box::pin(async move {
            let stream = client
                .watch_partnerships(WatchPartnershipsRequest {})
                .await?
                .into_inner();
            Ok(stream.boxed())
        })
    }
}

/// The MDN service (`as2.mdn.v1`), which delivers asynchronous MDNs.
pub trait MdnDeliveryQueue: Send + Sync {
    /// Hands one prepared MDN over for delivery; `Ok` once the service has stored it.
    fn enqueue(
        &self,
        request: EnqueueMdnDeliveryRequest,
    ) -> BoxFuture<'_, Result<EnqueueMdnDeliveryResponse, Status>>;
}

impl MdnDeliveryQueue for MdnDeliveryServiceClient<Channel> {
    fn enqueue(
        &self,
        request: EnqueueMdnDeliveryRequest,
    ) -> BoxFuture<'_, Result<EnqueueMdnDeliveryResponse, Status>> {
        let mut request = Request::new(request);
        as2_common::telemetry::inject_grpc(&mut request);
        let mut client = self.clone();
        Box::pin(async move {
            client
                .enqueue_mdn_delivery(request)
                .await
                .map(as2_rpc::tonic::Response::into_inner)
        })
    }
}

/// The sender (`as2.sender.v1`), which matches partners' MDNs to our outbound messages.
pub trait MdnReconciler: Send + Sync {
    /// Hands a partner's MDN to the sender and returns what it made of it.
    fn reconcile(
        &self,
        request: ReconcileMdnRequest,
    ) -> BoxFuture<'_, Result<ReconcileMdnResponse, Status>>;
}

impl MdnReconciler for OutboundServiceClient<Channel> {
    fn reconcile(
        &self,
        request: ReconcileMdnRequest,
    ) -> BoxFuture<'_, Result<ReconcileMdnResponse, Status>> {
        let mut request = Request::new(request);
        as2_common::telemetry::inject_grpc(&mut request);
        let mut client = self.clone();
        Box::pin(async move {
            client
                .reconcile_mdn(request)
                .await
                .map(as2_rpc::tonic::Response::into_inner)
        })
    }
}
