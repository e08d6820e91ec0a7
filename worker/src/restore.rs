//! Restoring a disk from its snapshot index: fetch chunks in parallel from the store
//! (each verified against its digest), write them at their offsets; all-zero chunks and
//! zero blocks inside chunks are left as holes on fresh targets.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span};

use bora_core::Digest;
use bora_core::index::DiskIndex;
use bora_core::progress::Progress;
use bora_core::store::{ChunkStore, StoreError};

mod file;
mod nbd_target;
mod target;

pub use target::{RestoreTarget, open_target};

use crate::pipeline::is_zero;
use target::DiskWriter;

/// Granularity at which zeros inside a chunk are left unwritten (holes stay holes).
const ZERO_BLOCK: usize = 4096;
/// Bytes of chunks fetched from the store ahead of the writes (at least 6 chunks).
const FETCH_AHEAD_BYTES: u64 = 8 << 20;

/// Why a restore failed. A partial output file is removed before this is returned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("chunk at disk offset {offset} (chunk {index}): {source}")]
    Chunk {
        digest: Digest,
        offset: u64,
        index: usize,
        #[source]
        source: StoreError,
    },
    #[error("reading the overlay at disk offset {offset}: {reason}")]
    Patch { offset: u64, reason: String },
    #[error("restore target {target}: {reason}")]
    Target { target: String, reason: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a restore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub bytes_written: u64,
    pub chunks_fetched: u64,
    pub chunks_zero: u64,
}

/// Local changes laid over the snapshot as it is restored (copy-back of the overlay a VM
/// wrote while running from the backup).
pub trait Patch: Send + Sync {
    /// Whether any byte of `[offset, offset + len)` is changed.
    fn touches(&self, offset: u64, len: u64) -> bool;
    /// Replaces the changed bytes of `buf`, which holds the disk from `offset`. Blocking.
    fn apply(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// Splits `data` at `base` into runs of non-zero [`ZERO_BLOCK`]s: `(offset, start, end)`.
fn nonzero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, block) in data.chunks(ZERO_BLOCK).enumerate() {
        let at = i * ZERO_BLOCK;
        match (is_zero(block), start) {
            (false, None) => start = Some(at),
            (true, Some(s)) => {
                runs.push((s, at));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        runs.push((s, data.len()));
    }
    runs
}

/// Writes the disk described by `index`, with `patch` laid over it, into `target`.
pub async fn restore_disk(
    store: Arc<dyn ChunkStore>,
    index: &DiskIndex,
    patch: Option<Arc<dyn Patch>>,
    target: Box<dyn DiskWriter>,
    progress: &Progress,
) -> Result<RestoreStats, RestoreError> {
    let span = info_span!("restore_disk", target = %target.name(), size = index.disk_size());
    let result = async {
        let fresh = target.is_fresh();
        let fetch_ahead =
            (FETCH_AHEAD_BYTES / u64::from(index.chunk_size().max(1))).clamp(6, 64) as usize;
        let mut stats = RestoreStats::default();
        let chunks = (0..index.len()).map(|i| (i, index.chunk_extent(i), index.get(i)));
        let fetched = futures::stream::iter(chunks)
            .map(|(i, (offset, len), digest)| {
                let store = store.clone();
                let patch = patch.clone().filter(|p| p.touches(offset, u64::from(len)));
                async move {
                    let Some(digest) = digest else {
                        return match patch {
                            None => Ok((offset, len, None)),
                            Some(p) => {
                                let zeros = vec![0u8; len as usize];
                                Ok((offset, len, Some(apply_patch(p, offset, zeros).await?)))
                            }
                        };
                    };
                    let data = store
                        .read(&digest)
                        .await
                        .map_err(|source| RestoreError::Chunk {
                            digest,
                            offset,
                            index: i,
                            source,
                        })?;
                    if data.len() != len as usize {
                        return Err(RestoreError::Chunk {
                            digest,
                            offset,
                            index: i,
                            source: StoreError::Invalid(format!(
                                "chunk is {} bytes, the index expects {len}",
                                data.len()
                            )),
                        });
                    }
                    let data = match patch {
                        None => data,
                        Some(p) => apply_patch(p, offset, data.to_vec()).await?,
                    };
                    Ok((offset, len, Some(data)))
                }
            })
            .buffered(fetch_ahead);
        // An NBD target takes several chunks at once (each write waits for a round trip).
        let target_ref: &dyn DiskWriter = &*target;
        let mut written = fetched
            .map_ok(|(offset, len, data)| write_chunk(target_ref, fresh, offset, len, data))
            .try_buffer_unordered(target.write_concurrency().max(1));
        while let Some((len, chunk)) = written.try_next().await? {
            progress.add(u64::from(len));
            match chunk {
                None => stats.chunks_zero += 1,
                Some(bytes) => {
                    stats.chunks_fetched += 1;
                    stats.bytes_written += bytes;
                }
            }
        }
        Ok(stats)
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(stats) => {
            target.finish().instrument(span).await?;
            info!(bytes_written = stats.bytes_written, "restored");
            Ok(stats)
        }
        Err(e) => {
            target.abort().await;
            Err(e)
        }
    }
}

/// Writes one chunk (`None`: all zeros) at `offset`: only its non-zero 4 KiB blocks on a
/// fresh target, zeros explicitly elsewhere. Returns the chunk's length and, for a chunk
/// with data, the bytes written.
async fn write_chunk(
    target: &dyn DiskWriter,
    fresh: bool,
    offset: u64,
    len: u32,
    data: Option<bytes::Bytes>,
) -> Result<(u32, Option<u64>), RestoreError> {
    let Some(data) = data else {
        if !fresh {
            target.write_zeroes(offset, len).await?;
        }
        return Ok((len, None));
    };
    let runs = nonzero_runs(&data);
    if !fresh {
        let mut pos = 0;
        for &(s, e) in &runs {
            if s > pos {
                target
                    .write_zeroes(offset + pos as u64, (s - pos) as u32)
                    .await?;
            }
            pos = e;
        }
        if pos < data.len() {
            target
                .write_zeroes(offset + pos as u64, (data.len() - pos) as u32)
                .await?;
        }
    }
    let mut bytes = 0;
    for (s, e) in runs {
        target.write_at(offset + s as u64, data.slice(s..e)).await?;
        bytes += (e - s) as u64;
    }
    Ok((len, Some(bytes)))
}

/// Lays `patch` over the chunk at disk offset `offset`.
async fn apply_patch(
    patch: Arc<dyn Patch>,
    offset: u64,
    mut data: Vec<u8>,
) -> Result<bytes::Bytes, RestoreError> {
    tokio::task::spawn_blocking(move || {
        patch
            .apply(offset, &mut data)
            .map(|()| bytes::Bytes::from(data))
    })
    .await
    .map_err(|e| RestoreError::Internal(format!("patch task failed: {e}")))?
    .map_err(|e| RestoreError::Patch {
        offset,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_zero_blocks() {
        let mut d = vec![0u8; ZERO_BLOCK * 5 + 100];
        d[ZERO_BLOCK + 3] = 1;
        d[ZERO_BLOCK * 5 + 50] = 1;
        assert_eq!(
            nonzero_runs(&d),
            vec![
                (ZERO_BLOCK, 2 * ZERO_BLOCK),
                (5 * ZERO_BLOCK, 5 * ZERO_BLOCK + 100)
            ]
        );
        assert!(nonzero_runs(&[0; 10]).is_empty());
    }
}
