//! In-memory sites and sources for the crate's tests, and a loopback listener.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bora_core::chunk::{self, EncodedChunk};
use bora_core::digest::Digest;
use bora_core::index::DiskIndex;
use bora_core::index_store::store_index;
use bora_core::snapshot::{DiskSnapshot, SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta};
use bora_core::store::memory::MemoryChunkStore;
use bora_core::store::{ChunkStore, StoreError};

use crate::error::SiteError;
use crate::receive::Site;
use crate::send::{Source, SourceError};

pub const CHUNK: u32 = 64 << 10;

/// A site (or source) in memory.
#[derive(Default)]
pub struct Mem {
    pub store: Arc<MemoryChunkStore>,
    pub snaps: Mutex<Vec<SnapshotMeta>>,
}

impl Mem {
    pub fn snaps(&self) -> Vec<SnapshotMeta> {
        self.snaps.lock().unwrap().clone()
    }

    /// Backs up `chunks` (one chunk of data per seed) as a new snapshot of `vm`.
    pub async fn backup(&self, vm: &str, seeds: &[u64]) -> SnapshotMeta {
        let mut index = DiskIndex::zeroed(CHUNK as u64 * seeds.len() as u64, CHUNK).unwrap();
        let mut new = Vec::new();
        for (i, s) in seeds.iter().enumerate() {
            let data = data(*s);
            let c = chunk::encode(&data, 1).unwrap();
            index.set(i, Some(c.digest));
            new.push(c);
        }
        self.store.put(new).await.unwrap();
        let r = store_index(self.store.as_ref(), &index).await.unwrap();
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT_VERSION,
            id: SnapshotId::random(),
            vm: vm.into(),
            time: bora_core::snapshot::now_rfc3339(),
            parent: None,
            disks: vec![DiskSnapshot {
                disk: "d0".into(),
                size: index.disk_size(),
                index: r,
                source: String::new(),
                stats: Default::default(),
                cbt: None,
            }],
        };
        self.snaps.lock().unwrap().push(meta.clone());
        meta
    }

    /// Every chunk of `meta`, read back and compared with what `backup` wrote.
    pub async fn restores(&self, meta: &SnapshotMeta, seeds: &[u64]) -> bool {
        let index = bora_core::index_store::load_index(self.store.as_ref(), &meta.disks[0].index)
            .await
            .unwrap();
        for (i, s) in seeds.iter().enumerate() {
            let Some(d) = index.get(i) else { return false };
            match self.store.read(&d).await {
                Ok(b) if b.as_ref() == data(*s).as_slice() => {}
                _ => return false,
            }
        }
        true
    }
}

/// A chunk of noise from `seed` (compressible by half, so records are zstd).
pub fn data(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..CHUNK as usize)
        .map(|i| {
            if i % 2 == 0 {
                return 0;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[async_trait]
impl Site for Mem {
    fn cluster(&self) -> String {
        "site-b".into()
    }
    async fn store(&self) -> Result<Arc<dyn ChunkStore>, SiteError> {
        Ok(self.store.clone())
    }
    async fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>, SiteError> {
        Ok(self.snaps().into_iter().map(|m| m.id).collect())
    }
    async fn commit(&self, meta: SnapshotMeta) -> Result<(), SiteError> {
        self.snaps.lock().unwrap().push(meta);
        Ok(())
    }
}

#[async_trait]
impl Source for Mem {
    async fn snapshots(&self) -> Result<Vec<SnapshotMeta>, SourceError> {
        Ok(self.snaps())
    }
    fn store(&self) -> Arc<dyn ChunkStore> {
        self.store.clone()
    }
    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        let mut record = None;
        self.store.tamper(digest, |r| record = Some(r.clone()));
        let record = record.ok_or(StoreError::NotFound(*digest))?;
        let h =
            chunk::ChunkHeader::parse(&record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(EncodedChunk {
            digest: *digest,
            raw_len: h.raw_len as u32,
            codec: h.codec,
            record,
        })
    }
}

/// Serves `site` on a loopback port with `tls` material (or plaintext) and `token`.
pub async fn serve(
    site: Arc<Mem>,
    tls: Option<&crate::certgen::Generated>,
    token: &str,
    dir: &std::path::Path,
) -> SocketAddr {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let tls = tls.map(|g| {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, &g.cert_pem).unwrap();
        std::fs::write(&k, &g.key_pem).unwrap();
        (c, k)
    });
    let bound = crate::listen::bind(&crate::listen::ListenConfig {
        listen: "127.0.0.1:0".into(),
        tls,
        tokens_file: tokens,
    })
    .await
    .unwrap();
    let addr = bound.local_addr();
    tokio::spawn(bound.serve(site, std::future::pending()));
    addr
}
