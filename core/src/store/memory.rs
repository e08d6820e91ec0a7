//! An in-memory chunk store for unit tests of the roles that use one. Verifies on read
//! like the real store.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{ChunkStore, PutOutcome, StoreError};
use crate::chunk::{self, EncodedChunk};
use crate::digest::Digest;

#[derive(Default)]
pub struct MemoryChunkStore {
    chunks: Mutex<HashMap<Digest, Vec<u8>>>,
}

impl MemoryChunkStore {
    pub fn len(&self) -> usize {
        self.chunks.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces a stored record (to inject corruption in tests).
    pub fn tamper(&self, digest: &Digest, f: impl FnOnce(&mut Vec<u8>)) {
        if let Ok(mut c) = self.chunks.lock()
            && let Some(r) = c.get_mut(digest)
        {
            f(r);
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<Digest, Vec<u8>>>, StoreError> {
        self.chunks
            .lock()
            .map_err(|_| StoreError::Index("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl ChunkStore for MemoryChunkStore {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let c = self.lock()?;
        Ok(digests.iter().map(|d| !c.contains_key(d)).collect())
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        let mut c = self.lock()?;
        let mut out = PutOutcome::default();
        for ch in chunks {
            match c.entry(ch.digest) {
                std::collections::hash_map::Entry::Occupied(_) => out.chunks_existing += 1,
                std::collections::hash_map::Entry::Vacant(e) => {
                    out.chunks_new += 1;
                    out.bytes_written += ch.record.len() as u64;
                    e.insert(ch.record);
                }
            }
        }
        Ok(out)
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let record = self
            .lock()?
            .get(digest)
            .cloned()
            .ok_or(StoreError::NotFound(*digest))?;
        chunk::decode(digest, &record)
            .map(Bytes::from)
            .map_err(|source| StoreError::Corrupt {
                digest: *digest,
                location: "memory".into(),
                source: Box::new(source),
            })
    }
}
