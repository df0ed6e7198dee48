//! Starting and stopping the edge.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::admin::{AdminState, serve_admin};
use as2_common::redis::StateBackend;
use as2_common::shutdown::Readiness;
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::tonic::transport::Endpoint;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clients::{MdnDeliveryQueue, MdnReconciler};
use crate::config::EdgeConfig;
use crate::dedup::DedupStore;
use crate::http::{HttpLimits, serve_as2};
use crate::inbound::InboundProcessor;
use crate::kafka::DocumentPublisher;
use crate::keys::KeyStore;
use crate::metrics::EdgeMetrics;
use crate::routes::RouteCache;

/// How long a flush of the Kafka producer may take at shutdown.
const PRODUCER_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// An edge with its listeners bound and its clients created, not yet serving.
pub struct EdgeServer {
    config: EdgeConfig,
    as2_listener: TcpListener,
    admin_listener: TcpListener,
    state: StateBackend,
}

impl EdgeServer {
    /// Connects to Redis, or sets up in-memory dedup records for the Redis URL
    /// `memory://`, and binds the AS2 and admin listeners (port 0 allowed).
    pub async fn bind(config: EdgeConfig) -> anyhow::Result<Self> {
        let state = as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?;
        let as2_listener = TcpListener::bind(config.as2_listen)
            .await
            .with_context(|| format!("cannot listen for as2 on {}", config.as2_listen))?;
        let admin_listener = TcpListener::bind(config.admin.http_listen)
            .await
            .with_context(|| format!("cannot listen for http on {}", config.admin.http_listen))?;
        Ok(Self {
            config,
            as2_listener,
            admin_listener,
            state,
        })
    }

    /// The address of the AS2 endpoint.
    pub fn as2_addr(&self) -> std::io::Result<SocketAddr> {
        self.as2_listener.local_addr()
    }

    /// The address of the admin endpoints.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in order: report not ready, wait
    /// the shutdown delay, stop accepting and let open requests finish within the grace
    /// period, flush the Kafka producer, close the admin server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            as2_listener,
            admin_listener,
            state,
        } = self;
        let as2_addr = as2_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut registry = Registry::default();
        let metrics = Arc::new(EdgeMetrics::register(&mut registry));
        let readiness = Readiness::new();
        let stop_admin = CancellationToken::new();
        let stop_accepting = CancellationToken::new();
        let stop_watch = CancellationToken::new();
        let admin_task = tokio::spawn(serve_admin(
            admin_listener,
            AdminState::new(readiness.clone(), Arc::new(registry)),
            stop_admin.clone().cancelled_owned(),
        ));

        let inbound = &config.inbound;
        let routes = RouteCache::new(
            &config.routing_url,
            Duration::from_secs(inbound.route_cache_ttl_secs),
            metrics.clone(),
        )
        .with_context(|| format!("invalid routing url {}", config.routing_url))?;
        let watch_task = tokio::spawn(routes.clone().follow_changes(stop_watch.clone()));
        let publisher =
            DocumentPublisher::new(config.kafka.clone()).context("kafka producer setup failed")?;
        let mdn_delivery: Option<Arc<dyn MdnDeliveryQueue>> = match &config.mdn_url {
            Some(url) => {
                let channel = Endpoint::from_shared(url.clone())
                    .with_context(|| format!("invalid mdn url {url}"))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                Some(Arc::new(MdnDeliveryServiceClient::new(channel)))
            }
            None => None,
        };
        let mdn_reconciler: Option<Arc<dyn MdnReconciler>> = match &config.sender_url {
            Some(url) => {
                let channel = Endpoint::from_shared(url.clone())
                    .with_context(|| format!("invalid sender url {url}"))?
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(Duration::from_secs(10))
                    .connect_lazy();
                Some(Arc::new(
                    as2_rpc::sender::v1::outbound_service_client::OutboundServiceClient::new(
                        channel,
                    ),
                ))
            }
            None => None,
        };
        let processor = Arc::new(InboundProcessor {
            settings: inbound.clone(),
            routes,
            keys: Arc::new(KeyStore::new(&config.keys.keys_dir)),
            default_decryption_key_id: config.keys.default_decryption_key_id.clone(),
            default_signing_key_id: config.keys.default_signing_key_id.clone(),
            dedup: dedup_store(
                &state,
                Duration::from_secs(inbound.dedup_in_flight_secs),
                Duration::from_secs(inbound.dedup_retention_secs),
            ),
            publisher: Arc::new(publisher.clone()),
            mdn_delivery,
            mdn_reconciler,
            metrics,
            unwrap_message: as2_protocol::unwrap_message,
        });
        let limits = HttpLimits {
            max_body_bytes: inbound.max_body_bytes,
            header_read_timeout: inbound.header_read_timeout(),
            body_read_timeout: inbound.body_read_timeout(),
        };
        let mut as2_task = tokio::spawn(serve_as2(
            as2_listener,
            processor,
            limits,
            stop_accepting.clone(),
            config.shutdown.grace_period(),
        ));

        readiness.set_ready();
        tracing::info!(
            %as2_addr,
            %admin_addr,
            routing = %config.routing_url,
            state = state.kind(),
            "edge ready"
        );

        let stopped_early = tokio::select! {
            () = shutdown => false,
            _ = &mut as2_task => true,
        };
        readiness.set_not_ready();
        if stopped_early {
            tracing::error!("as2 listener stopped unexpectedly");
        } else {
            tracing::info!("edge draining");
            tokio::time::sleep(config.shutdown.delay()).await;
            stop_accepting.cancel();
            let _ = as2_task.await;
        }
        stop_watch.cancel();
        let _ = watch_task.await;
        let flushing = publisher.clone();
        let _ = tokio::task::spawn_blocking(move || flushing.flush(PRODUCER_FLUSH_TIMEOUT)).await;
        stop_admin.cancel();
        let _ = admin_task.await;
        tracing::info!("edge stopped");
        if stopped_early {
            anyhow::bail!("as2 listener stopped unexpectedly");
        }
        Ok(())
    }
}

/// The dedup store on the configured state backend.
fn dedup_store(state: &StateBackend, in_flight_ttl: Duration, done_ttl: Duration) -> DedupStore {
    match state {
        StateBackend::Redis(redis) => DedupStore::new(
            redis.connection.clone(),
            redis.namespace.clone(),
            in_flight_ttl,
            done_ttl,
        ),
        StateBackend::InMemory { namespace } => {
            DedupStore::in_memory(namespace.clone(), in_flight_ttl, done_ttl)
        }
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn run(
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    EdgeServer::bind(config).await?.serve(shutdown).await
}
