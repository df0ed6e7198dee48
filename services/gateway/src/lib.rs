//! The whole AS2 gateway in one process: the quick start.
//!
//! [`run`] starts the routing service, the MDN service and the edge through their own
//! library entry points ([`as2_routing::RoutingServer`], [`as2_mdn::MdnServer`],
//! [`as2_edge::EdgeServer`]): the same code the separate binaries run, talking to each
//! other over gRPC on loopback. What differs are the defaults:
//!
//! - state is kept in the process (`memory://`) unless a Redis URL is configured;
//! - without Kafka bootstrap servers an embedded cluster is started
//!   ([`embedded::EmbeddedKafka`], librdkafka's mock cluster) and its address printed;
//! - a demo identity and partnership are created ([`demo`]), so a message can be sent
//!   right away with `as2ctl send`.
//!
//! It is for trying the gateway out and for development: one replica, and with the
//! defaults everything is lost on exit. Production runs the services separately
//! (see `docs/deployment.md`).

#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod embedded;

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use as2_common::config::{RedisConfig, ShutdownConfig};
use as2_common::grpc::{ChannelSettings, GrpcSecurity};
use as2_common::runtime::ServiceHandle;
use as2_edge::{EdgeConfig, EdgeServer};
use as2_mdn::{MdnConfig, MdnServer};
use as2_routing::{RoutingConfig, RoutingServer};
use as2_rpc::routing::v1::CreatePartnershipRequest;
use as2_rpc::routing::v1::routing_service_client::RoutingServiceClient;
use as2_rpc::tonic::Code;
use clap::Parser as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub use config::GatewayConfig;
use demo::{DemoIdentities, GrpcCredentials};
use embedded::EmbeddedKafka;

/// How long start-up waits for the edge to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each service gets to finish open requests when the gateway stops.
const SHUTDOWN_GRACE_SECS: u64 = 5;

/// What the running gateway offers, as printed at start-up.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// The AS2 URL partners send to.
    pub as2_url: String,
    /// The routing service's gRPC URL.
    pub routing_url: String,
    /// The MDN service's gRPC URL.
    pub mdn_url: String,
    /// The Kafka bootstrap servers documents are published to.
    pub kafka_bootstrap_servers: String,
    /// Whether that Kafka is the embedded cluster.
    pub kafka_embedded: bool,
    /// `memory` or `redis`.
    pub state: &'static str,
}

/// Runs edge, routing and MDN service until `shutdown` completes, then stops them edge
/// first. Prints the start-up banner on standard output once the edge is ready.
#[allow(
    clippy::large_futures,
    reason = "awaited once, directly by main; boxing would only hide the size"
)]
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let identities = DemoIdentities::ensure(&config.data_dir)?;
    let credentials = GrpcCredentials::ensure(&config.data_dir)?;

    // The embedded cluster must outlive every client, so it is dropped last.
    let embedded_kafka = match &config.kafka_bootstrap_servers {
        Some(_) => None,
        None => Some(EmbeddedKafka::start(&[&config.demo_topic])?),
    };
    let bootstrap = match &embedded_kafka {
        Some(cluster) => cluster.bootstrap_servers(),
        None => config.kafka_bootstrap_servers.clone().unwrap_or_default(),
    };

    let redis = RedisConfig::new(&config.redis_url, &config.redis_key_prefix);
    let state = if as2_common::redis::is_in_memory(&redis) {
        "memory"
    } else {
        "redis"
    };
    // Started in dependency order, stopped in reverse (edge first).
    let mut services = Vec::with_capacity(3);
    let started_services = start_services(
        &config,
        &identities,
        &credentials,
        redis,
        &bootstrap,
        &mut services,
    )
    .await;
    let (as2_addr, routing_url, mdn_url) = match started_services {
        Ok(addresses) => addresses,
        Err(error) => {
            services.reverse();
            if let Err(stop_error) = stop_all(&mut services).await {
                tracing::warn!(
                    error = format!("{stop_error:#}"),
                    "a service also failed while stopping after the failed start"
                );
            }
            return Err(error);
        }
    };
    services.reverse();
    let endpoints = Endpoints {
        as2_url: format!("http://{as2_addr}/as2"),
        routing_url,
        mdn_url,
        kafka_bootstrap_servers: bootstrap,
        kafka_embedded: embedded_kafka.is_some(),
        state,
    };
    let startup = started.elapsed();
    tracing::info!(startup_ms = startup.as_millis() as u64, "gateway ready");
    print_banner(&banner(&config, &identities, &endpoints, startup));

    // Runs until asked to stop or until a service stops by itself.
    let failed = tokio::select! {
        () = shutdown => None,
        finished = first_to_finish(&mut services) => Some(finished),
    };
    if let Some((name, _)) = &failed {
        tracing::error!(
            service = name,
            "a service stopped by itself; stopping the gateway"
        );
    }
    let outcome = stop_all(&mut services).await;
    drop(embedded_kafka);
    match failed {
        // The failure itself says more than "stopped".
        Some((_, Err(error))) => Err(error),
        Some((name, Ok(()))) => Err(anyhow::anyhow!("the {name} service stopped unexpectedly")),
        None => outcome,
    }
}

