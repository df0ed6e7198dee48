//! The store handle: open a backend, then put, get, head, list and delete objects.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutOptions, PutPayload,
};

use crate::config::{Backend, S3Config, StoreConfig, upload_memory_bound};
use crate::error::{Result, StoreError};
use crate::upload::Upload;

/// A handle on an object store; cheap to clone (the backend is shared behind an `Arc`).
///
/// Keys are `/`-separated names such as `inbound/2024/06/01/<message-id>`; the key prefix
/// of the store's URL applies to each of them and is never seen by the caller.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

pub(crate) struct StoreInner {
    pub(crate) backend: Arc<dyn ObjectStore>,
    pub(crate) description: String,
    /// The URL of the store's root (scheme, bucket and prefix; no endpoint).
    pub(crate) base_url: String,
    pub(crate) keeps_attributes: bool,
    pub(crate) part_size: usize,
    pub(crate) max_concurrent_parts: usize,
    /// The same store without an fsync of every write ([`Store::unsynced`]), when that
    /// makes a difference (the local filesystem).
    pub(crate) unsynced: Option<Arc<StoreInner>>,
    /// The directory of a local filesystem store.
    pub(crate) local_root: Option<std::path::PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Store")
            .field("location", &self.inner.description)
            .field("part_size", &self.inner.part_size)
            .field("max_concurrent_parts", &self.inner.max_concurrent_parts)
            .finish()
    }
}

/// What the store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object's key (without the store's prefix).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
    /// The backend's entity tag, when it has one.
    pub e_tag: Option<String>,
    /// The backend's version id, when versioning is on.
    pub version: Option<String>,
}

impl ObjectInfo {
    fn from_meta(meta: ObjectMeta) -> Self {
        Self {
            key: meta.location.to_string(),
            size: meta.size,
            last_modified: SystemTime::from(meta.last_modified),
            e_tag: meta.e_tag,
            version: meta.version,
        }
    }
}

