//! The one error type of the object store.

/// The cause a backend gave, boxed so that `object_store` stays out of this crate's API.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong with object storage.
///
/// [`StoreError::NotFound`] is its own variant so that callers can tell a missing object
/// (a lookup by a stale reference) from a store that is failing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The configuration cannot be used (unknown URL scheme, missing bucket, a part size
    /// below the backend's minimum, an option that does not apply to the backend).
    #[error("invalid object store configuration: {0}")]
    Config(String),

    /// A key that is not a valid object name (empty, empty segments, `.` or `..`).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why it was refused.
        reason: String,
    },

    /// No object has this key.
    #[error("object {key:?} not found")]
    NotFound {
        /// The key as given (without the store's prefix).
        key: String,
    },

    /// The backend refused or failed an operation (network, permissions, I/O).
    #[error("object store {operation} of {key:?} failed: {source}")]
    Backend {
        /// What was being done: `put`, `get`, `head`, `delete`, `list`, `upload`, ...
        operation: &'static str,
        /// The key or prefix it was done to (without the store's prefix).
        key: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },

    /// Reading or cleaning a local object directory failed.
    #[error("local object directory: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Maps an `object_store` error, turning its "not found" into [`StoreError::NotFound`].
    pub(crate) fn from_backend(
        operation: &'static str,
        key: &str,
        error: object_store::Error,
    ) -> Self {
        match error {
            object_store::Error::NotFound { .. } => StoreError::NotFound {
                key: key.to_owned(),
            },
            other => StoreError::Backend {
                operation,
                key: key.to_owned(),
                source: Box::new(other),
            },
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
