//! How long a partnership's messages are archived: the same rule for the messages the
//! edge receives and the ones the sender sends.

use as2_rpc::routing::v1::Partnership;

/// Days `partnership`'s messages are archived: its own retention, else `default_days`
/// (the service's `AS2_ARCHIVE_RETENTION_DAYS`); `None` when the partnership turned the
/// archive off or neither sets a retention.
pub fn retention_days(partnership: &Partnership, default_days: u32) -> Option<u32> {
    let settings = partnership.archive.as_ref();
    if settings.and_then(|archive| archive.enabled) == Some(false) {
        return None;
    }
    let days = settings
        .map(|archive| archive.retention_days)
        .filter(|days| *days > 0)
        .unwrap_or(default_days);
    (days > 0).then_some(days)
}

#[cfg(test)]
mod tests {
    use as2_rpc::routing::v1::ArchiveSettings;

    use super::*;

    #[test]
    fn own_retention_then_default_and_off() {
        let mut partnership = Partnership::default();
        assert_eq!(retention_days(&partnership, 365), Some(365));
        assert_eq!(retention_days(&partnership, 0), None);
        partnership.archive = Some(ArchiveSettings {
            enabled: None,
            retention_days: 30,
        });
        assert_eq!(retention_days(&partnership, 0), Some(30));
        partnership.archive = Some(ArchiveSettings {
            enabled: Some(false),
            retention_days: 30,
        });
        assert_eq!(retention_days(&partnership, 365), None);
    }
}