/// Binds and spawns routing, MDN service and edge (pushing each onto `services` as it
/// starts), creates the demo partnership, and waits until the edge is ready. Returns
/// the AS2 address and the routing and MDN gRPC URLs.
async fn start_services(
    config: &GatewayConfig,
    identities: &DemoIdentities,
    credentials: &GrpcCredentials,
    redis: RedisConfig,
    bootstrap: &str,
    services: &mut Vec<ServiceHandle>,
) -> anyhow::Result<(SocketAddr, String, String)> {
    let mut routing_config = RoutingConfig::local(&config.redis_url, &config.redis_key_prefix);
    routing_config.grpc.grpc_listen = config.routing_listen;
    routing_config.grpc.tls = demo::tls_config(&credentials.routing);
    routing_config.admin.http_listen = config.routing_admin_listen;
    routing_config.shutdown = shutdown_config();
    let routing = RoutingServer::bind(routing_config)
        .await
        .context("the routing service did not start")?;
    let routing_url = grpc_url(routing.grpc_addr()?);
    services.push(ServiceHandle::spawn("routing", |stop| routing.serve(stop)));

    let mut mdn_config = MdnConfig::local(&config.redis_url, &config.redis_key_prefix);
    mdn_config.grpc.grpc_listen = config.mdn_listen;
    mdn_config.grpc.tls = demo::tls_config(&credentials.mdn);
    mdn_config.admin.http_listen = config.mdn_admin_listen;
    mdn_config.shutdown = shutdown_config();
    let mdn = MdnServer::bind(mdn_config)
        .await
        .context("the MDN service did not start")?;
    let mdn_url = grpc_url(mdn.grpc_addr()?);
    services.push(ServiceHandle::spawn("mdn", |stop| mdn.serve(stop)));

    if !config.no_demo {
        create_demo_partnership(&routing_url, credentials, identities, &config.demo_topic).await?;
    }

    let mut edge_config =
        EdgeConfig::try_parse_from(["as2-edge"]).context("invalid edge settings")?;
    edge_config.as2_listen = config.as2_listen;
    edge_config.admin.http_listen = config.edge_admin_listen;
    edge_config.routing_url = routing_url.clone();
    edge_config.mdn_url = Some(mdn_url.clone());
    edge_config.sender_url = None;
    edge_config.grpc_tls = demo::tls_config(&credentials.edge);
    edge_config.redis = redis;
    edge_config.kafka = as2_common::kafka::KafkaConfig::new(bootstrap);
    edge_config.keys.keys_dir = identities.keys_dir.clone();
    edge_config.object_store = config.object_store.clone();
    if edge_config.object_store.object_store_url.is_none() {
        edge_config.object_store.object_store_url = Some(local_objects_url(&config.data_dir)?);
    }
    edge_config.keys.default_decryption_key_id = Some(demo::GATEWAY_KEY_ID.to_owned());
    edge_config.keys.default_signing_key_id = Some(demo::GATEWAY_KEY_ID.to_owned());
    edge_config.shutdown = shutdown_config();
    let edge = EdgeServer::bind(edge_config)
        .await
        .context("the edge did not start")?;
    let as2_addr = edge.as2_addr()?;
    let edge_admin = edge.admin_addr()?;
    services.push(ServiceHandle::spawn("edge", |stop| edge.serve(stop)));
    wait_until_ready(edge_admin).await?;
    Ok((as2_addr, routing_url, mdn_url))
}

