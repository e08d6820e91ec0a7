//! Running the backup of one disk: plan ranges, hand them to a worker, build the new index
//! on top of the parent's, store the index. The snapshot is committed by the caller once
//! every disk of the VM is done ([`crate::catalog::Catalog::commit`]).

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span};

use bora_core::Digest;
use bora_core::index::{DiskIndex, IndexError, chunk_count};
use bora_core::index_store::{IndexStoreError, load_index, store_index};
use bora_core::job::{RangeResult, RangeTask, RangeWorker, TaskError};
use bora_core::snapshot::{DiskSnapshot, DiskStats};
use bora_core::store::ChunkStore;

use crate::planner::{DEFAULT_RANGE_BYTES, split_disk};

/// Why a disk backup failed. Nothing is committed when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("vm {vm} disk {disk}: {source}")]
    Task {
        vm: String,
        disk: String,
        #[source]
        source: TaskError,
    },
    #[error("vm {vm} disk {disk}: parent index: {source}")]
    ParentIndex {
        vm: String,
        disk: String,
        #[source]
        source: IndexStoreError,
    },
    #[error("vm {vm} disk {disk}: storing the index: {source}")]
    StoreIndex {
        vm: String,
        disk: String,
        #[source]
        source: IndexStoreError,
    },
    #[error("vm {vm} disk {disk}: {source}")]
    Index {
        vm: String,
        disk: String,
        #[source]
        source: IndexError,
    },
    #[error(
        "vm {vm} disk {disk}: an incremental backup needs a parent snapshot with the same chunk size"
    )]
    NoParent { vm: String, disk: String },
    #[error(
        "vm {vm} disk {disk}: workers reported {reported} of {expected} chunks in a full backup"
    )]
    Incomplete {
        vm: String,
        disk: String,
        reported: usize,
        expected: u64,
    },
}

/// One disk to back up.
#[derive(Clone, Debug)]
pub struct DiskJob<'a> {
    pub job: String,
    pub vm: String,
    pub disk: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Where the data comes from, recorded for the operator.
    pub source: String,
    /// The same disk in the parent snapshot, if any.
    pub parent: Option<&'a DiskSnapshot>,
    /// Ranges handed out at once.
    pub concurrency: usize,
    /// Read only changed chunks (the source has a dirty bitmap that recorded every write
    /// since `parent`); clean chunks keep the parent's digests. Needs `parent`.
    pub incremental: bool,
}

/// Backs up one disk through `worker`, storing chunks and the index in `store`.
pub async fn backup_disk(
    store: &dyn ChunkStore,
    worker: &dyn RangeWorker,
    job: DiskJob<'_>,
) -> Result<DiskSnapshot, BackupError> {
    let span = info_span!("backup_disk", job = %job.job, vm = %job.vm, disk = %job.disk);
    async move {
        let (vm, disk) = (job.vm.clone(), job.disk.clone());
        let index_err = |source| BackupError::Index {
            vm: vm.clone(),
            disk: disk.clone(),
            source,
        };
        // The parent's index is the base the new one overlays; its chunk size must match.
        // An incremental without it would silently take zeros for every clean chunk.
        let parent = job.parent.filter(|p| p.index.chunk_size == job.chunk_size);
        if job.incremental && parent.is_none() {
            return Err(BackupError::NoParent { vm, disk });
        }
        let base =
            match parent {
                Some(p) => load_index(store, &p.index).await.map_err(|source| {
                    BackupError::ParentIndex {
                        vm: vm.clone(),
                        disk: disk.clone(),
                        source,
                    }
                })?,
                None => DiskIndex::zeroed(job.size, job.chunk_size).map_err(index_err)?,
            };
        let ranges = split_disk(job.size, job.chunk_size, DEFAULT_RANGE_BYTES);
        info!(size = job.size, ranges = ranges.len(), "planned");
        let cs = u64::from(job.chunk_size);
        let tasks = ranges.into_iter().map(|range| RangeTask {
            job: job.job.clone(),
            vm: vm.clone(),
            disk: disk.clone(),
            range,
            chunk_size: job.chunk_size,
            incremental: job.incremental,
            parent: if job.incremental {
                let first = (range.offset / cs) as usize;
                let n = range.length.div_ceil(cs) as usize;
                (first..first + n).map(|i| base.get(i)).collect()
            } else {
                Vec::new()
            },
        });
        let results: Vec<_> = futures::stream::iter(tasks)
            .map(|t| worker.backup_range(t))
            .buffer_unordered(job.concurrency.max(1))
            .try_collect()
            .await
            .map_err(|source| BackupError::Task {
                vm: vm.clone(),
                disk: disk.clone(),
                source,
            })?;

        finish_disk(
            store,
            Some(base),
            DiskOutcome {
                vm,
                disk,
                size: job.size,
                chunk_size: job.chunk_size,
                source: job.source,
                incremental: job.incremental,
            },
            results,
        )
        .await
    }
    .instrument(span)
    .await
}

/// A disk whose ranges are all backed up: what [`finish_disk`] records of it.
#[derive(Clone, Debug)]
pub struct DiskOutcome {
    pub vm: String,
    pub disk: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Where the data came from, recorded for the operator.
    pub source: String,
    /// The ranges reported only changed chunks (the base is the parent's index); when
    /// false every chunk must have been reported.
    pub incremental: bool,
}

