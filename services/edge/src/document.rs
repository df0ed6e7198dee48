//! Where a received document goes while it is unwrapped, and the byte budget that bounds
//! the memory of all requests together.
//!
//! The unwrap runs on a blocking thread and hands the document to a [`DocumentSpool`] as
//! it comes out of the layers. The spool keeps documents up to the claim-check threshold
//! in memory (they go into the Kafka record, as before) and streams larger ones into the
//! object store: the first bytes beyond the threshold start an upload, and a task on the
//! runtime writes the chunks the spool sends it over a bounded channel. Nothing becomes
//! visible in the store until the message has been verified and the upload completed
//! ([`SpooledDocument::complete`]); a message that fails aborts its upload
//! ([`SpooledDocument::discard`]).
//!
//! The [`ByteBudget`] counts the buffers that grow with load: each request's body
//! channel and inline document (reserved when its body starts streaming) and each
//! upload's parts (reserved when it starts). A request that finds the budget spent gets
//! 503 with Retry-After.

use std::sync::Arc;
use std::time::Duration;

use as2_protocol::As2Error;
use as2_protocol::unwrap::{PayloadInfo, PayloadSink};
use as2_store::{ObjectAttributes, Store, StoredObject, Upload};
use bytes::Bytes;
use openssl::hash::{Hasher, MessageDigest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

/// The budget is counted in units of this many bytes.
const BUDGET_UNIT: usize = 1024;

/// A budget of buffered bytes shared by all requests.
#[derive(Clone, Debug)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        let units = (bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(units)),
            total: units * BUDGET_UNIT,
        }
    }

    /// The whole budget, in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits() * BUDGET_UNIT
    }

    fn units(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX)
    }

    /// Reserves `bytes` now, or fails when the budget does not have them.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        self.semaphore
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()
            .map(|permit| Reservation { _permit: permit })
    }

    /// Reserves `bytes` now only if `keep_free` bytes stay available after it: large
    /// requests use this so that they cannot take the whole budget from small ones. The
    /// check and the reservation are not one step, so two large requests at once may
    /// dip into the part kept free; the budget itself is never exceeded.
    pub fn try_reserve_leaving(&self, bytes: usize, keep_free: usize) -> Option<Reservation> {
        if self.available() < bytes.saturating_add(keep_free) {
            return None;
        }
        self.try_reserve(bytes)
    }

    /// Takes `bytes` of `reservation` into a reservation of their own (to be given back
    /// at another time), when it holds that many.
    pub fn split(&self, reservation: &mut Reservation, bytes: usize) -> Option<Reservation> {
        let units = usize::try_from(self.units(bytes)).unwrap_or(usize::MAX);
        reservation
            ._permit
            .split(units)
            .map(|permit| Reservation { _permit: permit })
    }

    /// Reserves `bytes`, waiting up to `wait` for other requests to give some back.
    pub async fn reserve(&self, bytes: usize, wait: Duration) -> Option<Reservation> {
        let acquire = self.semaphore.clone().acquire_many_owned(self.units(bytes));
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Reservation { _permit: permit }),
            _ => None,
        }
    }
}

/// Where documents go: the object store for large ones, and the threshold.
#[derive(Clone, Debug)]
pub struct DocumentStorage {
    /// The object store; without it every document must fit inline.
    pub store: Option<Store>,
    /// Documents larger than this many bytes go to the object store and the record
    /// carries a reference (claim check).
    pub inline_threshold: usize,
    /// The memory budget of all requests.
    pub budget: ByteBudget,
    /// How long a request waits for budget before it is answered 503.
    pub budget_wait: Duration,
}

impl DocumentStorage {
    /// In-memory documents only, with a budget of `budget` bytes.
    pub fn inline_only(inline_threshold: usize, budget: usize) -> Self {
        Self {
            store: None,
            inline_threshold,
            budget: ByteBudget::new(budget),
            budget_wait: Duration::from_secs(5),
        }
    }
}

/// Why the spool could not take the document: our side, not the message's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolFailure {
    /// The memory budget had no room for an upload.
    Budget,
    /// The object store failed.
    Store(String),
}

/// Chunks sent to the upload task at most this many at a time.
const UPLOAD_CHANNEL: usize = 8;

struct UploadFeed {
    sender: mpsc::Sender<Bytes>,
    task: JoinHandle<Result<Upload, as2_store::StoreError>>,
    /// `None` when the request reserved the upload's memory up front.
    _reservation: Option<Reservation>,
}

/// The sink of the unwrap: inline up to the threshold, then the object store.
pub struct DocumentSpool {
    storage: DocumentStorage,
    key: String,
    runtime: tokio::runtime::Handle,
    content_type: String,
    inline: Vec<u8>,
    hasher: Hasher,
    size: u64,
    upload: Option<UploadFeed>,
    failure: Option<SpoolFailure>,
    upload_reserved: bool,
}

