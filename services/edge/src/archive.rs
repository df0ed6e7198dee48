//! The archive: every message of a known partnership exactly as received (its HTTP header
//! fields and body, byte for byte) and the answer we returned (status, header fields and
//! body: the MDN), kept in the object store for non-repudiation, per partnership, with an
//! enforced retention. The layout is [`as2_store::archive`]'s; this writes it while the
//! body arrives.
//!
//! The entry is written through [`Store::unsynced`]: on a local directory its three
//! small files are not fsynced one by one (that cost more CPU than the rest of a small
//! message's archiving); the kernel writes them back within about 30 s. The entry is
//! completed after the answer anyway, so a crash right then loses it either way; what
//! is new is that a crash of the machine (not of the edge) in those seconds may also
//! lose or truncate the newest entries. Object stores (S3 and the like) are durable
//! when a write returns, as before.

use as2_store::archive::{self, ArchiveEntry};
use as2_store::{ObjectAttributes, Store, StoreError, Upload};
use bytes::Bytes;

use crate::document::{DocumentStorage, Reservation, SpoolFailure};
use crate::inbound::Answer;

/// The archive upload of one message: its header fields first, then its body as it
/// arrives; completed with the answer once that is known.
pub struct ArchiveUpload {
    upload: Upload,
    store: Store,
    entry: ArchiveEntry,
    /// The upload's memory, given back when the entry is complete.
    _reservation: Reservation,
}

impl ArchiveUpload {
    /// Starts archiving a request with these header fields; `reserved`: the memory the
    /// request reserved for its archive upload (reserved here when `None`), held until
    /// the entry is complete.
    pub async fn start(
        storage: &DocumentStorage,
        entry: ArchiveEntry,
        headers: &[(String, String)],
        reserved: Option<Reservation>,
    ) -> Result<Self, SpoolFailure> {
        let store = storage
            .store
            .as_ref()
            .map(Store::unsynced)
            .ok_or_else(|| SpoolFailure::Store("no object store".to_owned()))?;
        let reservation = match reserved {
            Some(reservation) => reservation,
            None => storage
                .budget
                .reserve(store.upload_memory_bound(), storage.budget_wait)
                .await
                .ok_or(SpoolFailure::Budget)?,
        };
        let mut upload = store
            .upload(
                &entry.message_key(),
                ObjectAttributes::content_type("message/http"),
            )
            .map_err(|error| SpoolFailure::Store(error.to_string()))?;
        // Handed over whole, not copied into the upload's write buffer (which would be
        // allocated at a quarter MiB for a header block of a few hundred bytes).
        upload
            .write_bytes(Bytes::from(archive::header_block(None, headers)))
            .await
            .map_err(|error| SpoolFailure::Store(error.to_string()))?;
        Ok(Self {
            upload,
            store,
            entry,
            _reservation: reservation,
        })
    }

    /// The entry's URL (what the record's `as2-archive-location` says).
    pub fn location(&self) -> String {
        self.store.object_url(&self.entry.prefix)
    }

    /// The next bytes of the body, as received.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.upload.write_bytes(chunk).await
    }

    /// Completes the message, then stores the answer and the index entry.
    pub async fn finish(self, answer: &Answer) -> Result<(), StoreError> {
        let Self {
            upload,
            store,
            entry,
            _reservation,
        } = self;
        upload.complete().await?;
        let status = format!("HTTP/1.1 {}", answer.status);
        let stored = archive::http_object(Some(&status), &answer.headers, &answer.body);
        store.put(&entry.answer_key(), stored).await?;
        archive::put_index(&store, &entry).await
    }

    /// Gives up (the upload is aborted; nothing of it stays).
    pub async fn abort(self) {
        if let Err(error) = self.upload.abort().await {
            tracing::warn!(%error, "could not abort an archive upload");
        }
    }
}
