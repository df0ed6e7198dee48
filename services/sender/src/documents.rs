//! Documents in the object store and the outbound archive.
//!
//! A record may reference its document instead of carrying it (claim check, the same
//! headers the edge writes: `as2-document-location`, `-key`, `-size`, `-sha256`). Such a
//! document is never held whole: it is read from its store in batches, each batch goes
//! through the message builder ([`MessageWriter`]) on a blocking thread, and the body
//! that comes out is uploaded to the sender's store; the partner is then sent that
//! object, with a Content-Length (or chunked, per partnership), and every retry resends
//! the same bytes. The document's size and SHA-256, when the record states them, are
//! checked on the way: a mismatch fails the record before anything is sent.
//!
//! The object a large message is built into is its archive entry's `.message` when the
//! partnership is archived, so what was sent is kept without a second copy; otherwise
//! it is a spool object under `outbound/{day}/`, deleted once the message has its
//! outcome (and by [`sweep_spool`] after a day, when a crash left it behind).
//!
//! The archive ([`as2_store::archive`]'s layout, the same as the edge's): the message as
//! sent (header fields, blank line, body), the partner's answer (status line, header
//! fields, body: the synchronous MDN), and an asynchronous MDN when it comes
//! (`.mdn`), found by `as2ctl archive list/get` through the index.

use std::collections::HashMap;
use std::sync::Mutex;

use as2_partner::transport::PartnerResponse;
use as2_protocol::ReceivedContentMic;
use as2_protocol::outbound::MessageWriter;
use as2_store::archive::{self, ArchiveEntry};
use as2_store::{ObjectAttributes, ObjectStoreArgs, Store, StoreError};
use bytes::Bytes;
use futures::StreamExt as _;
use openssl::sha::Sha256;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::message::DocumentReference;

/// The prefix of the objects large messages are built into when they are not archived.
pub const SPOOL_PREFIX: &str = "outbound";
/// How much of a document goes through the builder at a time.
const BATCH_BYTES: usize = 1024 * 1024;

/// Why a referenced document could not be made into a message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store failed (after its own retries); the build is tried again later.
    #[error("object store: {0}")]
    Store(String),
    /// The document is not in its store.
    #[error("the referenced document is not in the object store: {0}")]
    Missing(String),
    /// The document is not what its record says.
    #[error("the referenced document {0}")]
    Mismatch(String),
    /// The message builder refused.
    #[error("cannot build the AS2 message: {0}")]
    Build(String),
    /// There is no store to build into or read from.
    #[error("{0}")]
    NoStore(String),
}

impl From<StoreError> for BuildError {
    fn from(error: StoreError) -> Self {
        if error.is_not_found() {
            Self::Missing(error.to_string())
        } else {
            Self::Store(error.to_string())
        }
    }
}

/// A message body built into the object store.
#[derive(Clone, Debug)]
pub struct StoredBody {
    /// The store it is in.
    pub store: Store,
    /// Its object.
    pub key: String,
    /// Where the body starts in the object (after the archived header block).
    pub offset: u64,
    /// The body's length.
    pub length: u64,
    /// Whether the object is a spool object, deleted once the message has its outcome.
    pub spooled: bool,
}

impl StoredBody {
    /// A stream of the body, for one send.
    pub async fn open(
        &self,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let end = self.offset + self.length;
        if self.length == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        Ok(self
            .store
            .get_range(&self.key, self.offset..end)
            .await?
            .into_stream())
    }
}

/// The object stores the sender uses: its own (`AS2_OBJECT_STORE_*`), where large
/// messages are built and the archive is written, and the ones references point into.
pub struct Objects {
    own: Option<Store>,
    args: ObjectStoreArgs,
    others: Mutex<HashMap<String, Store>>,
    archive_days: u32,
    builds: Semaphore,
}

impl Objects {
    /// `own`: the sender's store, if configured; `args`: the options (credentials) for
    /// stores that references name; `archive_days`: `AS2_ARCHIVE_RETENTION_DAYS`;
    /// `max_builds`: how many large messages are built at once (each holds about the
    /// store's upload memory bound plus 4 MiB).
    pub fn new(
        own: Option<Store>,
        args: ObjectStoreArgs,
        archive_days: u32,
        max_builds: usize,
    ) -> Self {
        Self {
            own,
            args,
            others: Mutex::new(HashMap::new()),
            archive_days,
            builds: Semaphore::new(max_builds.max(1)),
        }
    }

