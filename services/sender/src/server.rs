//! Starting and stopping the sender.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use as2_common::admin::{AdminState, serve_admin};
use as2_common::health::GrpcHealth;
use as2_common::prometheus_client::registry::Registry;
use as2_common::shutdown::Readiness;
use as2_partner::keys::KeyStore;
use as2_partner::transport::PartnerTransport;
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::sender::v1::outbound_service_server::{OutboundServiceServer, SERVICE_NAME};
use as2_rpc::tonic::transport::{Endpoint, Server};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::SenderConfig;
use crate::consumer::{create_consumer, run_consumer};
use crate::metrics::SenderMetrics;
use crate::outbound::{Backoff, OutboundSender, SenderSettings};
use crate::receipts::ReceiptPublisher;
use crate::service::OutboundApi;
use crate::store::MessageStore;

/// How long receipts get to be acknowledged when the service stops.
const RECEIPT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A sender with its listeners bound and Redis connected, not yet serving.
pub struct SenderServer {
    config: SenderConfig,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
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
            redis,
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
    /// the shutdown delay, stop taking records and gRPC requests, give records in
    /// progress the grace period and commit what is done, flush receipts, close the
    /// admin server.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            config,
            grpc_listener,
            admin_listener,
            redis,
        } = self;
        let grpc_addr = grpc_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let mut registry = Registry::default();
        let metrics = SenderMetrics::register(&mut registry);
        let readiness = Readiness::new();
        let stop_admin = CancellationToken::new();
        let stop_work = CancellationToken::new();
        let draining = CancellationToken::new();
        let admin_task = tokio::spawn(serve_admin(
            admin_listener,
            AdminState::new(readiness.clone(), Arc::new(registry)),
            stop_admin.clone().cancelled_owned(),
        ));

        let sending = &config.sending;
        let routing_channel = Endpoint::from_shared(sending.routing_url.clone())
            .with_context(|| format!("invalid routing url {}", sending.routing_url))?
            .connect_timeout(Duration::from_secs(3))
            .connect_lazy();
        let receipts =
            ReceiptPublisher::new(&config.kafka).context("kafka producer setup failed")?;
        let sender = Arc::new(OutboundSender {
            store: MessageStore::new(
                redis.connection.clone(),
                redis.namespace.clone(),
                sending.record_ttl_secs,
            ),
            routing: RoutingServiceClient::new(routing_channel),
            keys: Arc::new(KeyStore::new(&sending.keys_dir)),
            transport: PartnerTransport::new(sending.tls_ca_file.as_deref())
                .context("https client setup failed")?,
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
        let consumer_task = tokio::spawn(run_consumer(
            consumer,
            sender.clone(),
            sending.max_in_flight,
            stop_work.clone(),
            config.shutdown.grace_period(),
        ));
        let sweeper_task = tokio::spawn(sweep(
            sender.clone(),
            sending.sweep_interval(),
            stop_work.clone(),
        ));

        let (health, health_service) = GrpcHealth::new([SERVICE_NAME]).await;
        let mut grpc_task = tokio::spawn(
            Server::builder()
                .layer(as2_common::telemetry::GrpcTraceLayer)
                .add_service(health_service)
                .add_service(OutboundServiceServer::new(OutboundApi::new(sender.clone())))
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
            topic = config.kafka.outbound_topic,
            group = config.kafka.consumer_group,
            receipts = config.kafka.receipts_topic,
            "sender ready"
        );

        let grpc_failed_early = tokio::select! {
            () = shutdown => None,
            finished = &mut grpc_task => Some(finished),
        };
        readiness.set_not_ready();
        health.set_serving(false).await;
        if grpc_failed_early.is_none() {
            tracing::info!("sender draining");
            tokio::time::sleep(config.shutdown.delay()).await;
        }
        draining.cancel();
        stop_work.cancel();
        if let Err(error) = consumer_task.await {
            tracing::warn!(%error, "consumer task failed");
        }
        if let Err(error) = sweeper_task.await {
            tracing::warn!(%error, "sweeper task failed");
        }
        let outcome = match grpc_failed_early {
            Some(finished) => {
                tracing::error!("grpc server stopped unexpectedly");
                flatten(finished)
            }
            None => {
                match tokio::time::timeout(config.shutdown.grace_period(), &mut grpc_task).await {
                    Ok(finished) => flatten(finished),
                    Err(_elapsed) => {
                        grpc_task.abort();
                        Ok(())
                    }
                }
            }
        };
        let flushing = receipts.clone();
        if let Err(error) =
            tokio::task::spawn_blocking(move || flushing.flush(RECEIPT_FLUSH_TIMEOUT)).await
        {
            tracing::warn!(%error, "receipt flush task failed");
        }
        stop_admin.cancel();
        if let Err(error) = admin_task.await {
            tracing::warn!(%error, "admin server task failed");
        }
        tracing::info!("sender stopped");
        outcome
    }
}

async fn sweep(sender: Arc<OutboundSender>, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = sender.sweep().await {
            tracing::warn!(%error, "sweep failed");
        }
    }
}

fn flatten(
    finished: Result<Result<(), as2_rpc::tonic::transport::Error>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    finished
        .context("grpc server task failed")?
        .context("grpc server failed")
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
