//! Days until each partner certificate expires, for alerting before a partner's
//! signatures stop verifying.
//!
//! One gauge series per (partnership, certificate fingerprint), read from the
//! store at start-up, after every change event and every
//! [`REFRESH_INTERVAL`]; a series is removed when its certificate or its
//! partnership goes, so the label set stays as large as the registry. The
//! value is recomputed from the remembered expiry times on every tick, also
//! when Redis cannot be read.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::events::EventHub;
use crate::metrics::{CertificateLabels, RoutingMetrics};
use crate::store::{PartnershipStore, StoreError};

/// How often the store is read again without a change event.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// How often the gauges are recomputed from the remembered expiry times.
const TICK: Duration = Duration::from_secs(60);
/// Partnerships read per store call.
const PAGE_SIZE: usize = 500;
const SECONDS_PER_DAY: f64 = 86_400.0;

/// Keeps `as2_routing_certificate_expiry_days` current until `stop` is cancelled.
pub async fn track_certificate_expiry(
    store: PartnershipStore,
    events: EventHub,
    metrics: RoutingMetrics,
    stop: CancellationToken,
) {
    let mut changes = events.subscribe_changes();
    let mut expiries: HashMap<CertificateLabels, i64> = HashMap::new();
    let mut stale = true;
    let mut last_read: Option<tokio::time::Instant> = None;
    loop {
        if stale || last_read.is_none_or(|at| at.elapsed() >= REFRESH_INTERVAL) {
            match certificate_expiries(&store).await {
                Ok(current) => {
                    for gone in expiries.keys().filter(|key| !current.contains_key(*key)) {
                        metrics.certificate_expiry_days.remove(gone);
                    }
                    expiries = current;
                    stale = false;
                    last_read = Some(tokio::time::Instant::now());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read partner certificates for the expiry metric");
                }
            }
        }
        let now = unix_now();
        for (labels, not_after) in &expiries {
            #[allow(clippy::cast_precision_loss)]
            let days = (not_after - now) as f64 / SECONDS_PER_DAY;
            metrics
                .certificate_expiry_days
                .get_or_create(labels)
                .set(days);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
            received = changes.recv() => match received {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Coalesce a burst of changes into one read.
                    while !changes.is_empty() {
                        let _ = changes.try_recv();
                    }
                    stale = true;
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// Every partner certificate's expiry (Unix seconds) by partnership and fingerprint.
async fn certificate_expiries(
    store: &PartnershipStore,
) -> Result<HashMap<CertificateLabels, i64>, StoreError> {
    let mut expiries = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list(after.as_deref(), PAGE_SIZE).await?;
        for partnership in &page.partnerships {
            for certificate in &partnership.partner_certificates {
                let Some(not_after) = &certificate.not_after else {
                    continue;
                };
                expiries.insert(
                    CertificateLabels {
                        partnership: partnership.id.clone(),
                        fingerprint: certificate.sha256_fingerprint.clone(),
                    },
                    not_after.seconds,
                );
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(expiries),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}
