//! The orphan sweep: documents made visible in the object store by an attempt that died
//! before its claim ended, and that no resend came for.
//!
//! A large document's object becomes visible before its record is written. Right before
//! that, the holder registers the object as *pending* and notes it in the message's claim
//! ([`DedupStore::note_object`]); a claim that ends cleanly forgets it again (published:
//! [`DedupStore::complete`]; certainly not published, the object deleted:
//! [`DedupStore::release`]). So what is still registered after
//! `AS2_ORPHAN_SWEEP_AFTER_SECS` belongs to an attempt that crashed, was cut off, or
//! timed out waiting for the broker. A resend settles such an object by itself (the
//! claim hands it over); the sweep settles those no resend came for, from what the claim
//! says:
//!
//! | the claim | the object |
//! |---|---|
//! | `done`, its record references this object | kept |
//! | `done`, its record references another (or none) | deleted: that attempt never published |
//! | held by a live request | looked at again in the next round |
//! | its holder's lease ran out | the sweep takes the claim over like a resend: an attempt that never armed never published (deleted); an armed one is searched for in its partition after its publish window, exactly as a resend does ([`InboundProcessor::find_earlier`]): found, the object is kept and the claim abandoned for the partner's resend; absent, the objects are deleted and the claim released |
//! | gone (released by a request that deleted its object, past its retention, or lost by Redis) | left to the claim-check retention: the sweep cannot tell, and deleting an object a record references would lose a document |
//!
//! The sweep holds the claim with a lease like any request, so a zombie holder cannot
//! arm behind it, and a resend that arrives meanwhile gets 503 with Retry-After. Every
//! replica may sweep: two sweeps of one entry settle it once (claims exclude each other,
//! deletes are idempotent). With the in-memory dedup store nothing survives the process,
//! so only attempts that timed out are settled there; after a crash their objects go with
//! the retention.

use std::time::Duration;

use crate::dedup::{Claim, Inspection, PendingObject};
use crate::document::delete_object;
use crate::inbound::InboundProcessor;

/// What one round settled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrphanSweep {
    /// Objects no record references, deleted.
    pub deleted: usize,
    /// Objects a record references, kept.
    pub kept: usize,
    /// Entries whose claim is gone, left to the retention sweep.
    pub unknown: usize,
    /// Entries of live claims (or that failed), for the next round.
    pub waiting: usize,
}

/// Entries taken per round.
const ROUND: usize = 256;

impl InboundProcessor {
    /// Settles the pending objects registered at least `age` ago (one round of at most
    /// 256 entries). Errors of Redis or the broker leave an entry for the next round.
    pub async fn sweep_orphans(&self, age: Duration) -> OrphanSweep {
        let mut sweep = OrphanSweep::default();
        let pending = match self.dedup.pending_objects(age, ROUND).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(%error, "could not list the pending objects");
                return sweep;
            }
        };
        for entry in pending {
            let outcome = match self.settle_pending(&entry).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(%error, object = entry.object, "could not settle a pending object");
                    Settled::Waiting
                }
            };
            let counter = match outcome {
                Settled::Deleted => &mut sweep.deleted,
                Settled::Kept => &mut sweep.kept,
                Settled::Unknown => &mut sweep.unknown,
                Settled::Waiting => {
                    sweep.waiting += 1;
                    continue;
                }
            };
            *counter += 1;
            self.metrics.orphan_object(outcome.label());
            tracing::info!(
                object = entry.object,
                message_id = entry.message_id,
                outcome = outcome.label(),
                "pending object settled"
            );
            if let Err(error) = self.dedup.forget_pending(&entry).await {
                tracing::warn!(%error, "could not forget a settled pending object");
            }
        }
        sweep
    }

    async fn settle_pending(
        &self,
        entry: &PendingObject,
    ) -> Result<Settled, crate::dedup::DedupError> {
        let message = entry.message();
        match self.dedup.inspect(&message).await? {
            Inspection::Absent => return Ok(Settled::Unknown),
            Inspection::Done { object } => {
                return Ok(self
                    .keep_if_referenced(&entry.object, object.as_deref())
                    .await);
            }
            Inspection::InFlight => {}
        }
        let mut claim = match self.dedup.claim(&message).await? {
            Claim::Claimed(claim) => claim,
            // A live holder, or it just finished: the next round looks again.
            Claim::InFlight { .. } | Claim::Done(_) => return Ok(Settled::Waiting),
        };
        let stale = claim.take_stale_object();
        let Some(earlier) = claim.earlier().cloned() else {
            // Never armed, so never published.
            for object in stale.iter().chain([&entry.object]) {
                delete_object(&self.documents, object).await;
            }
            self.dedup.release(claim).await?;
            return Ok(Settled::Deleted);
        };
        let referenced = earlier.attempt.object.clone();
        match self.find_earlier(&message, &earlier).await {
            Ok(Some(_)) => {
                if let Some(stale) = stale.filter(|stale| Some(stale) != referenced.as_ref()) {
                    delete_object(&self.documents, &stale).await;
                }
                // The partner's resend finds the record and answers for it.
                self.dedup.abandon(claim).await?;
                Ok(self
                    .keep_if_referenced(&entry.object, referenced.as_deref())
                    .await)
            }
            Ok(None) => {
                for object in stale.iter().chain(&referenced).chain([&entry.object]) {
                    delete_object(&self.documents, object).await;
                }
                claim.earlier_absent();
                self.dedup.release(claim).await?;
                Ok(Settled::Deleted)
            }
            Err(_) => {
                self.dedup.abandon(claim).await?;
                Ok(Settled::Waiting)
            }
        }
    }

    /// Keeps `object` when it is the one the record references, else deletes it.
    async fn keep_if_referenced(&self, object: &str, referenced: Option<&str>) -> Settled {
        if referenced == Some(object) {
            return Settled::Kept;
        }
        delete_object(&self.documents, object).await;
        Settled::Deleted
    }
}

/// What became of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Deleted,
    Kept,
    Unknown,
    Waiting,
}

impl Settled {
    fn label(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Kept => "kept",
            Self::Unknown => "unknown",
            Self::Waiting => "waiting",
        }
    }
}

/// Runs [`InboundProcessor::sweep_orphans`] every `interval` until `stop`, for entries
/// at least `age` old; a full round is followed by the next at once.
pub async fn run_orphan_sweeps(
    processor: std::sync::Arc<InboundProcessor>,
    age: Duration,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let sweep = processor.sweep_orphans(age).await;
        let busy = sweep.deleted + sweep.kept + sweep.unknown + sweep.waiting >= ROUND
            && sweep.waiting < ROUND;
        if !busy {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        } else if stop.is_cancelled() {
            return;
        }
    }
}