/// Optional attributes stored with an object: its content type and user metadata.
///
/// S3, GCS and Azure keep them; the local filesystem does not, and drops them
/// ([`Store::keeps_attributes`] says which).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectAttributes {
    /// The MIME type (`Content-Type`).
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*` on S3). Names are best kept lowercase ASCII: S3
    /// lowercases them.
    pub metadata: BTreeMap<String, String>,
}

impl ObjectAttributes {
    /// Attributes with only a content type.
    pub fn content_type(content_type: impl Into<String>) -> Self {
        Self {
            content_type: Some(content_type.into()),
            metadata: BTreeMap::new(),
        }
    }

    /// Adds a user metadata entry.
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    pub(crate) fn to_backend(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(content_type) = &self.content_type {
            attributes.insert(
                Attribute::ContentType,
                AttributeValue::from(content_type.clone()),
            );
        }
        for (name, value) in &self.metadata {
            attributes.insert(
                Attribute::Metadata(name.clone().into()),
                AttributeValue::from(value.clone()),
            );
        }
        attributes
    }

    fn from_backend(attributes: &Attributes) -> Self {
        let mut result = Self::default();
        for (attribute, value) in attributes {
            match attribute {
                Attribute::ContentType => result.content_type = Some(value.to_string()),
                Attribute::Metadata(name) => {
                    result.metadata.insert(name.to_string(), value.to_string());
                }
                _ => {}
            }
        }
        result
    }
}

/// The result of a completed write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// The key written (without the store's prefix).
    pub key: String,
    /// How many bytes the object has.
    pub size: u64,
    /// The backend's entity tag, when it has one.
    pub e_tag: Option<String>,
    /// The backend's version id, when versioning is on.
    pub version: Option<String>,
    /// How many parts a multipart upload sent; 0 when the object went as a single PUT.
    pub parts: usize,
}

/// The body of an object being read: a stream of `Bytes` chunks, with the object's
/// metadata and attributes known before the first chunk.
pub struct ObjectBody {
    info: ObjectInfo,
    attributes: ObjectAttributes,
    range: Range<u64>,
    stream: BoxStream<'static, Result<Bytes>>,
}

impl ObjectBody {
    /// The object's metadata (its whole size, also for a range read).
    pub fn info(&self) -> &ObjectInfo {
        &self.info
    }

    /// The object's attributes (empty on the local filesystem).
    pub fn attributes(&self) -> &ObjectAttributes {
        &self.attributes
    }

    /// The byte range of the object this body holds.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Reads the whole body into memory: for small objects only.
    pub async fn bytes(self) -> Result<Bytes> {
        let chunks: Vec<Bytes> = self.stream.try_collect().await?;
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(chunks.concat()),
        })
    }

    /// The body as a plain stream of chunks.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        self.stream
    }
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ObjectBody")
            .field("info", &self.info)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Stream for ObjectBody {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.poll_next_unpin(context)
    }
}

/// Parses a key the caller gave into a backend path.
pub(crate) fn object_path(key: &str) -> Result<ObjectPath> {
    let invalid = |reason: String| StoreError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() || key.ends_with('/') || key.starts_with('/') {
        return Err(invalid(
            "a key is a non-empty name without leading or trailing '/'".to_owned(),
        ));
    }
    ObjectPath::parse(key).map_err(|error| invalid(error.to_string()))
}

impl Store {
    /// Opens the store a configuration names. No request is made: a wrong bucket or
    /// credential shows up on the first operation. For the local filesystem the
    /// directory is created if it does not exist.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        config.validate()?;
        let description = config.describe();
        let configure = |error: object_store::Error| {
            StoreError::Config(format!("object store {description}: {error}"))
        };
        let mut unsynced_backend: Option<Arc<dyn ObjectStore>> = None;
        let (backend, keeps_attributes): (Arc<dyn ObjectStore>, bool) = match &config.backend {
            Backend::LocalFileSystem { root } => {
                std::fs::create_dir_all(root).map_err(|error| {
                    StoreError::Config(format!(
                        "cannot create the object directory {}: {error}",
                        root.display()
                    ))
                })?;
                let local = |fsync| {
                    object_store::local::LocalFileSystem::new_with_prefix(root)
                        .map(|local| local.with_fsync(fsync).with_automatic_cleanup(true))
                        .map_err(configure)
                };
                unsynced_backend = Some(Arc::new(local(false)?));
                (Arc::new(local(true)?), false)
            }
            Backend::S3(s3) => (
                with_prefix(open_s3(s3).map_err(configure)?, &s3.prefix),
                true,
            ),
            Backend::Gcs { bucket, prefix } => {
                let gcs = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(configure)?;
                (with_prefix(Arc::new(gcs), prefix), true)
            }
            Backend::Azure { container, prefix } => {
                let azure = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .build()
                    .map_err(configure)?;
                (with_prefix(Arc::new(azure), prefix), true)
            }
        };
        let inner = |backend, unsynced| StoreInner {
            backend,
            description: description.clone(),
            base_url: config.base_url(),
            keeps_attributes,
            part_size: config.part_size,
            max_concurrent_parts: config.max_concurrent_parts,
            unsynced,
            local_root: match &config.backend {
                Backend::LocalFileSystem { root } => Some(root.clone()),
                _ => None,
            },
        };
        let unsynced = unsynced_backend.map(|backend| Arc::new(inner(backend, None)));
        Ok(Self {
            inner: Arc::new(inner(backend, unsynced)),
        })
    }

    /// The same store, with writes that return before they are on disk: on the local
    /// filesystem, objects written through the handle returned are not fsynced (the
    /// default handle fsyncs each file and its directory before a write returns, which
    /// costs more than the write itself); other backends are the same either way. For
    /// objects whose loss or truncation in a crash of the machine (not of the process)
    /// within the kernel's writeback delay (about 30 s) is acceptable: the archive,
    /// written after the answer, not the documents that records reference.
    pub fn unsynced(&self) -> Self {
        Self {
            inner: self
                .inner
                .unsynced
                .clone()
                .unwrap_or_else(|| self.inner.clone()),
        }
    }

    /// Deletes what interrupted uploads left under `prefix` and not written to for
    /// `min_age`; returns how many files. On a local directory a multipart upload writes
    /// a staging file (`{key}#{n}`) that becomes the object when the upload completes;
    /// a process killed mid-upload leaves it behind, and listings never show it, so the
    /// retention sweeps cannot see it either. An upload in progress writes to its file
    /// continually, so `min_age` (an hour, say) keeps it safe. Other backends have
    /// nothing here to delete (on S3 a lifecycle rule aborts incomplete multipart
    /// uploads: docs/operations.md).
    pub async fn remove_interrupted_uploads(
        &self,
        prefix: &str,
        min_age: std::time::Duration,
    ) -> Result<usize> {
        let Some(root) = self.inner.local_root.clone() else {
            return Ok(0);
        };
        let start = root.join(prefix.trim_matches('/'));
        tokio::task::spawn_blocking(move || remove_staging_files(&start, min_age))
            .await
            .map_err(|error| StoreError::Io(std::io::Error::other(error.to_string())))?
    }

    /// Whether the objects are in a local directory.
    pub fn is_local_directory(&self) -> bool {
        self.inner.local_root.is_some()
    }

    /// Where the objects are, for logs (no credentials).
    pub fn location(&self) -> &str {
        &self.inner.description
    }

    /// The URL of the object under `key` (`s3://bucket/prefix/key`, `file:///root/key`):
    /// what a record that references it carries, readable by any client of the store.
    pub fn object_url(&self, key: &str) -> String {
        format!("{}/{key}", self.inner.base_url.trim_end_matches('/'))
    }

    /// The key of an object given by its [`Store::object_url`], when the URL is inside
    /// this store.
    pub fn key_of_url<'u>(&self, url: &'u str) -> Option<&'u str> {
        let base = self.inner.base_url.trim_end_matches('/');
        url.strip_prefix(base)?
            .strip_prefix('/')
            .filter(|key| !key.is_empty())
    }

    /// Whether the backend keeps [`ObjectAttributes`] (the local filesystem does not).
    pub fn keeps_attributes(&self) -> bool {
        self.inner.keeps_attributes
    }

    /// The part size of multipart uploads.
    pub fn part_size(&self) -> usize {
        self.inner.part_size
    }

    /// The most bytes one [`Upload`] holds: `part_size × (1 + max_concurrent_parts)`.
    pub fn upload_memory_bound(&self) -> usize {
        upload_memory_bound(self.inner.part_size, self.inner.max_concurrent_parts)
    }

    /// Starts a streaming upload to `key`. Nothing is visible under `key` until
    /// [`Upload::complete`] returns; see [`Upload`] for the memory bound.
    pub fn upload(&self, key: &str, attributes: ObjectAttributes) -> Result<Upload> {
        let path = object_path(key)?;
        Ok(Upload::new(
            Arc::clone(&self.inner),
            key.to_owned(),
            path,
            self.backend_attributes(&attributes),
        ))
    }

    /// Stores a small object with one PUT, replacing any object under `key`.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<StoredObject> {
        self.put_with_attributes(key, body, ObjectAttributes::default())
            .await
    }

    /// Stores a small object with one PUT and the given attributes.
    pub async fn put_with_attributes(
        &self,
        key: &str,
        body: Bytes,
        attributes: ObjectAttributes,
    ) -> Result<StoredObject> {
        let path = object_path(key)?;
        let size = body.len() as u64;
        put_single(
            &self.inner,
            key,
            &path,
            PutPayload::from(body),
            size,
            self.backend_attributes(&attributes),
        )
        .await
    }

    /// Reads a whole object as a stream. A missing key is [`StoreError::NotFound`].
    pub async fn get(&self, key: &str) -> Result<ObjectBody> {
        self.get_with(key, GetOptions::default()).await
    }

    /// Reads the bytes `range` of an object (`start..end`, end exclusive). A range that
    /// goes past the end of the object is cut at the end; one that starts past it fails.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<ObjectBody> {
        if range.start >= range.end {
            return Err(StoreError::InvalidKey {
                key: key.to_owned(),
                reason: format!("empty byte range {range:?}"),
            });
        }
        self.get_with(
            key,
            GetOptions::default().with_range(Some(GetRange::Bounded(range))),
        )
        .await
    }

    async fn get_with(&self, key: &str, options: GetOptions) -> Result<ObjectBody> {
        let path = object_path(key)?;
        let result = self
            .inner
            .backend
            .get_opts(&path, options)
            .await
            .map_err(|error| StoreError::from_backend("get", key, error))?;
        let info = ObjectInfo {
            key: key.to_owned(),
            ..ObjectInfo::from_meta(result.meta.clone())
        };
        let attributes = ObjectAttributes::from_backend(&result.attributes);
        let range = result.range.clone();
        let key = key.to_owned();
        let stream = result
            .into_stream()
            .map_err(move |error| StoreError::from_backend("get", &key, error))
            .boxed();
        Ok(ObjectBody {
            info,
            attributes,
            range,
            stream,
        })
    }

    /// The metadata of an object. A missing key is [`StoreError::NotFound`].
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = object_path(key)?;
        let meta = self
            .inner
            .backend
            .head(&path)
            .await
            .map_err(|error| StoreError::from_backend("head", key, error))?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            ..ObjectInfo::from_meta(meta)
        })
    }

    /// Deletes an object. Deleting a key that does not exist is not an error (S3 does
    /// not tell the two apart, so no backend does here).
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = object_path(key)?;
        match self.inner.backend.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(StoreError::from_backend("delete", key, error)),
        }
    }

    /// Lists the objects under `prefix`, in no particular order. The prefix is matched by
    /// whole path segments: `inbound/2024` lists `inbound/2024/...`, not `inbound/2024x`;
    /// an empty prefix lists everything.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            match object_path(trimmed) {
                Ok(path) => Some(path),
                Err(error) => return futures::stream::once(async { Err(error) }).boxed(),
            }
        };
        let prefix = prefix.to_owned();
        self.inner
            .backend
            .list(path.as_ref())
            .map_ok(ObjectInfo::from_meta)
            .map_err(move |error| StoreError::from_backend("list", &prefix, error))
            .boxed()
    }

    /// The next level of "directories" under `prefix`: the distinct key prefixes one
    /// segment deeper (`archive/` gives `archive/keep-365`, `archive/index`), without
    /// listing the objects below them.
    pub async fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            Some(object_path(trimmed)?)
        };
        let listed = self
            .inner
            .backend
            .list_with_delimiter(path.as_ref())
            .await
            .map_err(|error| StoreError::from_backend("list", prefix, error))?;
        Ok(listed
            .common_prefixes
            .iter()
            .map(|path| path.as_ref().to_owned())
            .collect())
    }

    /// The attributes to hand to the backend: none for the local filesystem, which
    /// refuses them.
    fn backend_attributes(&self, attributes: &ObjectAttributes) -> Attributes {
        if self.inner.keeps_attributes {
            attributes.to_backend()
        } else {
            Attributes::new()
        }
    }
}

