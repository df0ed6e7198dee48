//! Starting routing replicas against a real Redis for the integration tests.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use as2_common::runtime::ServiceHandle;
use as2_routing::{RoutingConfig, RoutingServer};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::routing::v1::{
    CreatePartnershipRequest, DeletePartnershipRequest, GetPartnershipRequest,
    ListPartnershipsRequest, ListPartnershipsResponse, PartnerCertificate, Partnership,
    PartnershipEvent, PartnershipEventKind, ResolvePartnershipRequest, UpdatePartnershipRequest,
};
use as2_rpc::tonic::transport::Channel;
use as2_rpc::tonic::{Code, Status, Streaming};

/// One routing service replica running in this process.
pub struct Replica {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    service: ServiceHandle,
}

impl Replica {
    /// Starts a replica on ephemeral ports using `redis_url` and `prefix`.
    pub async fn start(redis_url: &str, prefix: &str) -> Self {
        Self::start_with(RoutingConfig::local(redis_url, prefix)).await
    }

    /// Starts a replica with `config`.
    pub async fn start_with(config: RoutingConfig) -> Self {
        let server = RoutingServer::bind(config)
            .await
            .expect("routing service binds");
        let grpc_addr = server.grpc_addr().unwrap();
        let admin_addr = server.admin_addr().unwrap();
        let service = ServiceHandle::spawn("routing", |stop| server.serve(stop));
        let replica = Self {
            grpc_addr,
            admin_addr,
            service,
        };
        replica.wait_until_ready().await;
        replica
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_until_ready(&self) {
        as2_testkit::admin::wait_until_ready("routing", self.admin_addr).await;
    }

    /// A gRPC client of this replica.
    pub async fn client(&self) -> RoutingServiceClient<Channel> {
        RoutingServiceClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("client connects")
    }

    /// Triggers shutdown without waiting for it.
    pub fn request_stop(&self) {
        self.service.request_stop();
    }

    /// Stops the replica and waits until it has stopped.
    pub async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(15), self.service.stop())
            .await
            .expect("routing service stops within 15 s")
            .expect("routing service stops cleanly");
    }
}

/// A partnership with only the required fields.
pub fn partnership(as2_from: &str, as2_to: &str, topic: &str) -> Partnership {
    Partnership {
        as2_from: as2_from.to_owned(),
        as2_to: as2_to.to_owned(),
        kafka_topic: topic.to_owned(),
        ..Partnership::default()
    }
}

/// A certificate entry for `pem`.
pub fn certificate(pem: String) -> PartnerCertificate {
    PartnerCertificate {
        pem,
        ..PartnerCertificate::default()
    }
}

/// Creates `partnership` and returns what the service stored.
pub async fn create(
    client: &mut RoutingServiceClient<Channel>,
    partnership: Partnership,
) -> Result<Partnership, Status> {
    let response = client
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership),
        })
        .await?;
    Ok(response
        .into_inner()
        .partnership
        .expect("response has the partnership"))
}

/// The partnership with `id`.
pub async fn get(
    client: &mut RoutingServiceClient<Channel>,
    id: &str,
) -> Result<Partnership, Status> {
    let request = GetPartnershipRequest { id: id.to_owned() };
    let response = client.get_partnership(request).await?;
    Ok(response
        .into_inner()
        .partnership
        .expect("response has the partnership"))
}

/// Replaces partnership `partnership.id`, expecting `expected_revision`.
pub async fn update(
    client: &mut RoutingServiceClient<Channel>,
    partnership: Partnership,
    expected_revision: u64,
) -> Result<Partnership, Status> {
    let request = UpdatePartnershipRequest {
        partnership: Some(partnership),
        expected_revision,
    };
    let response = client.update_partnership(request).await?;
    Ok(response
        .into_inner()
        .partnership
        .expect("response has the partnership"))
}

/// Deletes partnership `id`, expecting `expected_revision`.
pub async fn delete(
    client: &mut RoutingServiceClient<Channel>,
    id: &str,
    expected_revision: u64,
) -> Result<Partnership, Status> {
    let request = DeletePartnershipRequest {
        id: id.to_owned(),
        expected_revision,
    };
    let response = client.delete_partnership(request).await?;
    Ok(response
        .into_inner()
        .partnership
        .expect("response has the partnership"))
}

/// The partnership for the pair.
pub async fn resolve(
    client: &mut RoutingServiceClient<Channel>,
    as2_from: &str,
    as2_to: &str,
) -> Result<Partnership, Status> {
    let request = ResolvePartnershipRequest {
        as2_from: as2_from.to_owned(),
        as2_to: as2_to.to_owned(),
    };
    let response = client.resolve_partnership(request).await?;
    Ok(response
        .into_inner()
        .partnership
        .expect("response has the partnership"))
}

/// The first page of the listing (default page size).
pub async fn list_page(client: &mut RoutingServiceClient<Channel>) -> ListPartnershipsResponse {
    let response = client
        .list_partnerships(ListPartnershipsRequest::default())
        .await;
    response.expect("listing works").into_inner()
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} does not contain {needle:?}",
        status.message()
    );
}

/// Opens a watch stream and waits for its first RESET event, after which
/// every change is delivered.
pub async fn watch(client: &mut RoutingServiceClient<Channel>) -> Streaming<PartnershipEvent> {
    let mut stream = client
        .watch_partnerships(as2_rpc::routing::v1::WatchPartnershipsRequest {})
        .await
        .expect("watch starts")
        .into_inner();
    let first = next_event(&mut stream).await;
    assert_eq!(first.kind(), PartnershipEventKind::Reset);
    stream
}

/// The next event, failing the test after 10 s.
pub async fn next_event(stream: &mut Streaming<PartnershipEvent>) -> PartnershipEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream is healthy")
        .expect("the stream has not ended")
}

/// GET `path` on the admin server; returns status and body.
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    as2_testkit::admin::get(address, path).await.unwrap()
}
