//! A service of the gateway running in the test's process.

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A service's `serve(shutdown)` future running on the test's runtime, stopped by
/// [`RunningService::stop`] (or aborted when dropped).
///
/// Every service library has `XServer::bind(config)` then `serve(shutdown)`; a test binds
/// (to learn the ports) and hands the serving to this:
///
/// ```text
/// let server = RoutingServer::bind(config).await?;
/// let url = format!("http://{}", server.grpc_addr()?);
/// let routing = RunningService::spawn(|shutdown| server.serve(shutdown));
/// ```
pub struct RunningService<E: Send + 'static> {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> RunningService<E> {
    /// Spawns `serve` with a shutdown future that completes on [`RunningService::stop`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(ShutdownSignal) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(ShutdownSignal(stopped)));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the service to shut down and waits until it has; returns how `serve` ended.
    ///
    /// # Panics
    ///
    /// When the service's task panicked.
    pub async fn stop(mut self) -> Result<(), E> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("the service task does not panic"),
            None => Ok(()),
        }
    }
}

impl<E: Send + 'static> Drop for RunningService<E> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The shutdown future handed to a service's `serve`: completes when the test stops the
/// service (or drops it).
pub struct ShutdownSignal(oneshot::Receiver<()>);

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::pin::Pin::new(&mut self.0).poll(context).map(|_| ())
    }
}