/// Builds a disk's new index from its range results and stores it: every reported chunk
/// is laid over `base` (the parent's index; `None`: all zeros), a full backup must have
/// reported every chunk of the disk, and the index goes to `store` as pieces. Shared by
/// the embedded job runner ([`backup_disk`]) and the cluster coordinator's commit; the
/// caller's span names the job, VM and disk.
pub async fn finish_disk(
    store: &dyn ChunkStore,
    base: Option<DiskIndex>,
    disk: DiskOutcome,
    results: impl IntoIterator<Item = RangeResult>,
) -> Result<DiskSnapshot, BackupError> {
    let DiskOutcome {
        vm,
        disk,
        size,
        chunk_size,
        source,
        incremental,
    } = disk;
    let index_err = |source| BackupError::Index {
        vm: vm.clone(),
        disk: disk.clone(),
        source,
    };
    let base = match base {
        Some(b) => b,
        None => DiskIndex::zeroed(size, chunk_size).map_err(index_err)?,
    };
    let mut stats = DiskStats::default();
    let mut changes: Vec<(usize, Option<Digest>)> = Vec::new();
    for r in results {
        stats.add(&r.stats);
        changes.extend(r.entries);
    }
    let expected = chunk_count(size, chunk_size);
    let distinct: HashSet<usize> = changes.iter().map(|(i, _)| *i).collect();
    stats.chunks_clean = expected.saturating_sub(distinct.len() as u64);
    // A full read reports every chunk; a gap would silently take the parent's data.
    if !incremental && distinct.len() as u64 != expected {
        return Err(BackupError::Incomplete {
            vm,
            disk,
            reported: distinct.len(),
            expected,
        });
    }
    let index = base.overlay(size, changes).map_err(index_err)?;
    let index_ref = store_index(store, &index)
        .await
        .map_err(|source| BackupError::StoreIndex {
            vm: vm.clone(),
            disk: disk.clone(),
            source,
        })?;
    info!(
        bytes_read = stats.bytes_read,
        bytes_uploaded = stats.bytes_uploaded,
        chunks_new = stats.chunks_new,
        chunks_reused = stats.chunks_reused,
        "disk done"
    );
    Ok(DiskSnapshot {
        disk,
        size,
        index: index_ref,
        source,
        stats,
        cbt: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::store::memory::MemoryChunkStore;

    const CS: u32 = 64 << 10;

    /// A worker that reports a digest for every chunk except those in `skip`.
    struct Fake {
        skip: Vec<usize>,
    }

    #[async_trait::async_trait]
    impl RangeWorker for Fake {
        async fn backup_range(&self, t: RangeTask) -> Result<RangeResult, TaskError> {
            let first = (t.range.offset / u64::from(CS)) as usize;
            let n = t.range.length.div_ceil(u64::from(CS)) as usize;
            let entries = (first..first + n)
                .filter(|i| !self.skip.contains(i))
                .map(|i| (i, (i % 2 == 0).then(|| Digest::of(&i.to_le_bytes()))))
                .collect();
            Ok(RangeResult {
                entries,
                ..Default::default()
            })
        }
    }

    fn job(size: u64) -> DiskJob<'static> {
        DiskJob {
            job: "j".into(),
            vm: "vm".into(),
            disk: "d".into(),
            size,
            chunk_size: CS,
            source: "test".into(),
            parent: None,
            concurrency: 2,
            incremental: false,
        }
    }

    #[tokio::test]
    async fn full_backup_builds_and_stores_the_index() {
        let store = MemoryChunkStore::default();
        let size = u64::from(CS) * 100 + 7;
        let snap = backup_disk(&store, &Fake { skip: vec![] }, job(size))
            .await
            .unwrap();
        let index = load_index(&store, &snap.index).await.unwrap();
        assert_eq!(index.len(), 101);
        assert_eq!(index.get(4), Some(Digest::of(&4usize.to_le_bytes())));
        assert_eq!(index.get(5), None);
    }

    /// An incremental reports only changed chunks; the others keep the parent's digests.
    #[tokio::test]
    async fn incremental_overlays_changed_chunks_on_the_parent() {
        let store = MemoryChunkStore::default();
        let size = u64::from(CS) * 10;
        let parent = backup_disk(&store, &Fake { skip: vec![] }, job(size))
            .await
            .unwrap();
        struct Changed;
        #[async_trait::async_trait]
        impl RangeWorker for Changed {
            async fn backup_range(&self, t: RangeTask) -> Result<RangeResult, TaskError> {
                assert!(t.incremental);
                Ok(RangeResult {
                    entries: vec![(3, Some(Digest::of(b"new"))), (4, None)],
                    ..Default::default()
                })
            }
        }
        let mut j = job(size);
        j.parent = Some(&parent);
        j.incremental = true;
        let snap = backup_disk(&store, &Changed, j).await.unwrap();
        assert_eq!(snap.stats.chunks_clean, 8);
        let old = load_index(&store, &parent.index).await.unwrap();
        let new = load_index(&store, &snap.index).await.unwrap();
        for i in 0..10 {
            match i {
                3 => assert_eq!(new.get(3), Some(Digest::of(b"new"))),
                4 => assert_eq!(new.get(4), None),
                _ => assert_eq!(new.get(i), old.get(i)),
            }
        }
        // Without a parent an incremental is refused.
        let mut j = job(size);
        j.incremental = true;
        assert!(matches!(
            backup_disk(&store, &Changed, j).await,
            Err(BackupError::NoParent { .. })
        ));
    }

    #[tokio::test]
    async fn a_chunk_missing_from_the_report_fails_the_backup() {
        let store = MemoryChunkStore::default();
        let err = backup_disk(&store, &Fake { skip: vec![3] }, job(u64::from(CS) * 10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackupError::Incomplete { reported: 9, .. }),
            "{err}"
        );
    }
}
