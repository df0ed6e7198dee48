//! The routing service as the sender uses it, behind a trait ([`PartnershipDirectory`]):
//! the tonic client implements it, and a test can put a stand-in in its place.

use std::time::Duration;

use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{GetPartnershipRequest, Partnership};
use as2_rpc::tonic::transport::Channel;
use as2_rpc::tonic::{Code, Request, Status};
use futures::future::BoxFuture;

/// How long one partnership lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Partnerships by id (`as2.routing.v1.RoutingService/GetPartnership`).
pub trait PartnershipDirectory: Send + Sync {
    /// The partnership `id`; `None` when the directory has none (or the id is not one it
    /// could have), an error when it cannot answer.
    fn partnership(&self, id: &str) -> BoxFuture<'_, Result<Option<Partnership>, Status>>;
}

impl PartnershipDirectory for RoutingServiceClient<Channel> {
    fn partnership(&self, id: &str) -> BoxFuture<'_, Result<Option<Partnership>, Status>> {
        let mut request = Request::new(GetPartnershipRequest { id: id.to_owned() });
        request.set_timeout(LOOKUP_TIMEOUT);
        let mut client = self.clone();
        Box::pin(async move {
            match client.get_partnership(request).await {
                Ok(response) => Ok(response.into_inner().partnership),
                Err(status)
                    if status.code() == Code::NotFound
                        || status.code() == Code::InvalidArgument =>
                {
                    Ok(None)
                }
                Err(status) => Err(status),
            }
        })
    }
}