impl DocumentSpool {
    /// A spool whose document, if large, is stored under `key`; `runtime` runs the
    /// upload. `upload_reserved`: the request already reserved an upload's memory.
    pub fn new(
        storage: DocumentStorage,
        key: String,
        runtime: tokio::runtime::Handle,
        upload_reserved: bool,
    ) -> Result<Self, As2Error> {
        Ok(Self {
            storage,
            key,
            runtime,
            content_type: String::new(),
            inline: Vec::new(),
            hasher: Hasher::new(MessageDigest::sha256())?,
            size: 0,
            upload: None,
            failure: None,
            upload_reserved,
        })
    }

    /// Why the spool failed, when it did (the unwrap then failed with a placeholder).
    pub fn failure(&self) -> Option<&SpoolFailure> {
        self.failure.as_ref()
    }

    fn fail(&mut self, failure: SpoolFailure) -> As2Error {
        let text = match &failure {
            SpoolFailure::Budget => "no memory budget for the upload".to_owned(),
            SpoolFailure::Store(error) => format!("the object store failed: {error}"),
        };
        self.failure = Some(failure);
        As2Error::InvalidArgument(text)
    }

    /// Starts the upload and hands it what was held inline.
    fn start_upload(&mut self) -> Result<(), As2Error> {
        let Some(store) = self.storage.store.clone() else {
            return Err(As2Error::LimitExceeded(format!(
                "the document is larger than {} bytes",
                self.storage.inline_threshold
            )));
        };
        let reservation = if self.upload_reserved {
            None
        } else {
            let budget = self.storage.budget.clone();
            let wait = self.storage.budget_wait;
            let bound = store.upload_memory_bound();
            match self.runtime.block_on(budget.reserve(bound, wait)) {
                Some(reservation) => Some(reservation),
                None => return Err(self.fail(SpoolFailure::Budget)),
            }
        };
        let attributes = ObjectAttributes::content_type(self.content_type.clone());
        let mut upload = match store.upload(&self.key, attributes) {
            Ok(upload) => upload,
            Err(error) => return Err(self.fail(SpoolFailure::Store(error.to_string()))),
        };
        let (sender, mut receiver) = mpsc::channel::<Bytes>(UPLOAD_CHANNEL);
        let task = self.runtime.spawn(async move {
            while let Some(chunk) = receiver.recv().await {
                upload.write_bytes(chunk).await?;
            }
            Ok(upload)
        });
        self.upload = Some(UploadFeed {
            sender,
            task,
            _reservation: reservation,
        });
        let held = std::mem::take(&mut self.inline);
        self.send(Bytes::from(held))
    }

    fn send(&mut self, chunk: Bytes) -> Result<(), As2Error> {
        let Some(feed) = &self.upload else {
            return Ok(());
        };
        if feed.sender.blocking_send(chunk).is_err() {
            // The task ended early: it failed; its error comes out of `finish`.
            return Err(self.fail(SpoolFailure::Store("the upload stopped".to_owned())));
        }
        Ok(())
    }

    /// The document as spooled (call on the runtime, after the unwrap).
    pub async fn finish(self) -> Result<SpooledDocument, SpoolFailure> {
        let sha256 = {
            let mut hasher = self.hasher;
            hasher
                .finish()
                .map(|digest| as2_store::keys::hex(&digest))
                .map_err(|error| SpoolFailure::Store(error.to_string()))?
        };
        let Some(feed) = self.upload else {
            return Ok(SpooledDocument::Inline {
                data: self.inline,
                sha256,
                size: self.size,
            });
        };
        let UploadFeed {
            sender,
            task,
            _reservation,
        } = feed;
        drop(sender);
        let upload = match task.await {
            Ok(Ok(upload)) => upload,
            Ok(Err(error)) => return Err(SpoolFailure::Store(error.to_string())),
            Err(error) => return Err(SpoolFailure::Store(error.to_string())),
        };
        Ok(SpooledDocument::Uploading(Box::new(PendingUpload {
            upload,
            store: self.storage.store.clone(),
            size: self.size,
            sha256,
            _reservation,
        })))
    }

    /// Gives up on the document: an upload it started is aborted.
    pub async fn abandon(self) {
        if let Some(feed) = self.upload {
            drop(feed.sender);
            if let Ok(Ok(upload)) = feed.task.await
                && let Err(error) = upload.abort().await
            {
                tracing::warn!(%error, "could not abort an upload");
            }
        }
    }
}

