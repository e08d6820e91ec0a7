//! Random access to a disk as it was at a snapshot, without restoring it: reads map to the
//! chunks they touch, which are fetched from the store (verified), cached, and counted.
//! All-zero chunks are never fetched. Used by `bora serve` (an NBD server over a snapshot)
//! and `bora files` (file systems read straight out of a snapshot).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use bora_core::Digest;
use bora_core::index::DiskIndex;
use bora_core::store::{ChunkStore, StoreError};

/// Why a read of a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read of {len} bytes at offset {offset} is past the end of the {size}-byte disk")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("chunk at disk offset {offset} (chunk {index}): {source}")]
    Chunk {
        offset: u64,
        index: usize,
        #[source]
        source: StoreError,
    },
}

/// Chunks of one read fetched at once.
const READ_PARALLEL: usize = 8;

/// Chunk contents kept in memory by default.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// How many chunks of `chunk_size` bytes [`DEFAULT_CACHE_BYTES`] holds (at least 8).
pub fn default_cache_chunks(chunk_size: u32) -> usize {
    (DEFAULT_CACHE_BYTES / u64::from(chunk_size.max(1))).max(8) as usize
}

/// A small least-recently-used cache of chunk contents.
struct Cache {
    capacity: usize,
    tick: u64,
    chunks: HashMap<usize, (Bytes, u64)>,
}

impl Cache {
    fn get(&mut self, i: usize) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        self.chunks.get_mut(&i).map(|(b, t)| {
            *t = tick;
            b.clone()
        })
    }

    fn put(&mut self, i: usize, b: Bytes) {
        if self.capacity == 0 {
            return;
        }
        while self.chunks.len() >= self.capacity {
            let oldest = self
                .chunks
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => self.chunks.remove(&k),
                None => break,
            };
        }
        self.tick += 1;
        self.chunks.insert(i, (b, self.tick));
    }
}

pub struct SnapshotReader {
    store: Arc<dyn ChunkStore>,
    index: Arc<DiskIndex>,
    cache: Mutex<Cache>,
    fetched: AtomicU64,
}

impl SnapshotReader {
    pub fn new(store: Arc<dyn ChunkStore>, index: Arc<DiskIndex>, cache_chunks: usize) -> Self {
        SnapshotReader {
            store,
            index,
            cache: Mutex::new(Cache {
                capacity: cache_chunks,
                tick: 0,
                chunks: HashMap::new(),
            }),
            fetched: AtomicU64::new(0),
        }
    }

    pub fn size(&self) -> u64 {
        self.index.disk_size()
    }

    pub fn index(&self) -> &DiskIndex {
        &self.index
    }

    /// Plaintext bytes of chunks fetched from the store so far (cache hits not counted).
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The digest of chunk `i`, `None` when it is all zeros.
    pub fn digest(&self, i: usize) -> Option<Digest> {
        self.index.get(i)
    }

    /// The contents of chunk `i`; `None` when it is all zeros (nothing fetched).
    pub async fn chunk(&self, i: usize) -> Result<Option<Bytes>, ReadError> {
        let Some(digest) = self.index.get(i) else {
            return Ok(None);
        };
        if let Some(b) = self.cache.lock().ok().and_then(|mut c| c.get(i)) {
            return Ok(Some(b));
        }
        let (offset, len) = self.index.chunk_extent(i);
        let data = self
            .store
            .read(&digest)
            .await
            .map_err(|source| ReadError::Chunk {
                offset,
                index: i,
                source,
            })?;
        if data.len() != len as usize {
            return Err(ReadError::Chunk {
                offset,
                index: i,
                source: StoreError::Invalid(format!(
                    "chunk is {} bytes, the index expects {len}",
                    data.len()
                )),
            });
        }
        self.fetched.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Ok(mut c) = self.cache.lock() {
            c.put(i, data.clone());
        }
        Ok(Some(data))
    }

    /// Reads `[offset, offset + len)`.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, ReadError> {
        let end = offset.checked_add(len as u64).filter(|e| *e <= self.size());
        let Some(end) = end else {
            return Err(ReadError::OutOfRange {
                offset,
                len: len as u64,
                size: self.size(),
            });
        };
        let cs = u64::from(self.index.chunk_size());
        let mut out = BytesMut::zeroed(len);
        if len == 0 {
            return Ok(out.freeze());
        }
        // The chunks of one read are fetched (and decoded, on the blocking pool) together.
        let first = offset / cs;
        let last = (end - 1) / cs;
        let mut chunks = futures::stream::iter(first..=last)
            .map(|i| async move { (i, self.chunk(i as usize).await) })
            .buffered(READ_PARALLEL);
        while let Some((i, data)) = chunks.next().await {
            let Some(data) = data? else { continue };
            let chunk_start = i * cs;
            let pos = offset.max(chunk_start);
            let part_end = end.min(chunk_start + cs);
            let from = (pos - chunk_start) as usize;
            let to = (part_end - chunk_start) as usize;
            let at = (pos - offset) as usize;
            out[at..at + (to - from)].copy_from_slice(&data[from..to]);
        }
        Ok(out.freeze())
    }

    /// A blocking `Read + Seek` view for parsers that want one (FAT, NTFS). Use it only on
    /// a thread where blocking is allowed (`tokio::task::spawn_blocking`), never on the
    /// async executor.
    pub fn blocking(self: &Arc<Self>, handle: tokio::runtime::Handle) -> BlockingReader {
        BlockingReader {
            inner: self.clone(),
            handle,
            pos: 0,
        }
    }
}

