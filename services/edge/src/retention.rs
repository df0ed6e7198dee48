//! Retention of the objects the edge writes: documents referenced by records (claim
//! checks, `documents/{day}/...`) and the archive (`archive/keep-{days}/{day}/...`) are
//! deleted once they are older than their retention, by
//! [`as2_store::archive::sweep_expired`] and [`as2_store::archive::sweep_archive`], which
//! list only the days that have expired, never the whole store. Deleting is idempotent:
//! every replica may sweep. An object whose record was never written (the edge died
//! between completing the upload and the broker's acknowledgement) is found much earlier
//! by the orphan sweep ([`crate::orphans`]); what that sweep cannot judge goes with its
//! day. Stores with lifecycle rules can do the same themselves; the
//! sweep then finds nothing. On a local directory the staging files of uploads a crash
//! interrupted (which listings never show) are removed too, once an hour old
//! ([`remove_interrupted_uploads`]); on S3 a lifecycle rule aborts such uploads.

use std::time::Duration;

use as2_store::Store;
use as2_store::archive::{remove_interrupted_uploads, sweep_archive, sweep_expired};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Sweeps the documents under `prefix` (kept `retention_days`; 0: not swept) and the
/// archive every `interval` until `stop`, logging what it removed.
pub async fn run_sweeps(
    store: Store,
    prefix: &'static str,
    retention_days: u32,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let today = OffsetDateTime::now_utc().date();
        let documents = match retention_days {
            0 => Ok(0),
            days => sweep_expired(&store, prefix, days, today)
                .await
                .map(|deleted| deleted.len()),
        };
        let archive = sweep_archive(&store, today).await;
        let interrupted = remove_interrupted_uploads(&store, &[prefix], today).await;
        for (what, result) in [
            ("documents", documents),
            ("archive", archive),
            ("interrupted uploads", interrupted),
        ] {
            match result {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(what, deleted, "expired objects deleted"),
                Err(error) => tracing::warn!(%error, what, "the retention sweep failed"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
