//! The chunk index: digest → where the chunk's record is stored.
//!
//! Behind a small sync trait so the engine can be swapped (Garage's `db` layer); the one
//! engine is RocksDB ([`RocksIndex`]). Calls block: run them on a blocking thread.

use bora_core::digest::Digest;

mod location;
mod rocks;

pub use location::{ChunkLocation, LOCATION_FORMAT_VERSION, LocationDecodeError};
pub use rocks::{RocksIndex, STORE_FORMAT_VERSION};

/// Exact counts of what the index holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Indexed chunks.
    pub chunks: u64,
    /// Record bytes (chunk header + payload) of the indexed chunks.
    pub record_bytes: u64,
}

/// A chunk index. Entries are never overwritten: the first location recorded for a digest
/// stays until it is removed.
pub trait ChunkIndex: Send + Sync {
    /// The location of each digest, in input order, in one batched lookup.
    fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<ChunkLocation>>, IndexError>;

    /// Records the entries whose digest is not indexed yet, in one durable (synced) write.
    /// Returns, per entry, whether it was inserted (false: the digest was already indexed,
    /// or appeared earlier in `entries`).
    fn insert_batch(&self, entries: &[(Digest, ChunkLocation)]) -> Result<Vec<bool>, IndexError>;

    /// What the index holds.
    fn stats(&self) -> Result<IndexStats, IndexError>;

    /// Up to `limit` indexed digests in ascending byte order, all greater than `after`
    /// (from the first digest when `None`).
    fn list_after(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<Digest>, IndexError>;
}

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("rocksdb {op}: {source}")]
    Rocks {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "chunk index format version {found} is newer than this build supports ({supported}); upgrade bora"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error("chunk index metadata {key:?} is unreadable: {reason}")]
    BadMeta { key: &'static str, reason: String },
    #[error("index entry of chunk {digest} is unreadable: {source}")]
    BadEntry {
        digest: Digest,
        #[source]
        source: LocationDecodeError,
    },
    #[error("chunk index key of {len} bytes is not a digest")]
    BadKey { len: usize },
    #[error("chunk index has no column family {0:?}")]
    MissingColumnFamily(&'static str),
}