/// The quick start's object store: the directory `objects` in the data directory.
fn local_objects_url(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let objects = data_dir.join("objects");
    std::fs::create_dir_all(&objects)
        .with_context(|| format!("cannot create {}", objects.display()))?;
    let objects = objects
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", objects.display()))?;
    Ok(format!("file://{}", objects.display()))
}

fn shutdown_config() -> ShutdownConfig {
    ShutdownConfig {
        shutdown_delay_secs: 0,
        shutdown_grace_secs: SHUTDOWN_GRACE_SECS,
    }
}

/// The URL the services and as2ctl reach a quick-start gRPC server at: loopback when it
/// listens on every address (the certificates name the loopback addresses).
fn grpc_url(address: SocketAddr) -> String {
    let address = if address.ip().is_unspecified() {
        SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, address.port()))
    } else {
        address
    };
    format!("https://{address}")
}

/// Waits for the first service that stops by itself and returns its name and outcome.
async fn first_to_finish(services: &mut [ServiceHandle]) -> (&'static str, anyhow::Result<()>) {
    if services.is_empty() {
        return std::future::pending().await;
    }
    let running = services.iter_mut().map(|service| {
        Box::pin(async move {
            let outcome = service.finished().await;
            (service.name(), outcome)
        })
    });
    futures::future::select_all(running).await.0
}

/// Stops the services in order (edge first, so no message arrives while the services
/// behind it go away) and returns the first failure.
async fn stop_all(services: &mut Vec<ServiceHandle>) -> anyhow::Result<()> {
    let mut outcome = Ok(());
    for service in services.drain(..) {
        if let Err(error) = service.stop().await
            && outcome.is_ok()
        {
            outcome = Err(error);
        }
    }
    outcome
}