/// Stores `payload` under `path` with one PUT.
pub(crate) async fn put_single(
    inner: &StoreInner,
    key: &str,
    path: &ObjectPath,
    payload: PutPayload,
    size: u64,
    attributes: Attributes,
) -> Result<StoredObject> {
    let options = PutOptions {
        attributes,
        ..PutOptions::default()
    };
    let result = inner
        .backend
        .put_opts(path, payload, options)
        .await
        .map_err(|error| StoreError::from_backend("put", key, error))?;
    Ok(StoredObject {
        key: key.to_owned(),
        size,
        e_tag: result.e_tag,
        version: result.version,
        parts: 0,
    })
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            store,
            ObjectPath::from(prefix),
        ))
    }
}

fn open_s3(s3: &S3Config) -> object_store::Result<Arc<dyn ObjectStore>> {
    // Only what is set overrides the AWS_* environment.
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&s3.bucket);
    if s3.allow_http {
        builder = builder.with_allow_http(true);
    }
    if s3.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(access_key_id) = &s3.access_key_id {
        builder = builder.with_access_key_id(access_key_id.expose());
    }
    if let Some(secret_access_key) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret_access_key.expose());
    }
    if let Some(session_token) = &s3.session_token {
        builder = builder.with_token(session_token.expose());
    }
    if let Some(key_id) = &s3.sse_kms_key_id {
        builder = builder.with_sse_kms_encryption(key_id);
    }
    Ok(Arc::new(builder.build()?))
}

/// Deletes the staging files of interrupted uploads (`name#digits`) under `directory`
/// last modified at least `min_age` ago.
fn remove_staging_files(
    directory: &std::path::Path,
    min_age: std::time::Duration,
) -> Result<usize> {
    let mut removed = 0;
    let mut pending = vec![directory.to_path_buf()];
    while let Some(directory) = pending.pop() {
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(StoreError::Io(error)),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::Io)?;
            let file_type = entry.file_type().map_err(StoreError::Io)?;
            if file_type.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry.file_name();
            let is_staging = name
                .to_str()
                .and_then(|name| name.rsplit_once('#'))
                .is_some_and(|(_, suffix)| {
                    !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_digit())
                });
            let old_enough = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age >= min_age);
            if is_staging && old_enough {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(StoreError::Io(error)),
                }
            }
        }
    }
    Ok(removed)
}
