//! gRPC health checking (`grpc.health.v1.Health`).
//!
//! Wraps tonic-health so that each service reports the overall status (the
//! empty service name, which Kubernetes gRPC probes query) and the status of
//! each of its named services in one call.

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use tonic_health::pb::health_server::{Health, HealthServer};

/// Reports a service's gRPC health.
#[derive(Clone)]
pub struct GrpcHealth {
    reporter: HealthReporter,
    service_names: Vec<String>,
}

impl GrpcHealth {
    /// Creates the reporter and the health service to add to the gRPC server.
    /// Everything starts as not serving.
    pub async fn new(service_names: &[&str]) -> (Self, HealthServer<impl Health + use<>>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Self {
            reporter,
            service_names: service_names.iter().map(|&name| name.to_owned()).collect(),
        };
        health.set_serving(false).await;
        (health, server)
    }

    /// Reports all services serving (`true`) or not serving (`false`).
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in &self.service_names {
            self.reporter.set_service_status(name, status).await;
        }
    }
}
