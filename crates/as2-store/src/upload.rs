//! Streaming uploads with bounded memory.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{Attributes, MultipartUpload, PutMultipartOptions, PutPayload};
use tokio::task::JoinSet;

use crate::config::upload_memory_bound;
use crate::error::{Result, StoreError};
use crate::store::{StoreInner, StoredObject, put_single};

/// The most bytes `write(&[u8])` copies into a fresh buffer beyond what it needs, so that
/// many small writes fill one buffer instead of one allocation each.
const COPY_BUFFER: usize = 256 * 1024;

/// A streaming upload of one object, from [`crate::Store::upload`].
///
/// Bytes are gathered into a part of `part_size` bytes. An object that fits in one part
/// goes as a single PUT on [`Upload::complete`]; a bigger one becomes a multipart upload
/// whose parts are sent by background tasks while the caller goes on writing.
///
/// # Memory
///
/// At most `max_concurrent_parts` parts are in flight: a write that fills a part while
/// that many are still being sent waits for one of them to finish. So an upload holds at
/// most `part_size × (1 + max_concurrent_parts)` bytes (the part being filled and the
/// parts in flight), whatever the object's size: [`Upload::memory_bound`].
/// [`Upload::buffered_bytes`] reports what it holds now; the parts in flight count until
/// the upload has seen them finish, so the figure never understates.
///
/// [`Upload::write`] copies the caller's bytes; [`Upload::write_bytes`] keeps the `Bytes`
/// instead of copying (slices of it become parts), so a caller that hands over one chunk
/// much larger than a part keeps that whole allocation alive until its last slice is sent.
///
/// # Nothing half-written is visible
///
/// The object appears under its key only when [`Upload::complete`] returns. A failed
/// complete, [`Upload::abort`], or dropping the upload without completing it aborts the
/// multipart upload (on drop best-effort, by a task on the current tokio runtime), so no
/// object and, where the backend honours the abort, no stored parts remain. Parts of an
/// upload whose process died are not cleaned up by anyone here: give the bucket a
/// lifecycle rule that aborts incomplete multipart uploads after a day.
///
/// # Errors
///
/// A part that failed (after the backend client's own retries) fails the next write or
/// the complete. The upload cannot go on after an error: abort or drop it, and start
/// again from the beginning.
pub struct Upload {
    inner: Arc<StoreInner>,
    key: String,
    path: ObjectPath,
    attributes: Attributes,
    /// Finished chunks of the part being filled.
    chunks: Vec<Bytes>,
    /// The chunk `write` copies into (never grown past its capacity).
    current: BytesMut,
    /// Bytes in `chunks` and `current`.
    filled: usize,
    /// The multipart upload, once the object turned out bigger than one part.
    multipart: Option<Box<dyn MultipartUpload>>,
    /// The parts being sent; each task returns its size.
    in_flight: JoinSet<(usize, object_store::Result<()>)>,
    /// Bytes of the parts in `in_flight`.
    in_flight_bytes: usize,
    /// The most `buffered_bytes` has been.
    peak_buffered_bytes: usize,
    parts: usize,
    written: u64,
}

impl Upload {
    pub(crate) fn new(
        inner: Arc<StoreInner>,
        key: String,
        path: ObjectPath,
        attributes: Attributes,
    ) -> Self {
        Self {
            inner,
            key,
            path,
            attributes,
            chunks: Vec::new(),
            current: BytesMut::new(),
            filled: 0,
            multipart: None,
            in_flight: JoinSet::new(),
            in_flight_bytes: 0,
            peak_buffered_bytes: 0,
            parts: 0,
            written: 0,
        }
    }

    /// The key being written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Bytes this upload holds now: the part being filled plus the parts in flight.
    /// Never more than [`Upload::memory_bound`].
    pub fn buffered_bytes(&self) -> usize {
        self.filled + self.in_flight_bytes
    }

    /// The most [`Upload::buffered_bytes`] has been during this upload.
    pub fn peak_buffered_bytes(&self) -> usize {
        self.peak_buffered_bytes
    }

    /// The most bytes this upload can hold: `part_size × (1 + max_concurrent_parts)`.
    pub fn memory_bound(&self) -> usize {
        upload_memory_bound(self.inner.part_size, self.inner.max_concurrent_parts)
    }