/// Polls the edge's `/readyz` until it answers 200.
async fn wait_until_ready(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if readyz(admin).await.unwrap_or(false) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the edge did not become ready within {} s",
            READY_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(admin: SocketAddr) -> std::io::Result<bool> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

/// Creates the demo partnership as the quick start's operator.
async fn create_demo_partnership(
    routing_url: &str,
    credentials: &GrpcCredentials,
    identities: &DemoIdentities,
    topic: &str,
) -> anyhow::Result<()> {
    let partnership = identities.partnership(topic)?;
    let operator = GrpcSecurity::from_config(&demo::tls_config(&credentials.operator))?;
    let channel = as2_common::grpc::connect(
        "routing",
        routing_url,
        ChannelSettings::default(),
        &operator,
    )
    .await?;
    let mut client = RoutingServiceClient::new(channel);
    match client
        .create_partnership(CreatePartnershipRequest {
            partnership: Some(partnership),
        })
        .await
    {
        Ok(_) => {
            tracing::info!(id = demo::PARTNERSHIP_ID, "created the demo partnership");
            Ok(())
        }
        // With a real Redis it is there from an earlier start; leave it as it is.
        Err(status) if status.code() == Code::AlreadyExists => {
            tracing::info!(
                id = demo::PARTNERSHIP_ID,
                "the demo partnership exists already"
            );
            Ok(())
        }
        Err(status) => Err(anyhow::anyhow!(
            "cannot create the demo partnership: {}",
            status.message()
        )),
    }
}

/// The start-up text: where everything is and what to try next.
pub fn banner(
    config: &GatewayConfig,
    identities: &DemoIdentities,
    endpoints: &Endpoints,
    startup: Duration,
) -> String {
    let data = config.data_dir.display();
    let kafka_note = if endpoints.kafka_embedded {
        " (embedded, in memory)"
    } else {
        ""
    };
    let state_note = match endpoints.state {
        "memory" => "in this process (lost on exit)",
        _ => "redis",
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nAS2 gateway ready in {:.1} s: edge, routing and MDN service in one process.\n",
        startup.as_secs_f64()
    );
    let rows = [
        ("AS2 URL", endpoints.as2_url.clone()),
        ("Our AS2 ID", demo::GATEWAY_AS2_ID.to_owned()),
        (
            "Our certificate",
            identities.gateway.certificate.display().to_string(),
        ),
        (
            "Kafka bootstrap",
            format!("{}{kafka_note}", endpoints.kafka_bootstrap_servers),
        ),
        (
            "Large documents",
            config
                .object_store
                .object_store_url
                .clone()
                .unwrap_or_else(|| format!("{data}/objects/")),
        ),
        ("Routing gRPC", endpoints.routing_url.clone()),
        ("MDN gRPC", endpoints.mdn_url.clone()),
        (
            "gRPC credentials",
            format!(
                "{} (mutual TLS; as2ctl uses operator.crt)",
                as2_common::grpc::local_ca::quickstart_directory(&config.data_dir).display()
            ),
        ),
        ("State", state_note.to_owned()),
    ];
    for (label, value) in rows {
        let _ = writeln!(text, "  {:<17}{value}", format!("{label}:"));
    }
    if !config.no_demo {
        let _ = writeln!(
            text,
            "\nDemo partnership {:?}: AS2 ID {:?} sends to {:?}; documents go to topic {:?}.\n\
             The demo partner's key and certificate are in {data}/partner/.",
            demo::PARTNERSHIP_ID,
            demo::PARTNER_AS2_ID,
            demo::GATEWAY_AS2_ID,
            config.demo_topic,
        );
        let partner = &identities.partner;
        // as2ctl finds the operator's credential by itself under the default data
        // directory; elsewhere the banner says where.
        let credentials_flag = if config.data_dir == std::path::Path::new(config::DEFAULT_DATA_DIR)
        {
            String::new()
        } else {
            format!(
                "--credentials-dir {} ",
                as2_common::grpc::local_ca::quickstart_directory(&config.data_dir).display()
            )
        };
        let _ = writeln!(
            text,
            "\nTry it from another terminal:\n\n  \
             echo \"UNB+UNOA:2+PARTNER+GATEWAY+261122:1200+1'\" > order.edi\n  \
             cargo run -p as2ctl -- send order.edi --url {url} \\\n      \
             --from {from} --to {to} \\\n      \
             --sign-key {key} --sign-cert {cert} \\\n      \
             --encrypt-cert {gateway_cert} --mdn sync\n  \
             cargo run -p as2ctl -- consume --kafka-bootstrap-servers {bootstrap} --topic {topic} --count 1\n  \
             cargo run -p as2ctl -- {credentials}--routing-url {routing} partnership list\n  \
             cargo run -p as2ctl -- {credentials}--mdn-url {mdn} mdn list",
            url = endpoints.as2_url,
            from = demo::PARTNER_AS2_ID,
            to = demo::GATEWAY_AS2_ID,
            key = partner.key.display(),
            cert = partner.certificate.display(),
            gateway_cert = identities.gateway.certificate.display(),
            bootstrap = endpoints.kafka_bootstrap_servers,
            topic = config.demo_topic,
            routing = endpoints.routing_url,
            mdn = endpoints.mdn_url,
            credentials = credentials_flag,
        );
    }
    let _ = writeln!(text, "\nStop with Ctrl-C.");
    text
}

#[allow(
    clippy::print_stdout,
    reason = "the banner is the quick start's user interface"
)]
fn print_banner(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}
