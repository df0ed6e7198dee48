//! Test-only fault points, compiled in with the `fault-injection` feature (the fault
//! suite in tests/system enables it); without the feature every point is an empty inline
//! function.

/// The moment between the broker's acknowledgement of a document and the storing of its
/// receipt: with `AS2_FAULT_CRASH_AFTER_PUBLISH=N` set, the process aborts (as a SIGKILL
/// would end it) right after its Nth acknowledged publish.
#[cfg(feature = "fault-injection")]
pub fn after_publish() {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    static CRASH_AT: OnceLock<Option<u64>> = OnceLock::new();
    static PUBLISHED: AtomicU64 = AtomicU64::new(0);
    let crash_at = CRASH_AT.get_or_init(|| {
        std::env::var("AS2_FAULT_CRASH_AFTER_PUBLISH")
            .ok()
            .and_then(|value| value.trim().parse().ok())
    });
    if let Some(crash_at) = *crash_at
        && PUBLISHED.fetch_add(1, Ordering::SeqCst) + 1 == crash_at
    {
        tracing::error!(crash_at, "fault injection: aborting after this publish");
        std::process::abort();
    }
}

/// See the `fault-injection` build of this function.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_publish() {}