    /// The sender's own store.
    pub fn own(&self) -> Option<&Store> {
        self.own.as_ref()
    }

    /// Days messages of `partnership` are archived, `None` when they are not (no store,
    /// or the partnership or the defaults say so).
    pub fn archive_days(&self, partnership: &as2_rpc::routing::v1::Partnership) -> Option<u32> {
        self.own.as_ref()?;
        as2_partner::archive::retention_days(partnership, self.archive_days)
    }

    /// The store a reference points into: the sender's own when the location is in it,
    /// else one opened with the sender's options (credentials) and kept for the next.
    pub fn store_of(&self, reference: &DocumentReference) -> Result<Store, BuildError> {
        if let Some(own) = &self.own
            && own.key_of_url(&reference.location) == Some(reference.key.as_str())
        {
            return Ok(own.clone());
        }
        let config = self
            .args
            .reference_config(&reference.location, &reference.key)
            .map_err(|error| BuildError::NoStore(format!("cannot read the document: {error}")))?;
        let root = config.base_url();
        let mut others = self
            .others
            .lock()
            .map_err(|_| BuildError::NoStore("store cache poisoned".to_owned()))?;
        if let Some(store) = others.get(&root) {
            return Ok(store.clone());
        }
        let store = Store::open(&config)
            .map_err(|error| BuildError::NoStore(format!("cannot open {root}: {error}")))?;
        others.insert(root, store.clone());
        Ok(store)
    }

    /// Builds the message of a referenced document into `target` (`key`, after
    /// `prefix`, the archive's header block): reads the document in batches, writes
    /// each through `writer` on a blocking thread, checks the size and digest the record
    /// states. Nothing of a failed build stays in the store.
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        &self,
        reference: &DocumentReference,
        writer: MessageWriter,
        target: &Store,
        key: &str,
        prefix: &[u8],
        spooled: bool,
    ) -> Result<(StoredBody, ReceivedContentMic), BuildError> {
        let _permit = self
            .builds
            .acquire()
            .await
            .map_err(|_| BuildError::NoStore("the sender is stopping".to_owned()))?;
        let source = self.store_of(reference)?;
        let mut upload = target.upload(key, ObjectAttributes::content_type("message/http"))?;
        let built = async {
            upload.write(prefix).await?;
            let (length, mic) = build_stream(&source, reference, writer, &mut upload).await?;
            Ok::<_, BuildError>((length, mic))
        }
        .await;
        match built {
            Ok((length, mic)) => {
                upload.complete().await?;
                let body = StoredBody {
                    store: target.clone(),
                    key: key.to_owned(),
                    offset: prefix.len() as u64,
                    length,
                    spooled,
                };
                Ok((body, mic))
            }
            Err(error) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(%abort, key, "could not abort the upload of a message");
                }
                Err(error)
            }
        }
    }
}

/// Batches of the document read ahead of the builder: the reading of the next batch
/// overlaps the building of this one.
const BATCHES_AHEAD: usize = 2;

/// One pass over the document: read (a task of its own, up to [`BATCHES_AHEAD`] batches
/// ahead), digest and build (a blocking thread), upload.
async fn build_stream(
    source: &Store,
    reference: &DocumentReference,
    writer: MessageWriter,
    upload: &mut as2_store::Upload,
) -> Result<(u64, ReceivedContentMic), BuildError> {
    let input = source.get(&reference.key).await?.into_stream();
    let (batches, mut next_batch) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
    let reader = tokio::spawn(read_batches(input, reference.size, batches));
    let built = async {
        let mut state = BuildState {
            writer,
            digest: Sha256::new(),
            out: Vec::with_capacity(BATCH_BYTES + 64 * 1024),
        };
        let (mut size, mut length) = (0u64, 0u64);
        while let Some(batch) = next_batch.recv().await {
            let batch: Vec<u8> = batch?;
            size += batch.len() as u64;
            let mut taken = state;
            state = on_blocking_thread(move || {
                taken.digest.update(&batch);
                taken.writer.write(&batch, &mut taken.out)?;
                Ok(taken)
            })
            .await?;
            length += state.out.len() as u64;
            upload.write(&state.out).await?;
            state.out.clear();
        }
        let BuildState {
            writer,
            digest,
            mut out,
        } = state;
        let (mic, out) = on_blocking_thread(move || {
            let mic = writer.finish(&mut out)?;
            Ok((mic, out))
        })
        .await?;
        length += out.len() as u64;
        upload.write(&out).await?;
        if let Some(expected) = reference.size
            && expected != size
        {
            return Err(BuildError::Mismatch(format!(
                "has {size} bytes, its record says {expected}"
            )));
        }
        if let Some(expected) = reference.sha256
            && expected != digest.finish()
        {
            return Err(BuildError::Mismatch(
                "does not have the SHA-256 its record says".to_owned(),
            ));
        }
        Ok((length, mic))
    }
    .await;
    reader.abort();
    built
}