impl PayloadSink for DocumentSpool {
    fn start(&mut self, info: &PayloadInfo) -> as2_protocol::Result<()> {
        self.content_type = info.content_type.clone();
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> as2_protocol::Result<()> {
        self.hasher.update(data)?;
        self.size += data.len() as u64;
        if self.upload.is_none() {
            if self.inline.len() + data.len() <= self.storage.inline_threshold {
                self.inline.extend_from_slice(data);
                return Ok(());
            }
            self.start_upload()?;
        }
        self.send(Bytes::copy_from_slice(data))
    }
}

/// An upload whose bytes are all sent, not yet completed.
pub struct PendingUpload {
    upload: Upload,
    store: Option<Store>,
    size: u64,
    sha256: String,
    _reservation: Option<Reservation>,
}

/// A document after the unwrap.
pub enum SpooledDocument {
    /// Small enough for the record.
    Inline {
        /// The document.
        data: Vec<u8>,
        /// Its SHA-256, lowercase hex.
        sha256: String,
        /// Its size in bytes.
        size: u64,
    },
    /// In the object store, waiting to be completed (or discarded).
    Uploading(Box<PendingUpload>),
}

/// A document stored in the object store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDocument {
    /// Its key in the store.
    pub key: String,
    /// Its URL (what the record carries).
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl SpooledDocument {
    /// No document (a message that failed).
    pub fn empty() -> Self {
        Self::Inline {
            data: Vec::new(),
            sha256: String::new(),
            size: 0,
        }
    }

    /// The document's size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Self::Inline { size, .. } => *size,
            Self::Uploading(pending) => pending.size,
        }
    }

    /// The key an uploaded document will have once completed (`None` for an inline one).
    pub fn object_key(&self) -> Option<&str> {
        match self {
            Self::Inline { .. } => None,
            Self::Uploading(pending) => Some(pending.upload.key()),
        }
    }

    /// Takes the bytes of an inline document (empty for an uploaded one).
    pub fn take_inline(&mut self) -> Vec<u8> {
        match self {
            Self::Inline { data, .. } => std::mem::take(data),
            Self::Uploading(_) => Vec::new(),
        }
    }

    /// Makes an uploaded document visible in the store; returns where it is (`None`
    /// for an inline document) and its SHA-256.
    pub async fn complete(self) -> Result<(Option<StoredDocument>, String), SpoolFailure> {
        match self {
            Self::Inline { sha256, .. } => Ok((None, sha256)),
            Self::Uploading(pending) => {
                let PendingUpload {
                    upload,
                    store,
                    size,
                    sha256,
                    _reservation,
                } = *pending;
                let stored: StoredObject = upload
                    .complete()
                    .await
                    .map_err(|error| SpoolFailure::Store(error.to_string()))?;
                let url = store
                    .as_ref()
                    .map(|store| store.object_url(&stored.key))
                    .unwrap_or_default();
                if stored.size != size {
                    return Err(SpoolFailure::Store(format!(
                        "the store holds {} bytes of a {size}-byte document",
                        stored.size
                    )));
                }
                let document = StoredDocument {
                    key: stored.key,
                    url,
                    size,
                    sha256: sha256.clone(),
                };
                Ok((Some(document), sha256))
            }
        }
    }

    /// Drops the document: an upload is aborted, nothing stays in the store.
    pub async fn discard(self) {
        if let Self::Uploading(pending) = self
            && let Err(error) = pending.upload.abort().await
        {
            tracing::warn!(%error, "could not abort the upload of a refused document");
        }
    }
}

/// Deletes a stored document whose record could not be published.
pub async fn delete_stored(storage: &DocumentStorage, document: &StoredDocument) {
    delete_object(storage, &document.key).await;
}

/// Deletes the object under `key`, a document no record references (an absent one is
/// fine).
pub async fn delete_object(storage: &DocumentStorage, key: &str) {
    if let Some(store) = &storage.store
        && let Err(error) = store.delete(key).await
    {
        tracing::warn!(%error, key, "could not delete an unpublished document");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_reservations_leave_the_kept_part_to_small_ones() {
        const MIB: usize = 1024 * 1024;
        let budget = ByteBudget::new(8 * MIB);
        let large = budget.try_reserve_leaving(5 * MIB, 2 * MIB).expect("room");
        assert!(
            budget.try_reserve_leaving(2 * MIB, 2 * MIB).is_none(),
            "a second large one would eat into the kept part"
        );
        let small = budget.try_reserve(2 * MIB).expect("small ones may use it");
        assert!(
            budget.try_reserve(2 * MIB).is_none(),
            "the budget itself holds"
        );
        drop((large, small));
        assert_eq!(budget.available(), 8 * MIB);
    }

    #[test]
    fn a_split_share_is_given_back_on_its_own() {
        let budget = ByteBudget::new(10 * 1024 * 1024);
        let mut request = budget.try_reserve(4 * 1024 * 1024).expect("room");
        let share = budget.split(&mut request, 1024 * 1024).expect("a share");
        assert!(
            budget.try_reserve(7 * 1024 * 1024).is_none(),
            "6 MiB are left"
        );
        drop(request);
        assert_eq!(
            budget.available(),
            9 * 1024 * 1024,
            "the share is still held"
        );
        drop(share);
        assert_eq!(budget.available(), budget.total());
    }
}
