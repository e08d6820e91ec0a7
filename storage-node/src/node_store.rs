//! [`NodeStore`]: what a storage node serves beyond the [`ChunkStore`] contract — its
//! digests in order, chunks in their stored form, and counts. Repair and replication use
//! these; workers never need them, so they stay out of `bora_core`.

use async_trait::async_trait;
use bora_core::chunk::EncodedChunk;
use bora_core::digest::Digest;
use bora_core::store::{ChunkStore, StoreError};

/// One page of a node's digests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestPage {
    /// Ascending, all greater than the `after` asked for.
    pub digests: Vec<Digest>,
    /// No digest followed the last one, when the page was read.
    pub done: bool,
}

/// Exact counts of what a node holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Chunks indexed.
    pub chunks: u64,
    /// Record bytes (chunk header + payload) of those chunks.
    pub bytes_stored: u64,
    /// The node's id as it names itself over gRPC (empty in-process).
    pub node_id: String,
    /// The cluster it belongs to ("" if unnamed).
    pub cluster: String,
    /// The node's process id (0 in-process): a new one means the node restarted.
    pub pid: u32,
}

/// A storage node's chunk store, as the gRPC service serves it.
#[async_trait]
pub trait NodeStore: ChunkStore {
    /// Up to `limit` stored digests in ascending byte order, all greater than `after` (from
    /// the first when `None`).
    async fn list_digests(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<DigestPage, StoreError>;

    /// One chunk as stored (header + payload), verified against its digest first.
    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError>;

    /// What the store holds.
    async fn node_stats(&self) -> Result<NodeStats, StoreError>;
}
