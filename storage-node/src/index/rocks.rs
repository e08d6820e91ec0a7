//! [`ChunkIndex`] in RocksDB.
//!
//! Column families: `chunks` maps the 32 digest bytes to an encoded [`ChunkLocation`];
//! `meta` holds the store format version and exact counters, updated in the same write
//! batch as the entries they count.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use bora_core::digest::Digest;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBWithThreadMode,
    Options, SingleThreaded, WriteBatch, WriteOptions,
};

use super::{ChunkIndex, ChunkLocation, IndexError, IndexStats};

/// Version of the store's on-disk layout (index schema and pack format together).
pub const STORE_FORMAT_VERSION: u32 = 1;

const CF_CHUNKS: &str = "chunks";
const CF_META: &str = "meta";
const KEY_FORMAT: &str = "format-version";
const KEY_CHUNKS: &str = "chunk-count";
const KEY_BYTES: &str = "record-bytes";

fn rocks(op: &'static str) -> impl FnOnce(rocksdb::Error) -> IndexError {
    move |source| IndexError::Rocks { op, source }
}

/// The chunk index in a RocksDB database of its own.
pub struct RocksIndex {
    db: DBWithThreadMode<SingleThreaded>,
    /// Serialises inserts so "skip digests already present" cannot race.
    insert_lock: Mutex<()>,
}

impl std::fmt::Debug for RocksIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RocksIndex({})", self.db.path().display())
    }
}

fn cf_options() -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::None);
    opts
}

impl RocksIndex {
    /// Opens (creating if missing) the index at `path`. Refuses an index written by a newer
    /// format version.
    pub fn open(path: &Path) -> Result<RocksIndex, IndexError> {
        let mut db_opts = cf_options();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);

        // Digests are random, so most `missing` lookups of new chunks miss: bloom filters
        // answer those without reading data blocks.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let mut chunks_opts = cf_options();
        chunks_opts.set_block_based_table_factory(&table);

        let mut cfs = vec![
            ColumnFamilyDescriptor::new(CF_CHUNKS, chunks_opts),
            ColumnFamilyDescriptor::new(CF_META, cf_options()),
        ];
        // Open any column family a newer build added, so the version check below is what
        // refuses it, with a message that says so.
        let existing =
            DBWithThreadMode::<SingleThreaded>::list_cf(&db_opts, path).unwrap_or_default();
        for name in existing {
            if name != CF_CHUNKS && name != CF_META && name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME {
                cfs.push(ColumnFamilyDescriptor::new(name, cf_options()));
            }
        }
        let db =
            DBWithThreadMode::open_cf_descriptors(&db_opts, path, cfs).map_err(rocks("open"))?;
        let index = RocksIndex {
            db,
            insert_lock: Mutex::new(()),
        };
        index.check_format()?;
        Ok(index)
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, IndexError> {
        self.db
            .cf_handle(name)
            .ok_or(IndexError::MissingColumnFamily(name))
    }

    fn sync_write() -> WriteOptions {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        opts
    }

