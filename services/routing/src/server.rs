//! Starting and stopping the routing service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::admin::{AdminState, serve_admin};
use as2_common::health::GrpcHealth;
use as2_common::prometheus_client::registry::Registry;
use as2_common::redis::StateBackend;
use as2_common::shutdown::Readiness;
use as2_common::telemetry::GrpcTraceLayer;
use as2_rpc::routing::v1::routing_service_server::{RoutingServiceServer, SERVICE_NAME};
use as2_rpc::tonic::transport::Server;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

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
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    state: StateBackend,
}

impl RoutingServer {
    /// Connects to Redis, or sets up in-memory state for the Redis URL
    /// `memory://`, and binds both listeners.
    pub async fn bind(config: RoutingConfig) -> anyhow::Result<Self> {
        let state = as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?;
        let grpc_listener = TcpListener::bind(config.grpc.grpc_listen)
            .await
            .with_context(|| format!("cannot listen for grpc on {}", config.grpc.grpc_listen))?;
        let admin_listener = TcpListener::bind(config.admin.http_listen)
            .await
            .with_context(|| format!("cannot listen for http on {}", config.admin.http_listen))?;
        Ok(Self {
            config,
            grpc_listener,
            admin_listener,
            state,
        })
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc_listener.local_addr()
    }

    /// The address the admin HTTP server listens on.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in order: report not
    /// ready, wait the shutdown delay, stop accepting gRPC and end watch
    /// streams, give in-flight requests the grace period, stop the event
    /// subscription, and close the admin server last.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            grpc_listener,
            admin_listener,
            state,
        } = self;
        let grpc_addr = grpc_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut registry = Registry::default();
        let metrics = RoutingMetrics::register(&mut registry);
        let readiness = Readiness::new();
        let draining = CancellationToken::new();
        let stop_events = CancellationToken::new();
        let stop_admin = CancellationToken::new();

        let admin_task = tokio::spawn(serve_admin(
            admin_listener,
            AdminState::new(readiness.clone(), Arc::new(registry)),
            stop_admin.clone().cancelled_owned(),
        ));

        let (store, (events, events_task)) = match &state {
            StateBackend::Redis(redis) => {
                let store =
                    PartnershipStore::new(redis.connection.clone(), redis.namespace.clone());
                let hub = EventHub::start(
                    redis.client.clone(),
                    store.events_channel(),
                    metrics.clone(),
                    stop_events.clone(),
                );
                (store, hub)
            }
            StateBackend::InMemory { namespace } => {
                let store = PartnershipStore::in_memory(namespace.clone());
                let changes = store
                    .subscribe_in_process()
                    .context("the in-memory partnership store has no event channel")?;
                let hub = EventHub::start_in_process(changes, metrics.clone(), stop_events.clone());
                (store, hub)
            }
        };
        if !events.wait_until_live(EVENT_SUBSCRIPTION_WAIT).await {
            tracing::warn!("partnership event subscription is not live yet, starting anyway");
        }

        let expiry_task = tokio::spawn(track_certificate_expiry(
            store.clone(),
            events.clone(),
            metrics.clone(),
            stop_events.clone(),
        ));

        let (health, health_service) = GrpcHealth::new([SERVICE_NAME]).await;
        let api = RoutingApi::new(store, events, metrics, draining.clone());
        let mut grpc_task = tokio::spawn(
            Server::builder()
                .layer(GrpcTraceLayer)
                .add_service(health_service)
                .add_service(RoutingServiceServer::new(api))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(grpc_listener),
                    draining.clone().cancelled_owned(),
                ),
        );

        health.set_serving(true).await;
        readiness.set_ready();
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            state = state.kind(),
            prefix = state.namespace().prefix(),
            "routing service ready"
        );

        let grpc_failed_early = tokio::select! {
            () = shutdown => None,
            finished = &mut grpc_task => Some(finished),
        };

        readiness.set_not_ready();
        health.set_serving(false).await;
        let outcome = match grpc_failed_early {
            Some(finished) => {
                tracing::error!("grpc server stopped unexpectedly");
                flatten(finished)
            }
            None => {
                tracing::info!("routing service draining");
                tokio::time::sleep(config.shutdown.delay()).await;
                draining.cancel();
                match tokio::time::timeout(config.shutdown.grace_period(), &mut grpc_task).await {
                    Ok(finished) => flatten(finished),
                    Err(_elapsed) => {
                        tracing::warn!(
                            "in-flight requests outlived the grace period, cutting them off"
                        );
                        grpc_task.abort();
                        Ok(())
                    }
                }
            }
        };

        draining.cancel();
        stop_events.cancel();
        if let Err(error) = events_task.await {
            tracing::warn!(%error, "event subscription task failed");
        }
        if let Err(error) = expiry_task.await {
            tracing::warn!(%error, "certificate expiry task failed");
        }
        stop_admin.cancel();
        if let Err(error) = admin_task.await {
            tracing::warn!(%error, "admin server task failed");
        }
        tracing::info!("routing service stopped");
        outcome
    }
}

fn flatten(
    finished: Result<Result<(), as2_rpc::tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    finished
        .context("grpc server task failed")?
        .context("grpc server failed")
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
