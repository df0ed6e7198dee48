//! Stopping a service: the termination signal and the readiness flag.
//!
//! A service's `run` takes any future as its shutdown trigger; the binaries pass
//! [`termination_signal`], tests pass a token or a channel. When the trigger
//! fires, services drain in this order: clear [`Readiness`] (so `/readyz` and
//! gRPC health report not-serving), wait the configured delay, stop accepting
//! and let in-flight requests finish within the grace period, then close the
//! admin server and flush telemetry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

/// Completes when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// Should a signal handler fail to install, the failure is logged and only the
/// other signal is awaited; if neither can be installed the future never
/// completes rather than stopping the service at once.
pub async fn termination_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for sigint");
            std::future::pending::<()>().await;
        }
    };

    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!(signal = "sigint", "shutdown requested"),
        () = terminate => tracing::info!(signal = "sigterm", "shutdown requested"),
    }
}

/// A token that is cancelled when the process receives SIGTERM or SIGINT.
///
/// Must be called inside a tokio runtime: it spawns the task that waits for
/// the signal.
pub fn cancel_on_termination_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        termination_signal().await;
        trigger.cancel();
    });
    token
}

/// Whether the service wants to receive traffic.
///
/// Starts not ready. A service sets it ready once its dependencies are
/// connected and its listeners are up, and clears it first thing when it
/// shuts down. Cheap to clone; all clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
}

impl Readiness {
    /// A new flag, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Reports not ready.
    pub fn set_not_ready(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// The current state.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_shared_between_clones() {
        let readiness = Readiness::new();
        let clone = readiness.clone();
        assert!(!clone.is_ready());
        readiness.set_ready();
        assert!(clone.is_ready());
        clone.set_not_ready();
        assert!(!readiness.is_ready());
    }
}