    /// Appends bytes (copied). Waits when the part it fills cannot be sent yet because
    /// `max_concurrent_parts` parts are in flight.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = self.make_room().await?;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.copy_into_part(now);
            data = rest;
        }
        Ok(())
    }

    /// Appends bytes without copying them. Waits as [`Upload::write`] does.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let room = self.make_room().await?;
            let now = data.split_to(room.min(data.len()));
            self.seal_current();
            self.filled += now.len();
            self.written += now.len() as u64;
            self.chunks.push(now);
            self.note_buffered();
        }
        Ok(())
    }

    /// Finishes the upload: the object becomes visible under its key. On failure the
    /// multipart upload is aborted (best-effort) and nothing is visible.
    pub async fn complete(mut self) -> Result<StoredObject> {
        let result = self.finish().await;
        if result.is_err() {
            let _ = self.abort_parts().await;
        }
        result
    }

    /// Abandons the upload: parts in flight are stopped and the multipart upload is
    /// aborted, so nothing is stored under the key.
    pub async fn abort(mut self) -> Result<()> {
        self.abort_parts().await
    }

    async fn finish(&mut self) -> Result<StoredObject> {
        self.reap_finished_parts()?;
        self.seal_current();
        if self.multipart.is_some() {
            if self.filled > 0 {
                self.send_part().await?;
            }
            while let Some(joined) = self.in_flight.join_next().await {
                self.part_finished(joined)?;
            }
        }
        let Some(multipart) = self.multipart.as_mut() else {
            let payload = PutPayload::from_iter(std::mem::take(&mut self.chunks));
            self.filled = 0;
            let attributes = std::mem::take(&mut self.attributes);
            return put_single(
                &self.inner,
                &self.key,
                &self.path,
                payload,
                self.written,
                attributes,
            )
            .await;
        };
        let result = multipart
            .complete()
            .await
            .map_err(|error| StoreError::from_backend("upload", &self.key, error))?;
        self.multipart = None;
        Ok(StoredObject {
            key: self.key.clone(),
            size: self.written,
            e_tag: result.e_tag,
            version: result.version,
            parts: self.parts,
        })
    }

    /// Stops the parts in flight and aborts the multipart upload, if one was started.
    async fn abort_parts(&mut self) -> Result<()> {
        self.in_flight.shutdown().await;
        self.in_flight_bytes = 0;
        self.drop_filled();
        match self.multipart.take() {
            Some(mut multipart) => multipart
                .abort()
                .await
                .map_err(|error| StoreError::from_backend("upload abort", &self.key, error)),
            None => Ok(()),
        }
    }

    /// Sends the filled part when it is full (there is more to write, so it is not the
    /// last) and returns how many bytes the part being filled can take.
    async fn make_room(&mut self) -> Result<usize> {
        self.reap_finished_parts()?;
        if self.filled >= self.inner.part_size {
            self.send_part().await?;
        }
        Ok(self.inner.part_size - self.filled)
    }

    /// Copies `data` (no more than the room left in the part) into the part.
    fn copy_into_part(&mut self, data: &[u8]) {
        if self.current.capacity() - self.current.len() < data.len() {
            self.seal_current();
            let room = self.inner.part_size - self.filled;
            self.current = BytesMut::with_capacity(data.len().max(COPY_BUFFER.min(room)));
        }
        self.current.extend_from_slice(data);
        self.filled += data.len();
        self.written += data.len() as u64;
        self.note_buffered();
    }

    /// Moves the copy buffer's bytes to the part's finished chunks.
    fn seal_current(&mut self) {
        if !self.current.is_empty() {
            self.chunks.push(self.current.split().freeze());
        }
        self.current = BytesMut::new();
    }

    fn drop_filled(&mut self) {
        self.chunks.clear();
        self.current = BytesMut::new();
        self.filled = 0;
    }

    /// Hands the filled part to a background task, first waiting until fewer than
    /// `max_concurrent_parts` are in flight (the filled part stays counted meanwhile).
    async fn send_part(&mut self) -> Result<()> {
        while self.in_flight.len() >= self.inner.max_concurrent_parts {
            let Some(joined) = self.in_flight.join_next().await else {
                break;
            };
            self.part_finished(joined)?;
        }
        let multipart = match self.multipart.take() {
            Some(multipart) => multipart,
            None => {
                // Cloned, not taken: a write cancelled while this request is out
                // starts the multipart upload again on the next write.
                let options = PutMultipartOptions {
                    attributes: self.attributes.clone(),
                    ..PutMultipartOptions::default()
                };
                self.inner
                    .backend
                    .put_multipart_opts(&self.path, options)
                    .await
                    .map_err(|error| StoreError::from_backend("upload", &self.key, error))?
            }
        };
        self.seal_current();
        let size = self.filled;
        let payload = PutPayload::from_iter(std::mem::take(&mut self.chunks));
        let part = self.multipart.insert(multipart).put_part(payload);
        self.filled = 0;
        self.in_flight.spawn(async move { (size, part.await) });
        self.in_flight_bytes += size;
        self.parts += 1;
        self.note_buffered();
        Ok(())
    }

    /// Accounts for the parts that have finished without waiting; fails on the first
    /// that failed.
    fn reap_finished_parts(&mut self) -> Result<()> {
        while let Some(joined) = self.in_flight.try_join_next() {
            self.part_finished(joined)?;
        }
        Ok(())
    }

    fn part_finished(
        &mut self,
        joined: Result<(usize, object_store::Result<()>), tokio::task::JoinError>,
    ) -> Result<()> {
        match joined {
            Ok((size, result)) => {
                self.in_flight_bytes -= size;
                result.map_err(|error| StoreError::from_backend("upload part", &self.key, error))
            }
            Err(error) => Err(StoreError::Backend {
                operation: "upload part",
                key: self.key.clone(),
                source: Box::new(error),
            }),
        }
    }

    fn note_buffered(&mut self) {
        self.peak_buffered_bytes = self.peak_buffered_bytes.max(self.buffered_bytes());
    }
}

impl fmt::Debug for Upload {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Upload")
            .field("key", &self.key)
            .field("written", &self.written)
            .field("parts", &self.parts)
            .field("buffered_bytes", &self.buffered_bytes())
            .finish_non_exhaustive()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Once completed or aborted there is no multipart upload left to clean up.
        let Some(mut multipart) = self.multipart.take() else {
            // Only a single PUT was planned and none was made: nothing is stored.
            return;
        };
        let mut in_flight = std::mem::take(&mut self.in_flight);
        let key = std::mem::take(&mut self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(key = %key, "upload dropped before completion, aborting it");
                runtime.spawn(async move {
                    in_flight.shutdown().await;
                    if let Err(error) = multipart.abort().await {
                        tracing::warn!(key = %key, error = %error, "aborting a dropped upload failed");
                    }
                });
            }
            Err(_) => {
                // Dropping the JoinSet stops the parts; the stored ones stay until the
                // bucket's lifecycle rule removes them.
                tracing::warn!(key = %key, "upload dropped outside a tokio runtime, its parts are not aborted");
            }
        }
    }
}