/// See [`SnapshotReader::blocking`].
pub struct BlockingReader {
    inner: Arc<SnapshotReader>,
    handle: tokio::runtime::Handle,
    pos: u64,
}

impl Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.inner.size().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let data = self
            .handle
            .block_on(self.inner.read_at(self.pos, n))
            .map_err(std::io::Error::other)?;
        buf[..n].copy_from_slice(&data);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlockingReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.inner.size() as i128;
        let new = match to {
            SeekFrom::Start(o) => i128::from(o),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if new < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            ));
        }
        self.pos = u64::try_from(new).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::chunk;
    use bora_core::store::memory::MemoryChunkStore;

    const CS: u32 = 64 << 10;

    async fn setup() -> (Arc<MemoryChunkStore>, DiskIndex, Vec<u8>) {
        let store = Arc::new(MemoryChunkStore::default());
        let size = u64::from(CS) * 5 + 100;
        let mut disk = vec![0u8; size as usize];
        let mut idx = DiskIndex::zeroed(size, CS).unwrap();
        for i in [0usize, 2, 5] {
            let (off, len) = idx.chunk_extent(i);
            let data: Vec<u8> = (0..len).map(|b| (b as usize * 7 + i) as u8 | 1).collect();
            disk[off as usize..off as usize + len as usize].copy_from_slice(&data);
            let enc = chunk::encode(&data, 1).unwrap();
            idx.set(i, Some(enc.digest));
            store.put(vec![enc]).await.unwrap();
        }
        (store, idx, disk)
    }

    #[tokio::test]
    async fn reads_across_chunks_zeros_and_the_short_tail() {
        let (store, idx, disk) = setup().await;
        let r = SnapshotReader::new(store, Arc::new(idx), 2);
        for (off, len) in [
            (0u64, 10usize),
            (60_000, 140_000),
            (u64::from(CS) * 5, 100),
            (0, disk.len()),
        ] {
            let got = r.read_at(off, len).await.unwrap();
            assert_eq!(&got[..], &disk[off as usize..off as usize + len]);
        }
        assert!(r.read_at(disk.len() as u64 - 10, 11).await.is_err());
        // Zero chunks are never fetched; chunk 1 and 3 are zeros.
        let before = r.bytes_fetched();
        r.read_at(u64::from(CS), CS as usize).await.unwrap();
        assert_eq!(r.bytes_fetched(), before);
    }

    #[tokio::test]
    async fn cache_avoids_refetching() {
        let (store, idx, _) = setup().await;
        let r = SnapshotReader::new(store, Arc::new(idx), 4);
        r.read_at(0, 10).await.unwrap();
        r.read_at(100, 10).await.unwrap();
        assert_eq!(r.bytes_fetched(), u64::from(CS));
    }

    #[tokio::test]
    async fn corrupt_chunk_is_an_error_naming_the_offset() {
        let (store, idx, _) = setup().await;
        let d = idx.get(2).unwrap();
        store.tamper(&d, |rec| {
            let n = rec.len() - 1;
            rec[n] ^= 1;
        });
        let r = SnapshotReader::new(store, Arc::new(idx), 4);
        let e = r.read_at(u64::from(CS) * 2, 10).await.unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("offset {}", u64::from(CS) * 2)),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_view_reads_and_seeks() {
        let (store, idx, disk) = setup().await;
        let r = Arc::new(SnapshotReader::new(store, Arc::new(idx), 4));
        let mut b = r.blocking(tokio::runtime::Handle::current());
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; 300];
            b.seek(SeekFrom::Start(65_500)).unwrap();
            b.read_exact(&mut buf).unwrap();
            let mut tail = Vec::new();
            b.seek(SeekFrom::End(-50)).unwrap();
            b.read_to_end(&mut tail).unwrap();
            (buf, tail)
        })
        .await
        .unwrap();
        assert_eq!(&got.0[..], &disk[65_500..65_800]);
        assert_eq!(&got.1[..], &disk[disk.len() - 50..]);
    }
}
