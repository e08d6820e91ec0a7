//! [`LocalChunkStore`]: the storage node's deduplicating chunk store.
//!
//! Layout under the store directory: `index/` (RocksDB, [`RocksIndex`]) and `packs/` (pack
//! objects, see [`crate::pack`]) — or any [`PackBackend`] via [`LocalChunkStore::open_with`].
//! A `put` writes all new records into one pack, durably, and only then indexes them in one
//! synced batch: a crash in between leaves an unreferenced pack (garbage), never an index
//! entry without data.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bora_core::chunk::{ChunkError, ChunkHeader, EncodedChunk, decode};
use bora_core::digest::Digest;
use bora_core::store::{ChunkStore, PutOutcome, StoreError};
use bytes::Bytes;

use crate::backend::{ObjectStoreBackend, PackBackend};
use crate::error::StorageError;
use crate::index::{ChunkIndex, ChunkLocation, IndexStats, RocksIndex};
use crate::node_store::{DigestPage, NodeStats, NodeStore};

mod put;

/// Runs blocking work (RocksDB, hashing, decompression) off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// A chunk store: RocksDB index over a pack backend.
#[derive(Clone)]
pub struct LocalChunkStore {
    index: Arc<dyn ChunkIndex>,
    backend: Arc<dyn PackBackend>,
    /// Decode and re-hash every new chunk on `put` (see [`LocalChunkStore::verify_puts`]).
    verify_puts: bool,
}

impl std::fmt::Debug for LocalChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalChunkStore")
    }
}

impl LocalChunkStore {
    /// Opens (creating if missing) the store in `dir`: `dir/index` and `dir/packs`.
    /// Blocks briefly (RocksDB opens and replays its log); call it at startup.
    pub fn open(dir: &Path) -> Result<LocalChunkStore, StorageError> {
        let packs = dir.join("packs");
        let backend =
            ObjectStoreBackend::local(&packs).map_err(|source| StorageError::OpenPacks {
                path: packs,
                source,
            })?;
        Self::open_with(&dir.join("index"), Arc::new(backend))
    }

    /// Opens the RocksDB index at `index_dir` over any pack backend.
    pub fn open_with(
        index_dir: &Path,
        backend: Arc<dyn PackBackend>,
    ) -> Result<LocalChunkStore, StorageError> {
        std::fs::create_dir_all(index_dir).map_err(|source| StorageError::CreateDir {
            path: index_dir.to_path_buf(),
            source,
        })?;
        let index = RocksIndex::open(index_dir).map_err(|source| StorageError::OpenIndex {
            path: index_dir.to_path_buf(),
            source,
        })?;
        Ok(Self::from_parts(Arc::new(index), backend))
    }

    /// A store over an index and a backend that are already open.
    pub fn from_parts(index: Arc<dyn ChunkIndex>, backend: Arc<dyn PackBackend>) -> Self {
        LocalChunkStore {
            index,
            backend,
            verify_puts: true,
        }
    }

    /// Whether `put` decodes and re-hashes every new chunk before storing it (default:
    /// yes). Keep it on wherever chunks arrive from another process (the gRPC service);
    /// the embedded default turns it off because its worker hashed the very bytes it
    /// encodes in the same process, and the check would double the CPU cost of a backup.
    /// Reads always verify.
    pub fn verify_puts(mut self, on: bool) -> Self {
        self.verify_puts = on;
        self
    }

    /// Exact counts of indexed chunks and their record bytes.
    pub async fn stats(&self) -> Result<IndexStats, StorageError> {
        let index = Arc::clone(&self.index);
        Ok(blocking(move || index.stats()).await??)
    }

    /// Number of chunks stored.
    pub async fn chunk_count(&self) -> Result<u64, StorageError> {
        Ok(self.stats().await?.chunks)
    }

    /// Encoded bytes (chunk headers + payloads) of the chunks stored; packs also hold
    /// garbage (lost races, interrupted puts) until GC, so disk use can be higher.
    pub async fn bytes_stored(&self) -> Result<u64, StorageError> {
        Ok(self.stats().await?.record_bytes)
    }

