//! Where pack objects live: a narrow trait over object storage, owned by the storage node.
//!
//! One implementation, [`ObjectStoreBackend`], covers every `object_store` backend (local
//! filesystem, in-memory, S3, ...). Every backend must pass [`testsuite::conformance`].
//!
//! Object names are `/`-separated relative paths (`ab/ab12....pack`); a name with an empty,
//! `.` or `..` segment is rejected as [`BackendError::InvalidName`].

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

mod objstore;
pub mod testsuite;

pub use objstore::ObjectStoreBackend;

/// Boxed source error of a backend failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("object {name} not found")]
    NotFound { name: String },
    #[error("range {}..{} of object {name} is past its end ({len} bytes)", range.start, range.end)]
    OutOfRange {
        name: String,
        range: Range<u64>,
        len: u64,
    },
    #[error("invalid range {}..{} for object {name}", range.start, range.end)]
    InvalidRange { name: String, range: Range<u64> },
    #[error("invalid object name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{op} {name} failed: {source}")]
    Other {
        op: &'static str,
        name: String,
        #[source]
        source: BoxError,
    },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// Storage for pack objects.
#[async_trait]
pub trait PackBackend: Send + Sync {
    /// Stores `data` under `name`, replacing any object of that name. Atomic (no reader ever
    /// sees a partial object) and durable when it returns Ok.
    async fn put(&self, name: &str, data: Bytes) -> Result<(), BackendError>;

    /// Reads exactly the bytes `range` of an object; a range that is empty or reaches past
    /// the end of the object is an error, never a short read.
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, BackendError>;

    /// Reads a whole object.
    async fn get(&self, name: &str) -> Result<Bytes, BackendError>;

    /// Deletes an object; deleting an object that does not exist is not an error.
    async fn delete(&self, name: &str) -> Result<(), BackendError>;

    /// Names of all objects whose name starts with `prefix` (a plain string prefix; `""`
    /// lists everything), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError>;
}
