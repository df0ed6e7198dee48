//! Starting and stopping the MDN service.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use as2_common::grpc;
use as2_common::prometheus_client::registry::Registry;
use as2_common::redis::{Redis, StateBackend};
use as2_common::runtime::{GrpcListeners, Runtime};
use as2_partner::keys::KeyStore;
use as2_partner::target::Network;
use as2_rpc::mdn::v1::mdn_delivery_service_server::{MdnDeliveryServiceServer, SERVICE_NAME};

use crate::config::MdnConfig;
use crate::metrics::MdnMetrics;
use crate::retry::RetryPolicy;
use crate::service::MdnApi;
use crate::store::DeliveryStore;
use crate::tracking::StatusEvents;
use crate::transport::{MdnConnections, MdnTransport};
use crate::worker::{Deliverer, WorkerSettings, run_workers};

/// How long status events get to be acknowledged when the service stops.
const EVENT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// An MDN service with its listeners bound and its state backend (Redis, or memory for
/// `memory://`) set up, not yet serving. Binding first lets callers learn the actual
/// ports (port 0).
pub struct MdnServer {
    config: MdnConfig,
    listeners: GrpcListeners,
    store: DeliveryStore,
    /// The Redis of the store (none in memory), for the key layout watch.
    redis: Option<Redis>,
    network: Network,
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
        let (store, redis) = match as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?
        {
            StateBackend::Redis(redis) => {
                crate::store::layout_migration(&redis.namespace)
                    .run(&redis)
                    .await
                    .context("moving the mdn keys to the hash-tagged layout failed")?;
                // Blocking stream reads get a connection of their own; the response
                // timeout leaves room for the block time.
                let reader_connection = redis
                    .connect_another(
                        &config.redis,
                        config.redis.response_timeout() + std::time::Duration::from_secs(2),
                    )
                    .await
                    .context("redis setup failed for the job reader")?;
                let store = DeliveryStore::new(
                    redis.connection.clone(),
                    redis.namespace.clone(),
                    status_ttl_secs,
                )
                .with_reader_connection(reader_connection);
                (store, Some(redis))
            }
            StateBackend::InMemory { namespace } => {
                (DeliveryStore::in_memory(namespace, status_ttl_secs), None)
            }
        };
        let listeners = GrpcListeners::bind(&config.grpc, &config.admin).await?;
        Ok(Self {
            config,
            listeners,
            store,
            redis,
            network: Network::default(),
        })
    }

    /// Makes the deliveries' connections through `network` (the system's resolver and
    /// plain TCP unless given): tests resolve names and record connection attempts
    /// without leaving the machine.
    #[must_use]
    pub fn with_network(mut self, network: Network) -> Self {
        self.network = network;
        self
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
    /// accepting gRPC and taking jobs, give open requests and attempts the grace period
    /// (unfinished jobs are taken over by other replicas), flush status events, close
    /// the admin server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            store,
            redis,
            network,
        } = self;
        let (grpc_addr, admin_addr) = (listeners.grpc_addr()?, listeners.admin_addr()?);

        let mut registry = Registry::default();
        let metrics = MdnMetrics::register(&mut registry);
        let mut runtime = Runtime::start("mdn", listeners.admin, registry, &config.shutdown);

        let delivery = &config.delivery;
        // A Redis that is briefly away (restarting) must not stop the service from
        // starting: the job reader creates the stream and its group again when it finds
        // them missing.
        if let Err(error) = store.ensure_consumer_group().await {
            tracing::warn!(
                error = %as2_common::error_chain(&error),
                "cannot create the mdn job stream's consumer group yet; the job reader retries"
            );
        }
        if let Some(redis) = redis {
            runtime.watch_key_layout(crate::store::layout_migration(&redis.namespace), redis);
        }
        let events = StatusEvents::new(&config.kafka, &config.tracking, metrics.clone())
            .context("kafka producer setup failed")?;
        if config.kafka.configured_bootstrap_servers().is_none() {
            tracing::warn!("no kafka brokers configured, mdn status events are not published");
        }
        let transport = MdnTransport::new(
            MdnConnections {
                attempt_timeout: delivery.attempt_timeout(),
                extra_ca_file: delivery.tls_ca_file.clone(),
                egress_proxy: delivery.egress_proxy.clone(),
                network,
            },
            Arc::new(KeyStore::new(&delivery.keys_dir)),
        )
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
        let stop_workers = runtime.accepting();
        let grace = config.shutdown.grace_period();
        runtime.spawn_frontend("delivery workers", async move {
            run_workers(deliverer, settings, stop_workers, grace).await;
            Ok(())
        });

        let health_service = runtime.grpc_health(&[SERVICE_NAME]).await;
        let state_backend = store.backend_kind();
        let prefix = store.namespace().prefix().to_owned();
        let api = MdnApi::new(store, events.clone(), metrics);
        runtime.serve_grpc(
            grpc::server()
                .add_service(health_service)
                .add_service(MdnDeliveryServiceServer::new(api)),
            listeners.grpc,
            &listeners.security,
        );
        runtime.on_drain_flush("status events", move || events.flush(EVENT_FLUSH_TIMEOUT));
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            consumer,
            workers = delivery.workers,
            state_backend,
            prefix,
            "mdn service ready"
        );
        runtime.serve(shutdown).await
    }
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
