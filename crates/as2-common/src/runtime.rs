//! How every service starts, serves and stops.
//!
//! A service binds its listeners first ([`bind`], so callers learn the real ports when
//! they asked for port 0), then builds a [`Runtime`]: it starts the admin server
//! (`/healthz`, `/readyz`, `/metrics`), reports gRPC health, and collects the service's
//! tasks in three kinds:
//!
//! - **front ends** take new work: the gRPC server, the AS2 listener, a Kafka consumer, a
//!   job reader. They stop taking work when the token from [`Runtime::accepting`] is
//!   cancelled and finish what they hold within the grace period.
//! - **background** tasks support the front ends (a change feed, a sweeper); each has a
//!   token of its own, cancelled once the front ends are done.
//! - **flushes** run last, on a blocking thread: a Kafka producer's queue.
//!
//! [`Runtime::serve`] then runs until the shutdown trigger fires or a front end stops by
//! itself, and drains in one fixed order ([`DrainStep`]): report not ready (readiness and
//! gRPC health), wait the shutdown delay (so load balancers stop sending), stop accepting,
//! let in-flight work finish within the grace period (plus [`CLEANUP_MARGIN`] for the front
//! ends to commit what they finished; what is left then is cut off, named in a warning),
//! stop the background tasks, flush, stop the admin server, flush
//! telemetry. This is the order InfluxDB 3 and Quickwit use as well: the front end is
//! finished before the back end it writes to goes away.
//!
//! [`ServiceHandle`] runs a service on a task and stops it; the single-process gateway
//! and the tests start every service through it, and [`ServiceHandle::stop`] returns the
//! service's own error (or its panic) instead of dropping it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, serve_admin};
use crate::config::{AdminServerConfig, GrpcServerConfig, ShutdownConfig};
use crate::grpc::{GrpcRouter, GrpcSecurity};
use crate::health::{Health, HealthServer};
use crate::shutdown::Readiness;

/// Binds a TCP listener for `purpose` (`grpc`, `http`, `as2`): the error names both.
pub async fn bind(address: SocketAddr, purpose: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for {purpose} on {address}"))
}

/// The two listeners of a gRPC service, bound before it serves: its API and its admin
/// endpoints.
#[derive(Debug)]
pub struct GrpcListeners {
    /// The gRPC API.
    pub grpc: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin: TcpListener,
    /// How the gRPC API and the service's own calls are secured (loaded from
    /// `grpc.tls` before anything is bound, so a missing credential stops the start).
    pub security: GrpcSecurity,
}

impl GrpcListeners {
    /// Loads the gRPC credential and binds both listeners (port 0 allowed).
    pub async fn bind(grpc: &GrpcServerConfig, admin: &AdminServerConfig) -> anyhow::Result<Self> {
        let security = GrpcSecurity::from_config(&grpc.tls)?;
        if security.is_plaintext() {
            tracing::warn!(
                "gRPC runs in plain text without authentication (AS2_GRPC_INSECURE_PLAINTEXT): \
                 for development only"
            );
        }
        Ok(Self {
            grpc: bind(grpc.grpc_listen, "grpc").await?,
            admin: bind(admin.http_listen, "http").await?,
            security,
        })
    }

    /// The address the gRPC server listens on.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The address the admin HTTP server listens on.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// One step of the drain, in the order [`Runtime::serve`] takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainStep {
    /// `/readyz` answers 503 and gRPC health reports not serving.
    NotReady,
    /// The front ends were told to stop taking new work.
    StopAccepting,
    /// Every front end finished (or was cut off at the end of the grace period).
    InFlightDone,
    /// The background tasks were stopped and have ended.
    BackgroundStopped,
    /// The flushes ran (Kafka producers).
    Flushed,
    /// The admin server stopped.
    AdminStopped,
    /// Pending spans were handed to the exporter.
    TelemetryFlushed,
}

/// What a front end gets beyond the grace period to clean up after its in-flight work
/// (commit consumer offsets, close connections) before it is cut off.
pub const CLEANUP_MARGIN: Duration = Duration::from_secs(2);

