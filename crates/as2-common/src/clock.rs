//! The wall clock, as the services store it.

/// This machine's time in milliseconds since the Unix epoch (0 before the epoch,
/// `i64::MAX` past what fits).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
