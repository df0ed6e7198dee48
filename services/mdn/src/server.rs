//! Starting and stopping the MDN service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use as2_common::admin::{AdminState, serve_admin};
use as2_common::health::GrpcHealth;
use as2_common::prometheus_client::registry::Registry;
use as2_common::redis::StateBackend;
use as2_common::shutdown::Readiness;
use as2_common::telemetry::GrpcTraceLayer;
use as2_rpc::mdn::v1::mdn_delivery_service_server::{MdnDeliveryServiceServer, SERVICE_NAME};
use as2_rpc::tonic::transport::Server;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::MdnConfig;
use crate::metrics::MdnMetrics;
use crate::retry::RetryPolicy;
use crate::service::MdnApi;
use crate::store::DeliveryStore;
use crate::tracking::StatusEvents;
use crate::transport::MdnTransport;
use crate::worker::{Deliverer, WorkerSettings, run_workers};

/// How long status events get to be acknowledged when the service stops.
const EVENT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An MDN service with its listeners bound and its state backend (Redis, or memory for
/// `memory://`) set up, not yet serving. Binding first lets callers learn the actual
/// ports (port 0).
pub struct MdnServer {
    config: MdnConfig,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    store: DeliveryStore,
}

impl MdnServer {
    /// Checks the configuration, connects to Redis (or keeps the state in this process
    /// when the Redis URL is `memory://`) and binds both listeners.
    pub async fn bind(config: MdnConfig) -> anyhow::Result<Self> {
        config
            .delivery
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid delivery settings")?;
        let status_ttl_secs = config.delivery.status_ttl_secs;
        let store = match as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?
        {
            StateBackend::Redis(redis) => {
                // Blocking stream reads get a connection of their own; the response
                // timeout leaves room for the block time.
                let reader_connection = as2_common::redis::connect_manager(
                    &redis.client,
                    &config.redis,
                    config.redis.response_timeout() + std::time::Duration::from_secs(2),
                )
                .await
                .context("redis setup failed for the job reader")?;
                DeliveryStore::new(redis.connection, redis.namespace, status_ttl_secs)
                    .with_reader_connection(reader_connection)
            }
            StateBackend::InMemory { namespace } => {
                DeliveryStore::in_memory(namespace, status_ttl_secs)
            }
        };
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
            store,
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

    /// Serves until `shutdown` completes, then drains in order: report not ready, wait
    /// the shutdown delay, stop accepting gRPC and taking jobs, give open requests and
    /// attempts the grace period (unfinished jobs are taken over by other replicas),
    /// flush status events, close the admin server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            grpc_listener,
            admin_listener,
            store,
        } = self;
        let grpc_addr = grpc_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut registry = Registry::default();
        let metrics = MdnMetrics::register(&mut registry);
        let readiness = Readiness::new();
        let draining = CancellationToken::new();
        let stop_workers = CancellationToken::new();
        let stop_admin = CancellationToken::new();
        let admin_task = tokio::spawn(serve_admin(
            admin_listener,
            AdminState::new(readiness.clone(), Arc::new(registry)),
            stop_admin.clone().cancelled_owned(),
        ));

        let delivery = &config.delivery;
        store
            .ensure_consumer_group()
            .await
            .context("cannot create the mdn job stream's consumer group")?;
        let events = StatusEvents::new(&config.tracking, metrics.clone())
            .context("kafka producer setup failed")?;
        if config.tracking.kafka_bootstrap_servers.is_none() {
            tracing::warn!("no kafka brokers configured, mdn status events are not published");
        }
        let transport =
            MdnTransport::new(delivery.attempt_timeout(), delivery.tls_ca_file.as_deref())
                .context("https client setup failed")?;
        let deliverer = Arc::new(Deliverer {
            store: store.clone(),
            transport,
            policy: RetryPolicy::from_config(delivery),
            events: events.clone(),
            metrics: metrics.clone(),
        });
        let settings = WorkerSettings {
            consumer: consumer_name(delivery.consumer_name.as_deref()),
            workers: delivery.workers,
            reclaim_idle: delivery.reclaim_idle(),
            poll_interval: delivery.poll_interval(),
        };
        let consumer = settings.consumer.clone();
        let workers_task = tokio::spawn(run_workers(
            deliverer,
            settings,
            stop_workers.clone(),
            config.shutdown.grace_period(),
        ));

        let (health, health_service) = GrpcHealth::new([SERVICE_NAME]).await;
        let state_backend = store.backend_kind();
        let prefix = store.namespace().prefix().to_owned();
        let api = MdnApi::new(store, events.clone(), metrics);
        let mut grpc_task = tokio::spawn(
            Server::builder()
                .layer(GrpcTraceLayer)
                .add_service(health_service)
                .add_service(MdnDeliveryServiceServer::new(api))
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
            consumer,
            workers = delivery.workers,
            state_backend,
            prefix,
            "mdn service ready"
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
                tracing::info!("mdn service draining");
                tokio::time::sleep(config.shutdown.delay()).await;
                draining.cancel();
                stop_workers.cancel();
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
        stop_workers.cancel();
        if let Err(error) = workers_task.await {
            tracing::warn!(%error, "delivery workers task failed");
        }
        let flushing = events.clone();
        if let Err(error) =
            tokio::task::spawn_blocking(move || flushing.flush(EVENT_FLUSH_TIMEOUT)).await
        {
            tracing::warn!(%error, "status event flush task failed");
        }
        stop_admin.cancel();
        if let Err(error) = admin_task.await {
            tracing::warn!(%error, "admin server task failed");
        }
        tracing::info!("mdn service stopped");
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

/// The configured consumer name, or the host name with a random suffix.
fn consumer_name(configured: Option<&str>) -> String {
    if let Some(name) = configured.map(str::trim).filter(|name| !name.is_empty()) {
        return name.to_owned();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "as2-mdn".to_owned());
    let mut suffix = [0_u8; 4];
    if openssl::rand::rand_bytes(&mut suffix).is_err() {
        suffix = std::process::id().to_le_bytes();
    }
    format!("{host}-{:08x}", u32::from_le_bytes(suffix))
}

/// Runs the MDN service until `shutdown` completes.
///
/// This is what the `as2-mdn` binary does after telemetry is set up, and how tests
/// and a single-process gateway start the service.
pub async fn run(
    config: MdnConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    MdnServer::bind(config).await?.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_unique_unless_configured() {
        assert_eq!(consumer_name(Some("pod-1")), "pod-1");
        assert_ne!(consumer_name(None), consumer_name(None));
        assert_ne!(consumer_name(Some("  ")), "  ");
    }
}