    /// The index entries of `digests`, in order.
    pub async fn locate_many(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<Option<ChunkLocation>>, StorageError> {
        let index = Arc::clone(&self.index);
        let digests = digests.to_vec();
        Ok(blocking(move || index.get_many(&digests)).await??)
    }

    /// Where one chunk is stored, if it is.
    pub async fn locate(&self, digest: &Digest) -> Result<Option<ChunkLocation>, StorageError> {
        Ok(self.locate_many(&[*digest]).await?.pop().flatten())
    }

    /// For each digest, whether the store lacks it; one batched index lookup.
    pub async fn missing_chunks(&self, digests: &[Digest]) -> Result<Vec<bool>, StorageError> {
        let found = self.locate_many(digests).await?;
        Ok(found.iter().map(Option::is_none).collect())
    }

    /// The record of one chunk, as its pack holds it (not verified yet).
    async fn fetch_record(&self, digest: &Digest) -> Result<(ChunkLocation, Bytes), StorageError> {
        let digest = *digest;
        let location = self
            .locate(&digest)
            .await?
            .ok_or(StorageError::NotFound(digest))?;
        let record = self
            .backend
            .get_range(&location.pack.object_name(), location.range())
            .await
            .map_err(|source| StorageError::PackUnreadable {
                digest,
                location: location.describe(),
                source,
            })?;
        Ok((location, record))
    }

    /// Reads one chunk, verifies it against its digest and returns the plaintext.
    pub async fn read_chunk(&self, digest: &Digest) -> Result<Bytes, StorageError> {
        let digest = *digest;
        let (location, record) = self.fetch_record(&digest).await?;
        let data = blocking(move || decode(&digest, &record)).await?;
        let data = data.map_err(|source| StorageError::Corrupt {
            digest,
            location: location.describe(),
            source: Box::new(source),
        })?;
        Ok(Bytes::from(data))
    }

    /// Reads one chunk in its stored form (header + payload) after verifying it against its
    /// digest: what repair copies to another node, without recompressing it.
    pub async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StorageError> {
        let digest = *digest;
        let (location, record) = self.fetch_record(&digest).await?;
        let chunk = blocking(move || {
            decode(&digest, &record)?;
            let header = ChunkHeader::parse(&record)?;
            let raw_len =
                u32::try_from(header.raw_len).map_err(|_| ChunkError::TooLarge(header.raw_len))?;
            Ok(EncodedChunk {
                digest,
                raw_len,
                codec: header.codec,
                record: Vec::from(record),
            })
        })
        .await?;
        chunk.map_err(|source: ChunkError| StorageError::Corrupt {
            digest,
            location: location.describe(),
            source: Box::new(source),
        })
    }

    /// Up to `limit` stored digests in ascending byte order, all greater than `after`.
    pub async fn list_digests(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<DigestPage, StorageError> {
        let index = Arc::clone(&self.index);
        // One more than asked says whether the page is the last.
        let mut digests =
            blocking(move || index.list_after(after.as_ref(), limit.saturating_add(1))).await??;
        let done = digests.len() <= limit;
        digests.truncate(limit);
        Ok(DigestPage { digests, done })
    }
}

#[async_trait]
impl ChunkStore for LocalChunkStore {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        Ok(self.missing_chunks(digests).await?)
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        Ok(self.put_chunks(chunks).await?)
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        Ok(self.read_chunk(digest).await?)
    }
}

#[async_trait]
impl NodeStore for LocalChunkStore {
    async fn list_digests(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<DigestPage, StoreError> {
        Ok(LocalChunkStore::list_digests(self, after, limit).await?)
    }

    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        Ok(LocalChunkStore::read_record(self, digest).await?)
    }

    async fn node_stats(&self) -> Result<NodeStats, StoreError> {
        let stats = self.stats().await?;
        Ok(NodeStats {
            chunks: stats.chunks,
            bytes_stored: stats.record_bytes,
            node_id: String::new(),
            cluster: String::new(),
            pid: 0,
        })
    }
}

#[cfg(test)]
mod tests;
