//! Starting and stopping the sender.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::grpc::{self, ChannelSettings};
use as2_common::prometheus_client::registry::Registry;
use as2_common::runtime::{GrpcListeners, Runtime};
use as2_partner::keys::KeyStore;
use as2_partner::target::Network;
use as2_partner::transport::{ClientDefaults, PartnerClients, TransportLimits};
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::sender::v1::outbound_service_server::{OutboundServiceServer, SERVICE_NAME};
use as2_store::Store;
use tokio_util::sync::CancellationToken;

use crate::config::SenderConfig;
use crate::consumer::{Concurrency, create_consumer, run_consumer};
use crate::documents::{self, Objects};
use crate::metrics::SenderMetrics;
use crate::outbound::{Backoff, OutboundSender, SenderSettings};
use crate::receipts::ReceiptPublisher;
use crate::recovery::{StateRecovery, check_and_log};
use crate::service::OutboundApi;
use crate::store::MessageStore;

/// How long receipts get to be acknowledged when the service stops.
const RECEIPT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A sender with its listeners bound and Redis connected, not yet serving.
pub struct SenderServer {
    config: SenderConfig,
    listeners: GrpcListeners,
    redis: as2_common::redis::Redis,
}

impl SenderServer {
    /// Checks the configuration, connects to Redis and binds both listeners.
    pub async fn bind(config: SenderConfig) -> anyhow::Result<Self> {
        config
            .sending
            .validate()
            .map_err(anyhow::Error::msg)
            .context("invalid sending settings")?;
        let redis = as2_common::redis::connect(&config.redis)
            .await
            .context("redis setup failed")?;
        crate::store::layout_migration(&redis.namespace)
            .run(&redis)
            .await
            .context("moving the sender keys to the hash-tagged layout failed")?;
        let listeners = GrpcListeners::bind(&config.grpc, &config.admin).await?;
        Ok(Self {
            config,
            listeners,
            redis,
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
    /// ([`as2_common::runtime`]): report not ready, wait the shutdown delay, stop taking
    /// records and gRPC requests at once, give records and requests in progress one grace
    /// period and commit what is done, stop the sweeper, flush receipts, close the admin
    /// server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            redis,
        } = self;
        let (grpc_addr, admin_addr) = (listeners.grpc_addr()?, listeners.admin_addr()?);

        let mut registry = Registry::default();
        let metrics = SenderMetrics::register(&mut registry);
        let mut runtime = Runtime::start("sender", listeners.admin, registry, &config.shutdown);

        let sending = &config.sending;
        let routing_channel = grpc::channel(
            "routing",
            &sending.routing_url,
            ChannelSettings::default(),
            &listeners.security,
        )?;
        let receipts =
            ReceiptPublisher::new(&config.kafka).context("kafka producer setup failed")?;
        let keys = Arc::new(KeyStore::new(&sending.keys_dir));
        let sender = Arc::new(OutboundSender {
            store: MessageStore::new(
                redis.connection.clone(),
                redis.namespace.clone(),
                sending.record_ttl_secs,
            ),
            routing: Arc::new(RoutingServiceClient::new(routing_channel)),
            keys: keys.clone(),
            clients: Arc::new(
                PartnerClients::new(
                    ClientDefaults {
                        limits: TransportLimits::default(),
                        network: Network::default(),
                        extra_ca_file: sending.tls_ca_file.clone(),
                        egress_proxy: sending.egress_proxy.clone(),
                    },
                    keys,
                )
                .context("https client setup failed")?,
            ),
            objects: Arc::new(objects(&config)?),
            receipts: receipts.clone(),
            metrics,
            settings: SenderSettings {
                message_id_domain: sending.message_id_domain.clone(),
                default_signing_key_id: sending.default_signing_key_id.clone(),
                backoff: Backoff {
                    initial: Duration::from_millis(sending.initial_backoff_ms),
                    max: Duration::from_millis(sending.max_backoff_ms),
                },
                async_mdn_timeout: Duration::from_secs(sending.async_mdn_timeout_secs),
            },
        });
        let consumer = create_consumer(&config.kafka).context("kafka consumer setup failed")?;
        let (consuming, concurrency, grace) = (
            sender.clone(),
            Concurrency::new(sending.max_in_flight, sending.max_in_flight_per_partnership),
            config.shutdown.grace_period(),
        );
        let stop_consuming = runtime.accepting();
        runtime.spawn_frontend("outbound consumer", async move {
            run_consumer(consumer, consuming, concurrency, stop_consuming, grace).await;
            Ok(())
        });
        runtime.watch_key_layout(
            crate::store::layout_migration(&redis.namespace),
            redis.clone(),
        );
        let (sweeping, interval) = (sender.clone(), sending.sweep_interval());
        let recovery = StateRecovery::new(
            config.kafka.clone(),
            Duration::from_secs(sending.async_mdn_timeout_secs),
        );
        runtime.spawn_background("sweeper", move |stop| async move {
            sweep(sweeping, recovery, interval, stop).await;
            Ok(())
        });

        let health_service = runtime.grpc_health(&[SERVICE_NAME]).await;
        runtime.serve_grpc(
            grpc::server()
                .add_service(health_service)
                .add_service(OutboundServiceServer::new(OutboundApi::new(sender))),
            listeners.grpc,
            &listeners.security,
        );
        runtime.on_drain_flush("receipts", move || receipts.flush(RECEIPT_FLUSH_TIMEOUT));
        tracing::info!(
            %grpc_addr,
            %admin_addr,
            topic = config.kafka.outbound_topic(),
            group = config.kafka.consumer_group(),
            receipts = config.kafka.receipts_topic(),
            "sender ready"
        );
        runtime.serve(shutdown).await
    }
}

async fn sweep(
    sender: Arc<OutboundSender>,
    recovery: StateRecovery,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut spool_swept: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = sender.sweep().await {
            tracing::warn!(%error, "sweep failed");
        }
        check_and_log(&recovery, &sender).await;
        if let Some(store) = sender.objects.own()
            && spool_swept.is_none_or(|at| at.elapsed() >= SPOOL_SWEEP_INTERVAL)
        {
            spool_swept = Some(std::time::Instant::now());
            let today = time::OffsetDateTime::now_utc().date();
            match documents::sweep_spool(store, today).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "deleted spooled messages left behind"),
                Err(error) => tracing::warn!(%error, "spool sweep failed"),
            }
        }
    }
}

/// How often spooled messages left by a crash are looked for.
const SPOOL_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// The object stores: the sender's own when configured.
fn objects(config: &SenderConfig) -> anyhow::Result<Objects> {
    let own = match &config.object_store.object_store_url {
        Some(_) => {
            let store_config = config
                .object_store
                .store_config(std::path::Path::new("/nonexistent"))
                .context("invalid object store settings")?;
            let store = Store::open(&store_config).context("cannot open the object store")?;
            tracing::info!(
                store = store.location(),
                "large messages are built in the object store, and sent messages archived there"
            );
            Some(store)
        }
        None => None,
    };
    Ok(Objects::new(
        own,
        config.object_store.clone(),
        config.sending.archive_retention_days,
        config.sending.max_large_builds,
    ))
}

/// Runs the sender until `shutdown` completes.
///
/// This is what the `as2-sender` binary does after telemetry is set up, and how tests
/// and a single-process gateway start the service.
pub async fn run(
    config: SenderConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    SenderServer::bind(config).await?.serve(shutdown).await
}