type StepObserver = Box<dyn Fn(DrainStep) + Send + Sync>;
type Flush = (&'static str, Box<dyn FnOnce() + Send>);

/// A task of the service with the name used in logs and errors.
struct NamedTask {
    name: &'static str,
    task: JoinHandle<anyhow::Result<()>>,
}

/// A service's tasks and the order in which they stop; see the module docs.
pub struct Runtime {
    service: &'static str,
    shutdown: ShutdownConfig,
    readiness: Readiness,
    health: Option<crate::health::GrpcHealth>,
    accepting: CancellationToken,
    frontends: Vec<NamedTask>,
    background: Vec<(NamedTask, CancellationToken)>,
    flushes: Vec<Flush>,
    admin: (JoinHandle<()>, CancellationToken),
    observer: Option<StepObserver>,
    /// Cancel accepting, the background tasks and the admin server when the runtime is
    /// dropped without [`serve`](Self::serve) (a start-up step failed after `start`), so
    /// that nothing it spawned outlives it.
    cancel_on_drop: Vec<tokio_util::sync::DropGuard>,
}

impl Runtime {
    /// Starts the admin server for `service` on `admin_listener`, serving `registry` on
    /// `/metrics`; the service reports not ready until [`serve`](Self::serve) runs.
    pub fn start(
        service: &'static str,
        admin_listener: TcpListener,
        registry: Registry,
        shutdown: &ShutdownConfig,
    ) -> Self {
        let readiness = Readiness::new();
        let stop_admin = CancellationToken::new();
        let admin = tokio::spawn(serve_admin(
            admin_listener,
            AdminState::new(readiness.clone(), Arc::new(registry)),
            stop_admin.clone().cancelled_owned(),
        ));
        let accepting = CancellationToken::new();
        let cancel_on_drop = vec![
            accepting.clone().drop_guard(),
            stop_admin.clone().drop_guard(),
        ];
        Self {
            service,
            shutdown: shutdown.clone(),
            readiness,
            health: None,
            accepting,
            frontends: Vec::new(),
            background: Vec::new(),
            flushes: Vec::new(),
            admin: (admin, stop_admin),
            observer: None,
            cancel_on_drop,
        }
    }

    /// The gRPC health service for `service_names` (plus the overall status), not
    /// serving until [`serve`](Self::serve) runs and again from the first drain step.
    pub async fn grpc_health(
        &mut self,
        service_names: &[&str],
    ) -> HealthServer<impl Health + use<>> {
        let (health, server) = crate::health::GrpcHealth::new(service_names).await;
        self.health = Some(health);
        server
    }

    /// The readiness flag `/readyz` reports.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Cancelled when the front ends are to stop taking new work.
    pub fn accepting(&self) -> CancellationToken {
        self.accepting.clone()
    }

    /// Runs a front end: it must stop taking work once [`accepting`](Self::accepting) is
    /// cancelled and return when what it holds is done. Stopping before that is a
    /// failure of the service.
    pub fn spawn_frontend(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.frontends.push(NamedTask {
            name,
            task: tokio::spawn(task),
        });
    }

    /// Serves `router` on `listener` as the front end `grpc`, until accepting stops,
    /// with the connections secured by `security` ([`crate::grpc::tls::incoming`]).
    pub fn serve_grpc(
        &mut self,
        router: GrpcRouter,
        listener: TcpListener,
        security: &GrpcSecurity,
    ) {
        let stop = self.accepting.clone().cancelled_owned();
        let incoming = crate::grpc::tls::incoming(listener, security.clone());
        self.spawn_frontend("grpc server", async move {
            router
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .context("grpc server failed")
        });
    }

    /// Runs [`LayoutMigration::watch`] in the background: moves keys that replicas of an
    /// older version write under the names before the hash tags (a rolling upgrade).
    ///
    /// [`LayoutMigration::watch`]: crate::redis::layout::LayoutMigration::watch
    pub fn watch_key_layout(
        &mut self,
        migration: crate::redis::layout::LayoutMigration,
        redis: crate::redis::Redis,
    ) {
        self.spawn_background("redis key layout watch", |stop| async move {
            migration.watch(redis, stop).await;
            Ok(())
        });
    }

    /// Runs a background task, given the token that stops it once the front ends are
    /// done.
    pub fn spawn_background<F>(
        &mut self,
        name: &'static str,
        task: impl FnOnce(CancellationToken) -> F,
    ) where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(task(stop.clone()));
        self.cancel_on_drop.push(stop.clone().drop_guard());
        self.background.push((NamedTask { name, task }, stop));
    }

    /// Adds a blocking flush (a Kafka producer's queue) run after the background tasks.
    pub fn on_drain_flush(&mut self, name: &'static str, flush: impl FnOnce() + Send + 'static) {
        self.flushes.push((name, Box::new(flush)));
    }

    /// Calls `observer` at each drain step (tests check the order with it).
    pub fn observe_drain(&mut self, observer: impl Fn(DrainStep) + Send + Sync + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// Reports ready, runs until `shutdown` completes or a front end stops by itself,
    /// then drains in the order of [`DrainStep`]. Returns the first failure: a front end
    /// that stopped early, a task's error or panic.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            service,
            shutdown: settings,
            readiness,
            health,
            accepting,
            mut frontends,
            background,
            flushes,
            admin: (admin_task, stop_admin),
            observer,
            cancel_on_drop,
        } = self;
        let step = |step: DrainStep| {
            tracing::debug!(service, ?step, "drain step");
            if let Some(observer) = &observer {
                observer(step);
            }
        };
        let mut failures = Vec::new();

        if let Some(health) = &health {
            health.set_serving(true).await;
        }
        readiness.set_ready();

        let stopped_early = tokio::select! {
            () = shutdown => None,
            (finished, index) = first_to_finish(&mut frontends) => Some((index, finished)),
        };

        readiness.set_not_ready();
        if let Some(health) = &health {
            health.set_serving(false).await;
        }
        step(DrainStep::NotReady);
        match stopped_early {
            Some((index, finished)) => {
                let NamedTask { name, .. } = frontends.remove(index);
                let error = match outcome(name, finished) {
                    Ok(()) => anyhow::anyhow!("the {name} stopped unexpectedly"),
                    Err(error) => error.context(format!("the {name} stopped unexpectedly")),
                };
                tracing::error!(service, error = format!("{error:#}"), "stopping");
                failures.push(error);
            }
            None => {
                tracing::info!(service, "draining");
                tokio::time::sleep(settings.delay()).await;
            }
        }

        accepting.cancel();
        step(DrainStep::StopAccepting);
        let deadline = tokio::time::Instant::now() + settings.grace_period() + CLEANUP_MARGIN;
        finish_before(frontends, deadline, settings.grace_period(), &mut failures).await;
        step(DrainStep::InFlightDone);

        let mut tasks = Vec::with_capacity(background.len());
        for (task, stop) in background {
            stop.cancel();
            tasks.push(task);
        }
        let deadline = tokio::time::Instant::now() + settings.grace_period();
        finish_before(tasks, deadline, settings.grace_period(), &mut failures).await;
        step(DrainStep::BackgroundStopped);

        for (name, flush) in flushes {
            if let Err(error) = tokio::task::spawn_blocking(flush).await {
                failures
                    .push(anyhow::Error::new(error).context(format!("the {name} flush panicked")));
            }
        }
        step(DrainStep::Flushed);

        stop_admin.cancel();
        if let Err(error) = admin_task.await {
            failures.push(anyhow::Error::new(error).context("the admin server panicked"));
        }
        step(DrainStep::AdminStopped);

        if let Err(error) = tokio::task::spawn_blocking(crate::telemetry::flush).await {
            failures.push(anyhow::Error::new(error).context("the telemetry flush panicked"));
        }
        step(DrainStep::TelemetryFlushed);

        drop(cancel_on_drop);
        for error in failures.iter().skip(1) {
            tracing::error!(
                service,
                error = format!("{error:#}"),
                "also failed while stopping"
            );
        }
        match failures.into_iter().next() {
            Some(error) => Err(error),
            None => {
                tracing::info!(service, "stopped");
                Ok(())
            }
        }
    }
}

