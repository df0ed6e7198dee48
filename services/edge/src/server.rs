//! Starting and stopping the edge.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::grpc::{self, ChannelSettings, GrpcSecurity};
use as2_common::redis::StateBackend;
use as2_common::runtime::{self, Runtime};
use as2_rpc::mdn::v1::mdn_delivery_service_client::MdnDeliveryServiceClient;
use as2_rpc::sender::v1::outbound_service_client::OutboundServiceClient;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::clients::{MdnDeliveryQueue, MdnReconciler};
use as2_store::Store;

use crate::config::{
    EdgeConfig, INLINE_ONLY_MAX_BODY_BYTES, INLINE_ONLY_MAX_DOCUMENT_BYTES, InboundConfig,
};
use crate::dedup::{DedupStore, DedupTimes};
use crate::document::{ByteBudget, DocumentStorage};
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
    grpc_security: GrpcSecurity,
    as2_tls: Option<Arc<crate::tls::EdgeTls>>,
}

impl EdgeServer {
    /// Connects to Redis, or sets up in-memory dedup records for the Redis URL
    /// `memory://`, and binds the AS2 and admin listeners (port 0 allowed).
    pub async fn bind(config: EdgeConfig) -> anyhow::Result<Self> {
        let grpc_security = GrpcSecurity::from_config(&config.grpc_tls)?;
        let as2_tls = crate::tls::EdgeTls::from_config(&config.as2_tls)?;
        let state = as2_common::redis::connect_state(&config.redis)
            .await
            .context("redis setup failed")?;
        let as2_listener = runtime::bind(config.as2_listen, "as2").await?;
        let admin_listener = runtime::bind(config.admin.http_listen, "http").await?;
        Ok(Self {
            config,
            as2_listener,
            admin_listener,
            state,
            grpc_security,
            as2_tls,
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

    /// Serves until `shutdown` completes, then drains in the runtime's order
    /// ([`as2_common::runtime`]): report not ready, wait the shutdown delay, stop
    /// accepting and let open requests finish within the grace period, stop following
    /// partnership changes, flush the Kafka producer, close the admin server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            as2_listener,
            admin_listener,
            state,
            grpc_security,
            as2_tls,
        } = self;
        let as2_addr = as2_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut registry = Registry::default();
        let metrics = Arc::new(EdgeMetrics::register(&mut registry));
        let mut runtime = Runtime::start("edge", admin_listener, registry, &config.shutdown);

        let inbound = &config.inbound;
        let routes = RouteCache::new(
            &config.routing_url,
            &grpc_security,
            Duration::from_secs(inbound.route_cache_ttl_secs),
            metrics.clone(),
        )?;
        let following = routes.clone();
        runtime.spawn_background("partnership change watch", move |stop| async move {
            following.follow_changes(stop).await;
            Ok(())
        });
        let publisher =
            DocumentPublisher::new(config.kafka.clone()).context("kafka producer setup failed")?;
        let mdn_delivery: Option<Arc<dyn MdnDeliveryQueue>> = match &config.mdn_url {
            Some(url) => Some(Arc::new(MdnDeliveryServiceClient::new(grpc::channel(
                "mdn",
                url,
                ChannelSettings::default(),
                &grpc_security,
            )?))),
            None => None,
        };
        let mdn_reconciler: Option<Arc<dyn MdnReconciler>> = match &config.sender_url {
            Some(url) => Some(Arc::new(OutboundServiceClient::new(grpc::channel(
                "sender",
                url,
                ChannelSettings::default(),
                &grpc_security,
            )?))),
            None => None,
        };
        let (documents, settings) = document_storage(&config)?;
        if let Some(store) = documents.store.clone() {
            let retention = settings.claim_check_retention_days;
            runtime.spawn_background("retention sweep", move |stop| async move {
                crate::retention::run_sweeps(
                    store,
                    crate::inbound::DOCUMENT_PREFIX,
                    retention,
                    Duration::from_secs(3600),
                    stop,
                )
                .await;
                Ok(())
            });
        }
        let processor = Arc::new(InboundProcessor {
            settings: settings.clone(),
            routes,
            keys: Arc::new(KeyStore::new(&config.keys.keys_dir)),
            default_decryption_key_id: config.keys.default_decryption_key_id.clone(),
            default_signing_key_id: config.keys.default_signing_key_id.clone(),
            dedup: dedup_store(
                &state,
                DedupTimes {
                    lease: Duration::from_millis(inbound.dedup_lease_ms.max(1)),
                    publish_window: publisher.publish_window(),
                    retention: Duration::from_secs(inbound.dedup_retention_secs),
                },
            ),
            publisher: Arc::new(publisher.clone()),
            mdn_delivery,
            mdn_reconciler,
            metrics,
            unwrap_message: crate::inbound::streaming_unwrap,
            documents,
            background: tokio_util::task::TaskTracker::new(),
        });
        if processor.documents.store.is_some() && inbound.orphan_sweep_interval_secs > 0 {
            let (sweeper, age, interval) = (
                Arc::clone(&processor),
                Duration::from_secs(inbound.orphan_sweep_after_secs),
                Duration::from_secs(inbound.orphan_sweep_interval_secs),
            );
            runtime.spawn_background("orphan sweep", move |stop| async move {
                crate::orphans::run_orphan_sweeps(sweeper, age, interval, stop).await;
                Ok(())
            });
        }
        let limits = HttpLimits {
            max_body_bytes: settings.max_body_bytes,
            header_read_timeout: inbound.header_read_timeout(),
            body_idle_timeout: inbound.body_idle_timeout(),
            body_min_rate: inbound.body_min_rate_bytes_per_sec,
            max_connections: inbound.max_connections.max(1),
            http2_max_concurrent_streams: inbound.http2_max_concurrent_streams.max(1),
            per_source_per_minute: inbound.rate_limit_per_source_per_minute,
        };
        let (stop_accepting, grace) = (runtime.accepting(), config.shutdown.grace_period());
        runtime.spawn_frontend("as2 listener", async move {
            serve_as2(
                as2_listener,
                as2_tls,
                processor.clone(),
                limits,
                stop_accepting,
                grace,
            )
            .await;
            // Archive entries of the last answered messages are completed before the
            // edge goes, within the runtime's clean-up margin after the grace period.
            processor
                .finish_background(Duration::from_millis(1500))
                .await;
            Ok(())
        });
        runtime.on_drain_flush("kafka producer", move || {
            publisher.flush(PRODUCER_FLUSH_TIMEOUT);
        });

        tracing::info!(
            %as2_addr,
            %admin_addr,
            routing = %config.routing_url,
            state = state.kind(),
            "edge ready"
        );
        runtime.serve(shutdown).await
    }
}

/// The object store and the limits that follow from having one (or not).
fn document_storage(config: &EdgeConfig) -> anyhow::Result<(DocumentStorage, InboundConfig)> {
    let mut settings = config.inbound.clone();
    let budget = ByteBudget::new(settings.memory_budget_mib.saturating_mul(1024 * 1024));
    let store = match &config.object_store.object_store_url {
        Some(_) => {
            let store_config = config
                .object_store
                .store_config(std::path::Path::new("/var/lib/as2/objects"))
                .context("invalid object store settings")?;
            let store = Store::open(&store_config).context("cannot open the object store")?;
            tracing::info!(
                store = store.location(),
                "documents over the claim-check threshold go to the object store"
            );
            Some(store)
        }
        None => {
            settings.max_body_bytes = settings.max_body_bytes.min(INLINE_ONLY_MAX_BODY_BYTES);
            settings.max_document_bytes = settings
                .max_document_bytes
                .min(INLINE_ONLY_MAX_DOCUMENT_BYTES);
            settings.claim_check_threshold_bytes = settings.max_document_bytes;
            tracing::info!(
                max_body_bytes = settings.max_body_bytes,
                "no object store (AS2_OBJECT_STORE_URL): every document goes inline in its record"
            );
            None
        }
    };
    let documents = DocumentStorage {
        store,
        inline_threshold: settings.claim_check_threshold_bytes,
        budget,
        budget_wait: Duration::from_secs(settings.retry_after_secs.clamp(1, 10)),
    };
    Ok((documents, settings))
}

/// The dedup store on the configured state backend.
fn dedup_store(state: &StateBackend, times: DedupTimes) -> DedupStore {
    match state {
        StateBackend::Redis(redis) => {
            DedupStore::new(redis.connection.clone(), redis.namespace.clone(), times)
        }
        StateBackend::InMemory { namespace } => DedupStore::in_memory(namespace.clone(), times),
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn run(
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    EdgeServer::bind(config).await?.serve(shutdown).await
}
