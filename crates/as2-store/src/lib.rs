//! Object storage for the gateway: the large documents of claim-check records and the
//! archive of every message and MDN.
//!
//! # Why `object_store`
//!
//! The Apache Arrow project's [`object_store`] crate is one well-kept interface over the
//! local filesystem, S3-compatible stores (AWS S3, MinIO, Ceph, s3s), Google Cloud
//! Storage and Azure Blob Storage, with retries, request signing and multipart uploads.
//! This crate wraps it in the few operations the gateway needs ([`Store`]), one error
//! type ([`StoreError`], with "not found" kept apart) and one configuration block
//! ([`ObjectStoreArgs`], the `AS2_OBJECT_STORE_*` variables) that every service flattens.
//! The local filesystem (`file:///abs/dir`) is the quick start's embedded default; an
//! S3-compatible store (`s3://bucket/prefix`) is the production choice.
//!
//! `object_store` is built with its `*-base` backends, reqwest on OpenSSL (the TLS
//! library the gateway links anyway) and `ring` for request signing: its `aws`, `gcp`
//! and `azure` features would bring aws-lc-sys, whose build needs cmake.
//!
//! # Memory
//!
//! An [`Upload`] streams an object of any size in parts of `part_size` bytes (default
//! 8 MiB, at least 5 MiB for S3) with at most `max_concurrent_parts` parts in flight
//! (default 2), so one upload holds at most `part_size × (1 + max_concurrent_parts)`
//! bytes: 24 MiB with the defaults. [`Upload::buffered_bytes`] reports what it holds
//! now, for a byte budget across uploads. Objects smaller than one part are sent with a
//! single PUT; reads ([`Store::get`]) are streams of chunks.
//!
//! ```no_run
//! # async fn example() -> Result<(), as2_store::StoreError> {
//! use as2_store::{ObjectAttributes, Store, StoreConfig};
//!
//! let store = Store::open(&StoreConfig::from_url("file:///var/lib/as2/objects")?)?;
//! let mut upload = store.upload("inbound/msg-1", ObjectAttributes::content_type("application/edi-x12"))?;
//! upload.write(b"ISA*00*...").await?;
//! let stored = upload.complete().await?;
//! let body = store.get(&stored.key).await?.bytes().await?;
//! # drop(body);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod archive;
mod config;
mod error;
pub mod keys;
mod store;
mod upload;

pub use config::{
    Backend, DEFAULT_MAX_CONCURRENT_PARTS, DEFAULT_PART_SIZE, ObjectStoreArgs, S3_MAX_PART_SIZE,
    S3_MIN_PART_SIZE, S3Config, Secret, StoreConfig,
};
pub use error::{BackendError, Result, StoreError};
pub use store::{ObjectAttributes, ObjectBody, ObjectInfo, Store, StoredObject};
pub use upload::Upload;
