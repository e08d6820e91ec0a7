//! The chunk store as the other roles see it: the storage node's service, in domain types.
//!
//! In the embedded default the worker calls the storage node through this trait in-process;
//! in a cluster the same trait is implemented by a gRPC client (see `proto/storage.proto`),
//! so the data path does not change shape when transport is added.

use async_trait::async_trait;
use bytes::Bytes;

use crate::chunk::{ChunkError, EncodedChunk};
use crate::digest::Digest;

/// What a `put` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Chunks that were not stored before this call.
    pub chunks_new: u64,
    /// Chunks that were already stored (the call was a no-op for them).
    pub chunks_existing: u64,
    /// Encoded bytes written for the new chunks.
    pub bytes_written: u64,
}

/// Why a chunk store request failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    NotFound(Digest),
    #[error("chunk {digest} failed verification ({location}): {source}")]
    Corrupt {
        digest: Digest,
        location: String,
        #[source]
        source: Box<ChunkError>,
    },
    #[error(
        "chunk {digest} is already stored with a different size ({existing} bytes, new {new} bytes)"
    )]
    SizeConflict {
        digest: Digest,
        existing: u64,
        new: u64,
    },
    #[error("chunk store index: {0}")]
    Index(String),
    #[error("chunk store backend: {0}")]
    Backend(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// A deduplicating chunk store.
#[async_trait]
pub trait ChunkStore: Send + Sync {
    /// For each digest, whether the store lacks it (same order as the input), in one batch.
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError>;

    /// Stores encoded chunks durably, then indexes them. Idempotent: a chunk already
    /// stored is left as it is. When this returns Ok every chunk is durable and readable.
    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError>;

    /// Reads one chunk and verifies it against its digest; returns the plaintext.
    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError>;
}

pub mod memory;