/// Reads `input` in batches of [`BATCH_BYTES`] into `batches`, failing when it grows
/// past `expected` bytes; ends with the input (or when the builder stops listening).
async fn read_batches(
    mut input: futures::stream::BoxStream<'static, Result<Bytes, StoreError>>,
    expected: Option<u64>,
    batches: tokio::sync::mpsc::Sender<Result<Vec<u8>, BuildError>>,
) {
    let mut size = 0u64;
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let item = match input.next().await {
            Some(Ok(chunk)) => {
                size += chunk.len() as u64;
                if let Some(expected) = expected.filter(|&expected| size > expected) {
                    Err(BuildError::Mismatch(format!(
                        "is larger than the {expected} bytes its record says"
                    )))
                } else {
                    batch.extend_from_slice(&chunk);
                    if batch.len() < BATCH_BYTES {
                        continue;
                    }
                    Ok(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(BATCH_BYTES),
                    ))
                }
            }
            Some(Err(error)) => Err(BuildError::from(error)),
            None if batch.is_empty() => return,
            None => Ok(std::mem::take(&mut batch)),
        };
        let failed = item.is_err();
        if batches.send(item).await.is_err() || failed {
            return;
        }
    }
}

struct BuildState {
    writer: MessageWriter,
    digest: Sha256,
    out: Vec<u8>,
}

async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, as2_protocol::As2Error> + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BuildError::Build(format!("the build task failed: {error}")))?
        .map_err(|error| BuildError::Build(error.to_string()))
}

/// The spool object of a message that is not archived.
pub fn spool_key(hash: &str, now: OffsetDateTime) -> String {
    format!(
        "{SPOOL_PREFIX}/{}/{hash}-{}.message",
        now.date(),
        as2_store::keys::random_name(4)
    )
}

/// Deletes spool objects left by a crash (from the day before yesterday and older: a
/// message still being retried keeps its own), and on a local directory the staging
/// files of builds a crash interrupted; returns how many.
pub async fn sweep_spool(store: &Store, today: time::Date) -> Result<usize, StoreError> {
    let expired = archive::sweep_expired(store, SPOOL_PREFIX, 1, today)
        .await?
        .len();
    Ok(expired + archive::remove_interrupted_uploads(store, &[SPOOL_PREFIX], today).await?)
}

/// The archive entry of one outbound message, written as the send goes.
pub struct OutboundArchive {
    /// The store.
    pub store: Store,
    /// The entry.
    pub entry: ArchiveEntry,
}

impl OutboundArchive {
    /// Stores the message as sent (header fields, blank line, body) for a body in
    /// memory.
    pub async fn put_message(
        &self,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), StoreError> {
        let stored = archive::http_object(None, headers, body);
        self.store
            .put(&self.entry.message_key(), stored)
            .await
            .map(|_| ())
    }

    /// Stores the partner's answer, when there was one, and the index entry.
    pub async fn finish(&self, answer: Option<&PartnerResponse>) -> Result<(), StoreError> {
        if let Some(answer) = answer {
            let status_line = format!("HTTP/1.1 {}", answer.status);
            let stored = archive::http_object(Some(&status_line), &answer.headers, &answer.body);
            self.store.put(&self.entry.answer_key(), stored).await?;
        }
        archive::put_index(&self.store, &self.entry).await
    }
}

/// Stores an asynchronous MDN beside the archived message it answers (`entry`: the
/// entry's name as the message record keeps it).
pub async fn put_async_mdn(
    store: &Store,
    entry: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), StoreError> {
    store
        .put(
            &archive::mdn_key(entry),
            archive::http_object(None, headers, body),
        )
        .await
        .map(|_| ())
}
