//! The backup pipeline of one block range: read → hash → (dedup query) → compress → upload.
//!
//! Stages overlap: reads and hashing run several chunks ahead on the blocking pool, batches
//! of hashed chunks ask the store which digests it lacks in one query, and only those are
//! compressed (in parallel) and uploaded as one pack. All-zero chunks are never uploaded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

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

/// Digests this job has already sent (or found stored), so a chunk repeated within a job
/// is uploaded once even when two batches ask the store at the same time.
#[derive(Default)]
pub struct SeenDigests(Mutex<HashSet<Digest>>);

impl SeenDigests {
    /// Marks `d` seen; true if it was not seen before.
    fn claim(&self, d: Digest) -> bool {
        self.0.lock().map(|mut s| s.insert(d)).unwrap_or(true)
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
    for h in batch {
        result.stats.bytes_read += h.bytes_read;
        match h.data {
            None => {
                result.stats.chunks_zero += 1;
                result.entries.push((h.index, None));
            }
            Some((digest, data)) => {
                result.entries.push((h.index, Some(digest)));
                if missing.contains(&digest) && seen.claim(digest) {
                    to_encode.push((digest, data));
                } else {
                    result.stats.chunks_reused += 1;
                }
            }
        }
    }
    if to_encode.is_empty() {
        progress.add(covered);
        return Ok(result);
    }
    let encoded: Vec<EncodedChunk> =
        futures::future::try_join_all(to_encode.into_iter().map(|(digest, data)| async move {
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
    progress.add(covered);
    Ok(result)
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
