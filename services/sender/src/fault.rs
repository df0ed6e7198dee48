//! Test-only fault points, compiled in with the `fault-injection` feature (the fault
//! suite in tests/system enables it); without the feature every point is an empty inline
//! function.

/// The moment between the broker's acknowledgement of a receipt and its mark in Redis:
/// with `AS2_FAULT_CRASH_AFTER_RECEIPT=N` set, the process aborts (as a SIGKILL would
/// end it) right after its Nth acknowledged receipt.
#[cfg(feature = "fault-injection")]
pub fn after_receipt() {
    static POINT: as2_common::fault::CrashPoint =
        as2_common::fault::CrashPoint::new("AS2_FAULT_CRASH_AFTER_RECEIPT");
    POINT.pass();
}

/// See the `fault-injection` build of this function.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_receipt() {}
