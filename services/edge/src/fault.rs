//! Test-only fault points, compiled in with the `fault-injection` feature (the fault
//! suite in tests/system enables it); without the feature every point is an empty inline
//! function.

/// The moment between the broker's acknowledgement of a document and the storing of its
/// receipt: with `AS2_FAULT_CRASH_AFTER_PUBLISH=N` set, the process aborts (as a SIGKILL
/// would end it) right after its Nth acknowledged publish.
#[cfg(feature = "fault-injection")]
pub fn after_publish() {
    static POINT: as2_common::fault::CrashPoint =
        as2_common::fault::CrashPoint::new("AS2_FAULT_CRASH_AFTER_PUBLISH");
    POINT.pass();
}

/// See the `fault-injection` build of this function.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_publish() {}

/// The moment between completing a document's upload (the object is visible) and arming
/// its claim: with `AS2_FAULT_CRASH_AFTER_UPLOAD=N` set, the process aborts right after
/// its Nth completed upload, leaving an object that no record references.
#[cfg(feature = "fault-injection")]
pub fn after_upload() {
    static POINT: as2_common::fault::CrashPoint =
        as2_common::fault::CrashPoint::new("AS2_FAULT_CRASH_AFTER_UPLOAD");
    POINT.pass();
}

/// See the `fault-injection` build of this function.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn after_upload() {}
