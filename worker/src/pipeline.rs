//! The backup pipeline of one block range: read → hash → (dedup query) → compress → upload.
//!
//! Stages overlap: reads and hashing run several chunks ahead on the blocking pool, batches
//! of hashed chunks ask the store which digests it lacks in one query, and only those are
//! compressed (in parallel) and uploaded as one pack. All-zero chunks are never uploaded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, debug, info_span, warn};

use bora_core::ByteRange;
use bora_core::Digest;
use bora_core::blockmap::{ChunkPlan, Extent, ExtentKind, normalize, plan_chunks};
use bora_core::chunk::{self, EncodedChunk};
use bora_core::job::{RangeResult, RangeTask};
use bora_core::progress::Progress;
use bora_core::store::ChunkStore;

use crate::error::WorkerError;
use crate::source::BlockSource;

/// Tuning of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Chunks read and hashed ahead of the dedup stage.
    pub read_ahead: usize,
    /// Bytes of chunks per dedup query and per uploaded pack (each pack is fsynced, so
    /// fewer, larger packs cost less).
    pub batch_bytes: usize,
    /// Batches compressed/uploaded at once.
    pub uploads: usize,
    pub zstd_level: i32,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            read_ahead: 6,
            batch_bytes: 32 << 20,
            uploads: 2,
            zstd_level: chunk::DEFAULT_ZSTD_LEVEL,
        }
    }
}

/// A chunk after reading and hashing.
struct Hashed {
    index: usize,
    /// Disk bytes the chunk covers.
    len: u32,
    bytes_read: u64,
    /// `None` when the chunk is all zeros.
    data: Option<(Digest, Bytes)>,
}

/// Digests this job has stored, and those being sent now, so a chunk repeated within a
/// job is uploaded once even when two batches ask the store at the same time. A batch
/// that finds a digest being sent by another waits for that put; if the put fails or is
/// abandoned (its range's task stopped), the waiting batch sends the chunk itself. A
/// digest counts as stored only once a put of it succeeded, so a result never names a
/// chunk that no put stored.
#[derive(Default)]
pub struct SeenDigests(Mutex<HashMap<Digest, watch::Receiver<Option<bool>>>>);

/// What [`SeenDigests::claim`] found.
enum Claim {
    /// This batch sends it; the guard says how that went.
    Mine(Sending),
    /// A put of it succeeded.
    Stored,
    /// Another batch is sending it: `Some(true)` once stored, `Some(false)` (or a closed
    /// channel) if that failed.
    Pending(watch::Receiver<Option<bool>>),
}

/// A digest this batch sends. Dropped without [`Sending::stored`], it tells waiting
/// batches the put failed.
struct Sending(watch::Sender<Option<bool>>);

impl Sending {
    fn stored(self) {
        self.0.send_replace(Some(true));
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(false);
                return true;
            }
            false
        });
    }
}