    fn check_format(&self) -> Result<(), IndexError> {
        let meta = self.cf(CF_META)?;
        match self
            .db
            .get_cf(meta, KEY_FORMAT)
            .map_err(rocks("read meta"))?
        {
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(meta, KEY_FORMAT, STORE_FORMAT_VERSION.to_le_bytes());
                self.db
                    .write_opt(batch, &Self::sync_write())
                    .map_err(rocks("write meta"))
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| IndexError::BadMeta {
                        key: KEY_FORMAT,
                        reason: format!("{} bytes, expected 4", v.len()),
                    })?;
                if found > STORE_FORMAT_VERSION {
                    return Err(IndexError::NewerFormat {
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
                if found == 0 {
                    return Err(IndexError::BadMeta {
                        key: KEY_FORMAT,
                        reason: "version 0 was never written by any build".into(),
                    });
                }
                Ok(())
            }
        }
    }

    fn counter(&self, key: &'static str) -> Result<u64, IndexError> {
        let meta = self.cf(CF_META)?;
        match self.db.get_cf(meta, key).map_err(rocks("read meta"))? {
            None => Ok(0),
            Some(v) => <[u8; 8]>::try_from(v.as_slice())
                .map(u64::from_le_bytes)
                .map_err(|_| IndexError::BadMeta {
                    key,
                    reason: format!("{} bytes, expected 8", v.len()),
                }),
        }
    }

    /// RocksDB's own estimate of the number of entries (cheap; for cross-checking).
    pub fn estimated_chunks(&self) -> Result<u64, IndexError> {
        let cf = self.cf(CF_CHUNKS)?;
        Ok(self
            .db
            .property_int_value_cf(cf, "rocksdb.estimate-num-keys")
            .map_err(rocks("read property"))?
            .unwrap_or(0))
    }
}

impl ChunkIndex for RocksIndex {
    fn get_many(&self, digests: &[Digest]) -> Result<Vec<Option<ChunkLocation>>, IndexError> {
        let cf = self.cf(CF_CHUNKS)?;
        let keys = digests.iter().map(|d| d.as_bytes());
        let values = self.db.batched_multi_get_cf(cf, keys, false);
        values
            .into_iter()
            .zip(digests)
            .map(|(value, digest)| match value.map_err(rocks("multi_get"))? {
                None => Ok(None),
                Some(v) => {
                    ChunkLocation::decode(&v)
                        .map(Some)
                        .map_err(|source| IndexError::BadEntry {
                            digest: *digest,
                            source,
                        })
                }
            })
            .collect()
    }

    fn insert_batch(&self, entries: &[(Digest, ChunkLocation)]) -> Result<Vec<bool>, IndexError> {
        // The guarded data is `()`, so a panic elsewhere cannot have left it inconsistent.
        let _guard = self.insert_lock.lock().unwrap_or_else(|e| e.into_inner());
        let digests: Vec<Digest> = entries.iter().map(|(d, _)| *d).collect();
        let present = self.get_many(&digests)?;
        let mut seen = HashSet::with_capacity(entries.len());
        let inserted: Vec<bool> = digests
            .iter()
            .zip(&present)
            .map(|(d, p)| p.is_none() && seen.insert(*d))
            .collect();
        if !inserted.contains(&true) {
            return Ok(inserted);
        }

        let (chunks_cf, meta) = (self.cf(CF_CHUNKS)?, self.cf(CF_META)?);
        let mut stats = self.stats()?;
        let mut batch = WriteBatch::default();
        for ((digest, location), _) in entries.iter().zip(&inserted).filter(|(_, new)| **new) {
            batch.put_cf(chunks_cf, digest.as_bytes(), location.encode());
            stats.chunks += 1;
            stats.record_bytes += u64::from(location.length);
        }
        batch.put_cf(meta, KEY_CHUNKS, stats.chunks.to_le_bytes());
        batch.put_cf(meta, KEY_BYTES, stats.record_bytes.to_le_bytes());
        self.db
            .write_opt(batch, &Self::sync_write())
            .map_err(rocks("write batch"))?;
        Ok(inserted)
    }

    fn stats(&self) -> Result<IndexStats, IndexError> {
        Ok(IndexStats {
            chunks: self.counter(KEY_CHUNKS)?,
            record_bytes: self.counter(KEY_BYTES)?,
        })
    }

    fn list_after(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<Digest>, IndexError> {
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut it = self.db.raw_iterator_cf(self.cf(CF_CHUNKS)?);
        match after {
            Some(d) => {
                it.seek(d.as_bytes());
                if it.key() == Some(d.as_bytes().as_slice()) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        while out.len() < limit {
            let Some(key) = it.key() else { break };
            out.push(Digest::from_slice(key).ok_or(IndexError::BadKey { len: key.len() })?);
            it.next();
        }
        it.status().map_err(rocks("iterate"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
