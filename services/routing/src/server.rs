//! Starting and stopping the routing service.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::grpc;
use as2_common::prometheus_client::registry::Registry;
use as2_common::redis::StateBackend;
use as2_common::runtime::{GrpcListeners, Runtime};
use as2_rpc::routing::v1::routing_service_server::{RoutingServiceServer, SERVICE_NAME};

use crate::config::RoutingConfig;
use crate::events::EventHub;
use crate::expiry::track_certificate_expiry;
use crate::metrics::RoutingMetrics;
use crate::service::RoutingApi;
use crate::store::PartnershipStore;

/// How long start-up waits for the change-event subscription before it
/// reports ready anyway (watchers then get their first RESET a bit later).
const EVENT_SUBSCRIPTION_WAIT: Duration = Duration::from_secs(5);

/// A routing service with its listeners bound and Redis connected (or its
/// in-memory state set up), not yet serving. Binding first lets callers learn
/// the actual ports (port 0).
pub struct RoutingServer {
    config: RoutingConfig,
    listeners: GrpcListeners,
    state: StateBackend,
}

impl RoutingServer {
    /// Connects to Redis, or sets up in-memory state for the Redis URL
    /// `memory://`, and binds both listeners.
    pub async fn bind(config: RoutingConfig) -> anyhow::Result<Self> {
        let state = as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?;
        if let StateBackend::Redis(redis) = &state {
            crate::store::layout_migration(&redis.namespace)
                .run(redis)
                .await
                .context("moving the partnership keys to the hash-tagged layout failed")?;
        }
        let listeners = GrpcListeners::bind(&config.grpc, &config.admin).await?;
        Ok(Self {
            config,
            listeners,
            state,
        })
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.grpc_addr()
    }

    /// The address the admin HTTP server listens on.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners.admin_addr()
    }

    /// Serves until `shutdown` completes, then drains in the runtime's order
    /// ([`as2_common::runtime`]): report not ready, wait the shutdown delay, stop
    /// accepting gRPC and end watch streams, give in-flight requests the grace period,
    /// stop the event subscription and the certificate expiry tracker, close the admin
    /// server last.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            state,
        } = self;
        let (grpc_addr, admin_addr) = (listeners.grpc_addr()?, listeners.admin_addr()?);

        let mut registry = Registry::default();
        let metrics = RoutingMetrics::register(&mut registry);
        let mut runtime = Runtime::start("routing", listeners.admin, registry, &config.shutdown);

        let (store, events) = match &state {
            StateBackend::Redis(redis) => {
                let store =
                    PartnershipStore::new(redis.connection.clone(), redis.namespace.clone());
                let (clients, channel, metrics) = (
                    redis.pubsub_clients(),
                    store.events_channel(),
                    metrics.clone(),
                );
                let mut hub = None;
                runtime.spawn_background("partnership event subscription", |stop| {
                    let (events, task) = EventHub::start(clients, channel, metrics, stop);
                    hub = Some(events);
                    async move { task.await.context("the event subscription panicked") }
                });
                runtime.watch_key_layout(
                    crate::store::layout_migration(&redis.namespace),
                    redis.clone(),
                );
                (store, hub)
            }
            StateBackend::InMemory { namespace } => {
                let store = PartnershipStore::in_memory(namespace.clone());
                let changes = store
                    .subscribe_in_process()
                    .context("the in-memory partnership store has no event channel")?;
                let metrics = metrics.clone();
                let mut hub = None;
                runtime.spawn_background("partnership event feed", |stop| {
                    let (events, task) = EventHub::start_in_process(changes, metrics, stop);
                    hub = Some(events);
                    async move { task.await.context("the event feed panicked") }
                });
                (store, hub)
            }
        };
        let events = events.context("the event hub did not start")?;
        if !events.wait_until_live(EVENT_SUBSCRIPTION_WAIT).await {
            tracing::warn!("partnership event subscription is not live yet, starting anyway");
        }

        {
            let (store, events, metrics) = (store.clone(), events.clone(), metrics.clone());
            runtime.spawn_background("certificate expiry tracker", |stop| async move {
                track_certificate_expiry(store, events, metrics, stop).await;
                Ok(())
            });
        }

        let health_service = runtime.grpc_health(&[SERVICE_NAME]).await;
        // Watch streams end when accepting stops, so that the server can finish.
        let api = RoutingApi::new(store, events, metrics, runtime.accepting());
        runtime.serve_grpc(
            grpc::server()
                .add_service(health_service)
                .add_service(RoutingServiceServer::new(api)),
            listeners.grpc,
            &listeners.security,
        );
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            state = state.kind(),
            prefix = state.namespace().prefix(),
            "routing service ready"
        );
        runtime.serve(shutdown).await
    }
}

/// Runs the routing service until `shutdown` completes.
///
/// This is what the `as2-routing` binary does after telemetry is set up, and
/// how tests and a single-process gateway start the service.
pub async fn run(
    config: RoutingConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    RoutingServer::bind(config).await?.serve(shutdown).await
}