impl SeenDigests {
    fn claim(&self, d: Digest) -> Claim {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = map.get(&d) {
            match *rx.borrow() {
                Some(true) => return Claim::Stored,
                None if rx.has_changed().is_ok() => return Claim::Pending(rx.clone()),
                // Failed or abandoned: this batch takes it over.
                _ => {}
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(d, rx);
        Claim::Mine(Sending(tx))
    }
}

/// Whether `data` is all zeros (compared 16 bytes at a time, which vectorises well).
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let (head, body) = data.split_at(data.len() % 16);
    head.iter().all(|b| *b == 0)
        && body
            .chunks_exact(16)
            .all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
}

/// How a chunk's bytes are obtained.
enum Fill {
    /// Read every allocated byte of the chunk from the source.
    Whole,
    /// Start from the parent snapshot's chunk (`None`: zeros) and read only the `dirty`
    /// parts (absolute `(offset, length)`) from the source.
    Patch {
        parent: Option<Digest>,
        dirty: Vec<(u64, u64)>,
    },
}

/// The overlap of two sorted lists of disjoint `(offset, length)` ranges.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        let (lo, hi) = (a0.max(b0), a1.min(b1));
        if lo < hi {
            out.push((lo, hi - lo));
        }
        if a1 <= b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Reads `parts` of the chunk at `base` into `buf` (zeros elsewhere stay as they are).
async fn read_parts(
    source: &dyn BlockSource,
    base: u64,
    parts: &[(u64, u64)],
    buf: &mut BytesMut,
) -> Result<(), WorkerError> {
    for &(off, len) in parts {
        let part = source.read(off, len as u32).await?;
        let at = (off - base) as usize;
        buf[at..at + part.len()].copy_from_slice(&part);
    }
    Ok(())
}

/// The parent's chunk with the dirty parts replaced by the source's current bytes, or
/// `None` when the parent's chunk cannot be used (then the whole chunk is read).
async fn patch(
    source: &dyn BlockSource,
    store: &dyn ChunkStore,
    plan: &ChunkPlan,
    parent: Option<Digest>,
    dirty: &[(u64, u64)],
) -> Result<Option<(Bytes, u64)>, WorkerError> {
    let mut buf = match parent {
        None => BytesMut::zeroed(plan.len as usize),
        Some(d) => match store.read(&d).await {
            Ok(b) if b.len() == plan.len as usize => BytesMut::from(&b[..]),
            Ok(_) => return Ok(None),
            Err(e) => {
                // Never build on a chunk that does not verify: read the source instead.
                warn!(chunk = plan.index, error = %e, "parent chunk unusable, reading the whole chunk");
                return Ok(None);
            }
        },
    };
    for &(off, len) in dirty {
        let at = (off - plan.offset) as usize;
        buf[at..at + len as usize].fill(0);
    }
    let changed = intersect(dirty, &plan.data);
    read_parts(source, plan.offset, &changed, &mut buf).await?;
    Ok(Some((buf.freeze(), changed.iter().map(|(_, l)| l).sum())))
}

async fn read_chunk(
    source: &dyn BlockSource,
    store: &dyn ChunkStore,
    plan: ChunkPlan,
    fill: Fill,
) -> Result<Hashed, WorkerError> {
    let patched = match &fill {
        Fill::Patch { parent, dirty } => patch(source, store, &plan, *parent, dirty).await?,
        Fill::Whole => None,
    };
    let (data, bytes_read) = match patched {
        Some(p) => p,
        None if plan.is_zero() => {
            return Ok(Hashed {
                index: plan.index,
                len: plan.len,
                bytes_read: 0,
                data: None,
            });
        }
        None if plan.data.len() == 1 && plan.data[0] == (plan.offset, u64::from(plan.len)) => {
            (source.read(plan.offset, plan.len).await?, plan.data_len())
        }
        None => {
            let mut buf = BytesMut::zeroed(plan.len as usize);
            read_parts(source, plan.offset, &plan.data, &mut buf).await?;
            (buf.freeze(), plan.data_len())
        }
    };
    let hashed = tokio::task::spawn_blocking(move || {
        if is_zero(&data) {
            None
        } else {
            Some((Digest::of(&data), data))
        }
    })
    .await
    .map_err(|e| WorkerError::Internal(e.to_string()))?;
    Ok(Hashed {
        index: plan.index,
        len: plan.len,
        bytes_read,
        data: hashed,
    })
}

/// Dedups, compresses and uploads one batch; returns its index entries and counters.
async fn store_batch(
    store: &dyn ChunkStore,
    seen: &SeenDigests,
    batch: Vec<Hashed>,
    level: i32,
    progress: &Progress,
) -> Result<RangeResult, WorkerError> {
    let mut result = RangeResult::default();
    let covered: u64 = batch.iter().map(|h| u64::from(h.len)).sum();
    let digests: Vec<Digest> = batch
        .iter()
        .filter_map(|h| h.data.as_ref().map(|(d, _)| *d))
        .collect();
    let missing: HashSet<Digest> = if digests.is_empty() {
        HashSet::new()
    } else {
        let flags = store.missing(&digests).await?;
        digests
            .iter()
            .zip(flags)
            .filter(|(_, m)| *m)
            .map(|(d, _)| *d)
            .collect()
    };
    let mut to_encode = Vec::new();
    let mut sending = Vec::new();
    let mut waits = Vec::new();
    for h in batch {
        result.stats.bytes_read += h.bytes_read;
        match h.data {
            None => {
                result.stats.chunks_zero += 1;
                result.entries.push((h.index, None));
            }
            Some((digest, data)) => {
                result.entries.push((h.index, Some(digest)));
                if !missing.contains(&digest) {
                    result.stats.chunks_reused += 1;
                    continue;
                }
                match seen.claim(digest) {
                    Claim::Mine(s) => {
                        to_encode.push((digest, data));
                        sending.push(s);
                    }
                    Claim::Stored => result.stats.chunks_reused += 1,
                    Claim::Pending(rx) => waits.push((digest, data, rx)),
                }
            }
        }
    }
    put_chunks(store, to_encode, level, &mut result).await?;
    for s in sending {
        s.stored();
    }
    // Chunks another batch was sending: reused once its put succeeded, else sent here.
    let mut again = Vec::new();
    for (digest, data, mut rx) in waits {
        match rx.wait_for(Option::is_some).await.map(|v| *v) {
            Ok(Some(true)) => result.stats.chunks_reused += 1,
            _ => again.push((digest, data)),
        }
    }
    put_chunks(store, again, level, &mut result).await?;
    progress.add(covered);
    Ok(result)
}

/// Compresses `chunks` (in parallel) and puts them as one pack; adds to `result`'s counts.
async fn put_chunks(
    store: &dyn ChunkStore,
    chunks: Vec<(Digest, Bytes)>,
    level: i32,
    result: &mut RangeResult,
) -> Result<(), WorkerError> {
    if chunks.is_empty() {
        return Ok(());
    }
    let encoded: Vec<EncodedChunk> =
        futures::future::try_join_all(chunks.into_iter().map(|(digest, data)| async move {
            tokio::task::spawn_blocking(move || chunk::encode_with_digest(digest, &data, level))
                .await
                .map_err(|e| WorkerError::Internal(e.to_string()))?
                .map_err(WorkerError::from)
        }))
        .await?;
    let outcome = store.put(encoded).await?;
    result.stats.chunks_new += outcome.chunks_new;
    result.stats.chunks_reused += outcome.chunks_existing;
    result.stats.bytes_uploaded += outcome.bytes_written;
    Ok(())
}

/// Backs up every chunk of `task.range`: the result has one entry per chunk.
pub async fn backup_range(
    source: &dyn BlockSource,
    store: &dyn ChunkStore,
    seen: &SeenDigests,
    task: &RangeTask,
    opts: &PipelineOptions,
    progress: &Progress,
) -> Result<RangeResult, WorkerError> {
    let span = info_span!("backup_range", job = %task.job, vm = %task.vm, disk = %task.disk, range = %task.range);
    async move {
        let extents = source.extents(task.range).await?;
        let plans = plan_chunks(&extents, task.range, source.size(), task.chunk_size)?;
        let work: Vec<(ChunkPlan, Fill)> = if task.incremental {
            let dirty = source
                .dirty(task.range)
                .await?
                .ok_or_else(|| WorkerError::NoChangedBlocks(source.name().to_string()))?;
            let dirty = dirty_parts(&dirty, task.range, task.chunk_size)?;
            let first = (task.range.offset / u64::from(task.chunk_size)) as usize;
            let before = plans.len();
            let work: Vec<_> = plans
                .into_iter()
                .filter_map(|p| {
                    let parts = dirty.get(&p.index)?.clone();
                    let fill = match task.parent.get(p.index - first) {
                        // Rebuild from the parent when less than half the chunk changed.
                        Some(parent)
                            if parts.iter().map(|(_, l)| l).sum::<u64>() * 2 < u64::from(p.len) =>
                        {
                            Fill::Patch {
                                parent: *parent,
                                dirty: parts,
                            }
                        }
                        _ => Fill::Whole,
                    };
                    Some((p, fill))
                })
                .collect();
            // Clean chunks are done: the parent's digests stand for them.
            let clean = before - work.len();
            progress.add(clean as u64 * u64::from(task.chunk_size));
            work
        } else {
            plans.into_iter().map(|p| (p, Fill::Whole)).collect()
        };
        debug!(chunks = work.len(), "planned chunks");
        let level = opts.zstd_level;
        let batch = (opts.batch_bytes / task.chunk_size.max(1) as usize).clamp(1, 256);
        let parts: Vec<RangeResult> = futures::stream::iter(work)
            .map(|(plan, fill)| read_chunk(source, store, plan, fill))
            .buffered(opts.read_ahead.max(1))
            .try_chunks(batch)
            .map_err(|e| e.1)
            .map_ok(|batch| store_batch(store, seen, batch, level, progress))
            .try_buffered(opts.uploads.max(1))
            .try_collect()
            .await?;
        let mut out = RangeResult::default();
        for p in parts {
            out.stats.add(&p.stats);
            out.entries.extend(p.entries);
        }
        Ok(out)
    }
    .instrument(span)
    .await
}

/// The dirty parts of each changed chunk of `range`: chunk number → absolute
/// `(offset, length)` parts, in order.
fn dirty_parts(
    dirty: &[Extent],
    range: ByteRange,
    chunk_size: u32,
) -> Result<HashMap<usize, Vec<(u64, u64)>>, WorkerError> {
    let cs = u64::from(chunk_size);
    let mut out: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    for e in normalize(dirty, range)? {
        if e.kind != ExtentKind::Data {
            continue;
        }
        let end = e.offset + e.length;
        let mut pos = e.offset;
        while pos < end {
            let i = pos / cs;
            let part_end = end.min((i + 1) * cs);
            out.entry(i as usize)
                .or_default()
                .push((pos, part_end - pos));
            pos = part_end;
        }
    }
    Ok(out)
}

/// Shares a source, a store and the job's seen-digests between range tasks.
pub struct SourceWorker {
    pub source: Arc<dyn BlockSource>,
    pub store: Arc<dyn ChunkStore>,
    pub seen: Arc<SeenDigests>,
    pub opts: PipelineOptions,
    pub progress: Arc<Progress>,
}

#[async_trait::async_trait]
impl bora_core::job::RangeWorker for SourceWorker {
    async fn backup_range(
        &self,
        task: RangeTask,
    ) -> Result<RangeResult, bora_core::job::TaskError> {
        backup_range(
            self.source.as_ref(),
            self.store.as_ref(),
            &self.seen,
            &task,
            &self.opts,
            &self.progress,
        )
        .await
        .map_err(|e| bora_core::job::TaskError(format!("range {}: {e}", task.range)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use bora_core::store::memory::MemoryChunkStore;
    use bora_core::store::{PutOutcome, StoreError};

    /// A memory store whose first `fail` puts fail.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryChunkStore,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl ChunkStore for Flaky {
        async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
            self.inner.missing(digests).await
        }
        async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
            let failing = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(StoreError::Backend("the disk is full".into()));
            }
            self.inner.put(chunks).await
        }
        async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
            self.inner.read(digest).await
        }
    }

    fn hashed(index: usize, byte: u8) -> Hashed {
        let data = Bytes::from(vec![byte; 4096]);
        Hashed {
            index,
            len: 4096,
            bytes_read: 4096,
            data: Some((Digest::of(&data), data)),
        }
    }

    /// Every digest a result names is in the store.
    async fn all_stored(store: &dyn ChunkStore, r: &RangeResult) {
        for (i, d) in &r.entries {
            if let Some(d) = d {
                store
                    .read(d)
                    .await
                    .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
            }
        }
    }

    #[tokio::test]
    async fn a_failed_put_leaves_its_chunks_to_the_next_batch() {
        let store = Flaky::default();
        let seen = SeenDigests::default();
        let progress = Progress::default();
        store.fail.store(1, Ordering::SeqCst);
        let e = store_batch(
            &store,
            &seen,
            vec![hashed(0, 1), hashed(1, 2)],
            1,
            &progress,
        )
        .await;
        assert!(e.is_err());
        // The range is tried again (same job, same worker): the chunks are sent, not taken
        // for sent.
        let r = store_batch(
            &store,
            &seen,
            vec![hashed(0, 1), hashed(1, 2)],
            1,
            &progress,
        )
        .await
        .unwrap();
        assert_eq!(r.stats.chunks_new, 2);
        all_stored(&store, &r).await;
        // Now they are stored: a third batch reuses them.
        let r = store_batch(&store, &seen, vec![hashed(5, 1)], 1, &progress)
            .await
            .unwrap();
        assert_eq!((r.stats.chunks_new, r.stats.chunks_reused), (0, 1));
    }

    #[tokio::test]
    async fn a_batch_waiting_for_anothers_chunk_sends_it_when_that_put_fails() {
        let store = Flaky::default();
        let seen = SeenDigests::default();
        let progress = Progress::default();
        // Batch A claims chunk X and stalls; batch B needs X too and waits for A.
        let Claim::Mine(a) = seen.claim(hashed(0, 7).data.unwrap().0) else {
            panic!("the first claim is the claimer's");
        };
        let b = store_batch(
            &store,
            &seen,
            vec![hashed(3, 7), hashed(4, 8)],
            1,
            &progress,
        );
        tokio::pin!(b);
        tokio::select! {
            _ = &mut b => panic!("B must wait for A's put"),
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
        // A is abandoned (its range's task stopped): B sends X itself.
        drop(a);
        let r = b.await.unwrap();
        assert_eq!(r.stats.chunks_new, 2);
        all_stored(&store, &r).await;
    }

    #[tokio::test]
    async fn the_same_chunk_in_concurrent_batches_is_sent_once() {
        let store = Flaky::default();
        let seen = SeenDigests::default();
        let progress = Progress::default();
        let (a, b) = tokio::join!(
            store_batch(
                &store,
                &seen,
                vec![hashed(0, 9), hashed(1, 10)],
                1,
                &progress
            ),
            store_batch(
                &store,
                &seen,
                vec![hashed(2, 9), hashed(3, 11)],
                1,
                &progress
            ),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.stats.chunks_new + b.stats.chunks_new, 3);
        all_stored(&store, &a).await;
        all_stored(&store, &b).await;
    }

    #[test]
    fn intersections() {
        assert_eq!(
            intersect(&[(0, 10), (20, 10)], &[(5, 20)]),
            vec![(5, 5), (20, 5)]
        );
        assert_eq!(intersect(&[(0, 10)], &[(10, 5)]), vec![]);
        assert_eq!(
            intersect(&[(0, 100)], &[(10, 5), (50, 5)]),
            vec![(10, 5), (50, 5)]
        );
        assert_eq!(intersect(&[], &[(0, 1)]), vec![]);
    }

    #[test]
    fn dirty_parts_split_at_chunks() {
        let e = |offset, length, kind| Extent {
            offset,
            length,
            kind,
        };
        let map = [
            e(0, 100, ExtentKind::Zero),
            e(100, 200, ExtentKind::Data),
            e(300, 700, ExtentKind::Zero),
        ];
        let parts = dirty_parts(
            &map,
            ByteRange {
                offset: 0,
                length: 1000,
            },
            256,
        )
        .unwrap();
        assert_eq!(parts[&0], vec![(100, 156)]);
        assert_eq!(parts[&1], vec![(256, 44)]);
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[1] = 1;
        assert!(!is_zero(&v));
    }
}