/// Waits for the first task of `tasks` to finish; never completes when there are none.
async fn first_to_finish(
    tasks: &mut [NamedTask],
) -> (Result<anyhow::Result<()>, JoinError>, usize) {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let (finished, index, _) =
        futures::future::select_all(tasks.iter_mut().map(|named| &mut named.task)).await;
    (finished, index)
}

/// Awaits every task until `deadline`; tasks still running then are aborted and named.
async fn finish_before(
    tasks: Vec<NamedTask>,
    deadline: tokio::time::Instant,
    grace: Duration,
    failures: &mut Vec<anyhow::Error>,
) {
    for NamedTask { name, mut task } in tasks {
        match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(finished) => {
                if let Err(error) = outcome(name, finished) {
                    failures.push(error);
                }
            }
            Err(_elapsed) => {
                tracing::warn!(
                    task = name,
                    grace_secs = grace.as_secs(),
                    "still busy at the end of the grace period, cut off"
                );
                task.abort();
            }
        }
    }
}

fn outcome(name: &str, finished: Result<anyhow::Result<()>, JoinError>) -> anyhow::Result<()> {
    finished
        .with_context(|| format!("the {name} panicked"))
        .and_then(|served| served.with_context(|| format!("the {name} failed")))
}

/// A service running on a task of its own, with the trigger that stops it.
///
/// Dropping the handle stops the service too, without waiting; call
/// [`stop`](Self::stop) to wait for the drain and learn how it ended.
pub struct ServiceHandle {
    name: &'static str,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServiceHandle {
    /// Spawns `serve`, given the future that completes when the service is asked to
    /// stop. A failure is logged with the service's name when it happens.
    pub fn spawn<F>(
        name: &'static str,
        serve: impl FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let serving = serve(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            let outcome = serving.await;
            if let Err(error) = &outcome {
                tracing::error!(
                    service = name,
                    error = format!("{error:#}"),
                    "service failed"
                );
            }
            outcome
        });
        Self {
            name,
            stop,
            task: Some(task),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Asks the service to stop without waiting.
    pub fn request_stop(&self) {
        self.stop.cancel();
    }

    /// Whether the service has stopped (by itself or when asked).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the service stops by itself (or another clone of its trigger stops
    /// it) and returns how it ended. Completes at once when it was awaited before.
    pub async fn finished(&mut self) -> anyhow::Result<()> {
        match self.task.as_mut() {
            Some(task) => {
                let finished = task.await;
                self.task = None;
                service_outcome(self.name, finished)
            }
            None => Ok(()),
        }
    }

    /// Stops the service, waits for its drain and returns its outcome: the error
    /// `serve` returned, or its panic, with the service's name.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.finished().await
    }
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn service_outcome(
    name: &str,
    finished: Result<anyhow::Result<()>, JoinError>,
) -> anyhow::Result<()> {
    finished
        .with_context(|| format!("the {name} service panicked"))
        .and_then(|served| served.with_context(|| format!("the {name} service failed")))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What the test tasks and the observer saw, in order.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl Log {
        fn push(&self, entry: impl Into<String>) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(entry.into());
        }

        fn entries(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    async fn runtime(grace_secs: u64) -> Runtime {
        let admin = bind("127.0.0.1:0".parse().unwrap(), "http").await.unwrap();
        Runtime::start(
            "test",
            admin,
            Registry::default(),
            &ShutdownConfig {
                shutdown_delay_secs: 0,
                shutdown_grace_secs: grace_secs,
            },
        )
    }

    #[tokio::test]
    async fn drains_front_ends_before_background_tasks_before_flushes() {
        let log = Log::default();
        let mut runtime = runtime(5).await;
        let observer_log = log.clone();
        runtime.observe_drain(move |step| observer_log.push(format!("{step:?}")));

        // A front end with a request in flight: it notices the stop, then takes a while
        // to finish, and sees that readiness was cleared before it was told to stop.
        let accepting = runtime.accepting();
        let readiness = runtime.readiness();
        let frontend_log = log.clone();
        runtime.spawn_frontend("listener", async move {
            accepting.cancelled().await;
            frontend_log.push(format!(
                "frontend stop seen, ready={}",
                readiness.is_ready()
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
            frontend_log.push("frontend done");
            Ok(())
        });
        let background_log = log.clone();
        runtime.spawn_background("feed", move |stop| async move {
            stop.cancelled().await;
            background_log.push("background stopped");
            Ok(())
        });
        let flush_log = log.clone();
        runtime.on_drain_flush("producer", move || flush_log.push("flushed"));

        let trigger = CancellationToken::new();
        let serving = tokio::spawn(runtime.serve(trigger.clone().cancelled_owned()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.cancel();
        serving.await.unwrap().unwrap();

        assert_eq!(
            log.entries(),
            [
                "NotReady",
                "StopAccepting",
                "frontend stop seen, ready=false",
                "frontend done",
                "InFlightDone",
                "background stopped",
                "BackgroundStopped",
                "flushed",
                "Flushed",
                "AdminStopped",
                "TelemetryFlushed",
            ]
        );
    }

    #[tokio::test]
    async fn a_front_end_that_stops_by_itself_fails_the_service_and_still_drains() {
        let log = Log::default();
        let mut runtime = runtime(5).await;
        runtime.spawn_frontend("grpc server", async { anyhow::bail!("address in use") });
        let flush_log = log.clone();
        runtime.on_drain_flush("producer", move || flush_log.push("flushed"));
        let error = runtime.serve(std::future::pending()).await.unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("grpc server stopped unexpectedly"), "{text}");
        assert!(text.contains("address in use"), "{text}");
        assert_eq!(log.entries(), ["flushed"]);
    }

    #[tokio::test]
    async fn work_that_outlives_the_grace_period_is_cut_off() {
        let mut runtime = runtime(1).await;
        runtime.spawn_frontend("listener", std::future::pending());
        let started = tokio::time::Instant::now();
        runtime.serve(std::future::ready(())).await.unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_name() {
        let mut runtime = runtime(5).await;
        runtime.spawn_background("sweeper", |stop| async move {
            stop.cancelled().await;
            panic!("sweeper bug");
        });
        let error = runtime.serve(std::future::ready(())).await.unwrap_err();
        assert!(
            format!("{error:#}").contains("the sweeper panicked"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_runtime_dropped_before_serving_stops_what_it_started() {
        let mut runtime = runtime(5).await;
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        runtime.spawn_background("feed", move |stop| async move {
            stop.cancelled().await;
            let _sent = stopped_tx.send(());
            Ok(())
        });
        let accepting = runtime.accepting();
        // A start-up step after `start` failed: the runtime is dropped, never served.
        drop(runtime);
        tokio::time::timeout(Duration::from_secs(5), stopped_rx)
            .await
            .expect("the background task was stopped")
            .unwrap();
        assert!(accepting.is_cancelled());
    }

    #[tokio::test]
    async fn a_handle_returns_the_error_serve_returned() {
        let handle = ServiceHandle::spawn("edge", |stop| async move {
            stop.await;
            anyhow::bail!("flush failed")
        });
        let error = handle.stop().await.unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "the edge service failed: flush failed"
        );

        let handle = ServiceHandle::spawn("routing", |stop| async move {
            stop.await;
            Ok(())
        });
        handle.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_handle_reports_a_service_that_stopped_by_itself() {
        let mut handle = ServiceHandle::spawn("mdn", |_stop| async { anyhow::bail!("redis gone") });
        let error = handle.finished().await.unwrap_err();
        assert!(format!("{error:#}").contains("redis gone"));
        assert!(handle.is_finished());
    }
}
