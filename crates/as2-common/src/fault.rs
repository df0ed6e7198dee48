//! Test-only crash points for the fault suite (tests/system): a service compiled with its
//! `fault-injection` feature calls [`CrashPoint::pass`] at a moment worth crashing in;
//! without the feature nothing calls it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Aborts the process (as a SIGKILL would end it) the Nth time it is passed, N being the
/// value of an environment variable; never when the variable is unset.
pub struct CrashPoint {
    variable: &'static str,
    crash_at: OnceLock<Option<u64>>,
    passed: AtomicU64,
}

impl CrashPoint {
    /// A point armed by `variable`.
    pub const fn new(variable: &'static str) -> Self {
        Self {
            variable,
            crash_at: OnceLock::new(),
            passed: AtomicU64::new(0),
        }
    }

    /// Counts one pass; aborts on the Nth.
    pub fn pass(&self) {
        let crash_at = self.crash_at.get_or_init(|| {
            std::env::var(self.variable)
                .ok()
                .and_then(|value| value.trim().parse().ok())
        });
        if let Some(crash_at) = *crash_at
            && self.passed.fetch_add(1, Ordering::SeqCst) + 1 == crash_at
        {
            tracing::error!(
                variable = self.variable,
                crash_at,
                "fault injection: aborting here"
            );
            std::process::abort();
        }
    }
}
