//! One leased range: the lease checked, the disk's source opened (or found open), the
//! range read through the backup pipeline into the chunk store, and the result (or the
//! error) reported to the coordinator that granted the lease.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use bora_core::index::check_chunk_size;
use bora_core::job::{RangeResult, RangeTask, RangeWorker};
use bora_core::progress::Progress;
use bora_core::snapshot::check_name;
use bora_core::{ByteRange, Digest};
use bora_proto::coordinator::{ChunkEntry, CompleteRangeRequest, FailRangeRequest, RangeLease};

use super::Context;
use super::coordinators::{Client, leader_addr, unreachable};
use crate::pipeline::{PipelineOptions, SourceWorker};

/// How long a result or failure is retried while its coordinator is unreachable.
const REPORT_PATIENCE: Duration = Duration::from_secs(60);

/// A lease as the worker works on it, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LeasedRange {
    pub(super) lease: u64,
    pub(super) job: String,
    pub(super) vm: String,
    pub(super) disk: String,
    pub(super) source: String,
    pub(super) disk_size: u64,
    pub(super) range: ByteRange,
    pub(super) chunk_size: u32,
    /// Incremental: the source's dirty bitmap, and the parent's digest of every chunk of
    /// the range (`None`: zeros).
    pub(super) bitmap: Option<String>,
    pub(super) parent: Vec<Option<Digest>>,
}

impl TryFrom<RangeLease> for LeasedRange {
    type Error = String;

    fn try_from(l: RangeLease) -> Result<LeasedRange, String> {
        let what = format!("lease {}", l.lease_id);
        if l.job.is_empty() {
            return Err(format!("{what}: no job"));
        }
        check_name("vm", &l.vm).map_err(|e| format!("{what}: {e}"))?;
        check_name("disk", &l.disk).map_err(|e| format!("{what}: {e}"))?;
        check_chunk_size(l.chunk_size).map_err(|e| format!("{what}: {e}"))?;
        if l.source.is_empty() {
            return Err(format!("{what}: no source"));
        }
        let end = l.offset.checked_add(l.length);
        if l.length == 0
            || !l.offset.is_multiple_of(u64::from(l.chunk_size))
            || end.is_none_or(|e| e > l.disk_size)
        {
            return Err(format!(
                "{what}: range {}+{} is not a chunk-aligned part of a {}-byte disk",
                l.offset, l.length, l.disk_size
            ));
        }
        let chunks = l.length.div_ceil(u64::from(l.chunk_size));
        let bitmap = (!l.bitmap.is_empty()).then_some(l.bitmap);
        if bitmap.is_some() && l.parent.len() as u64 != chunks {
            return Err(format!(
                "{what}: an incremental range of {chunks} chunks came with {} parent digests",
                l.parent.len()
            ));
        }
        let parent = l
            .parent
            .iter()
            .map(|d| {
                if d.is_empty() {
                    Ok(None)
                } else {
                    Digest::from_slice(d)
                        .map(Some)
                        .ok_or_else(|| format!("{what}: a parent digest of {} bytes", d.len()))
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(LeasedRange {
            bitmap,
            parent,
            lease: l.lease_id,
            job: l.job,
            vm: l.vm,
            disk: l.disk,
            source: l.source,
            disk_size: l.disk_size,
            range: ByteRange {
                offset: l.offset,
                length: l.length,
            },
            chunk_size: l.chunk_size,
        })
    }
}

fn completion(worker: &str, lease: u64, r: RangeResult) -> CompleteRangeRequest {
    CompleteRangeRequest {
        lease_id: lease,
        worker: worker.to_string(),
        entries: r
            .entries
            .into_iter()
            .map(|(index, digest)| ChunkEntry {
                index: index as u64,
                digest: digest.map_or_else(Bytes::new, |d| Bytes::copy_from_slice(d.as_bytes())),
            })
            .collect(),
        bytes_read: r.stats.bytes_read,
        bytes_uploaded: r.stats.bytes_uploaded,
        chunks_new: r.stats.chunks_new,
        chunks_reused: r.stats.chunks_reused,
        chunks_zero: r.stats.chunks_zero,
    }
}

/// Removes the lease from the worker's active leases when its work ends, however it ends
/// (an abort included).
struct Active {
    ctx: Arc<Context>,
    key: (usize, u64),
}

impl Drop for Active {
    fn drop(&mut self) {
        self.ctx.forget_lease(self.key);
    }
}

/// Backs up one leased range and reports the outcome to coordinator `coordinator`.
pub(super) async fn work(ctx: Arc<Context>, coordinator: usize, lease: RangeLease) {
    let _active = Active {
        ctx: ctx.clone(),
        key: (coordinator, lease.lease_id),
    };
    let span = info_span!(
        "lease", lease = lease.lease_id, job = %lease.job, vm = %lease.vm, disk = %lease.disk,
        range = %ByteRange { offset: lease.offset, length: lease.length },
        coordinator = %ctx.coordinators.addr(coordinator)
    );
    async move {
        let id = lease.lease_id;
        let started = Instant::now();
        match back_up(&ctx, coordinator, lease).await {
            Ok(result) => {
                let chunks = result.entries.len();
                let req = completion(&ctx.config.id, id, result);
                let accepted = report(&ctx, coordinator, "the result", move |mut c| {
                    let req = req.clone();
                    async move { c.complete_range(req).await.map(|r| r.into_inner().accepted) }
                })
                .await;
                match accepted {
                    Ok(true) => {
                        info!(chunks, secs = started.elapsed().as_secs_f64(), "range done")
                    }
                    Ok(false) => {
                        info!("range done, but another result came first or the job ended")
                    }
                    // The coordinator refused the result itself: say so at once rather
                    // than let the lease run out, so the job learns why.
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        let error = format!("the coordinator refused the result: {}", s.message());
                        fail(&ctx, coordinator, id, error).await;
                    }
                    Err(_) => {}
                }
            }
            Err(error) => {
                warn!(error = %error, "range failed");
                fail(&ctx, coordinator, id, error).await;
            }
        }
    }
    .instrument(span)
    .await
}

async fn back_up(
    ctx: &Context,
    coordinator: usize,
    lease: RangeLease,
) -> Result<RangeResult, String> {
    let r = LeasedRange::try_from(lease)?;
    let store = ctx.store_for(coordinator).await?;
    let job = ctx.jobs.enter(&r.job, &r.disk);
    let source = job
        .source(&r.source, r.bitmap.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    if source.size() != r.disk_size {
        return Err(format!(
            "source {} is {} bytes, the job expects {}",
            r.source,
            source.size(),
            r.disk_size
        ));
    }
    let worker = SourceWorker {
        source,
        store,
        seen: job.seen.clone(),
        opts: range_options(r.range.length),
        progress: Arc::new(Progress::default()),
    };
    worker
        .backup_range(RangeTask {
            job: r.job,
            vm: r.vm,
            disk: r.disk,
            range: r.range,
            chunk_size: r.chunk_size,
            incremental: r.bitmap.is_some(),
            parent: r.parent,
        })
        .await
        .map_err(|e| e.0)
}

/// Reports a failed range to coordinator `i`.
async fn fail(ctx: &Context, i: usize, lease: u64, error: String) {
    let req = FailRangeRequest {
        lease_id: lease,
        worker: ctx.config.id.clone(),
        error,
    };
    let _ = report(ctx, i, "the failure", move |mut c| {
        let req = req.clone();
        async move { c.fail_range(req).await.map(|_| ()) }
    })
    .await;
}

/// Sends a report to coordinator `i`, retrying for [`REPORT_PATIENCE`] while it is
/// unreachable — unless it answers that it no longer leads, or, with several
/// coordinators, it is unreachable and new work is asked from another one: the lease is
/// then void (lease numbers belong to one leadership) and the report is dropped.
async fn report<T, F, Fut>(ctx: &Context, i: usize, what: &str, call: F) -> Result<T, tonic::Status>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + REPORT_PATIENCE;
    let mut backoff = Duration::from_millis(200);
    loop {
        let client = ctx
            .coordinators
            .client(i)
            .ok_or_else(|| tonic::Status::unavailable("no client for the coordinator"))?;
        match call(client).await {
            Ok(v) => return Ok(v),
            // The coordinator that granted the lease no longer leads: the lease belongs to
            // an earlier leadership and the new leader leases the range again.
            Err(s) if leader_addr(&s).is_some() => {
                info!("the coordinator no longer leads; {what} is dropped (the lease is void)");
                return Err(s);
            }
            Err(s) if unreachable(&s) && ctx.coordinators.gone(i) => {
                info!(error = %s, "the coordinator is gone and another one is asked for work; {what} is dropped (the lease is void)");
                return Err(s);
            }
            Err(s) if unreachable(&s) && Instant::now() + backoff < deadline => {
                debug!(error = %s, "coordinator unreachable; reporting {what} again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(s) => {
                warn!(error = %s, "could not report {what}");
                return Err(s);
            }
        }
    }
}

/// Pipeline tuning for one leased range: batches of at most a quarter of the range (4 MiB
/// to the default 32 MiB), so a small range is compressed and uploaded while the rest of
/// it is still being read, instead of all at once at its end (which made the ranges of a
/// round compete for the CPU in bursts).
fn range_options(range_bytes: u64) -> PipelineOptions {
    let d = PipelineOptions::default();
    let quarter = usize::try_from(range_bytes / 4).unwrap_or(usize::MAX);
    PipelineOptions {
        batch_bytes: quarter.clamp(4 << 20, d.batch_bytes),
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> RangeLease {
        RangeLease {
            lease_id: 9,
            job: "j".into(),
            vm: "vm".into(),
            disk: "d".into(),
            source: "/i.raw".into(),
            offset: 1 << 16,
            length: 3 << 16,
            chunk_size: 1 << 16,
            expires_in_ms: 1000,
            disk_size: 4 << 16,
            ..Default::default()
        }
    }

    #[test]
    fn leases_from_the_wire_are_checked() {
        assert!(LeasedRange::try_from(lease()).is_ok());
        for (bad, needle) in [
            (
                RangeLease {
                    offset: 100,
                    ..lease()
                },
                "chunk-aligned",
            ),
            (
                RangeLease {
                    length: 4 << 16,
                    ..lease()
                },
                "chunk-aligned",
            ),
            (
                RangeLease {
                    offset: u64::MAX - 65535,
                    ..lease()
                },
                "chunk-aligned",
            ),
            (
                RangeLease {
                    bitmap: "b".into(),
                    parent: vec![Bytes::new(); 2],
                    ..lease()
                },
                "3 chunks came with 2 parent digests",
            ),
            (
                RangeLease {
                    bitmap: "b".into(),
                    parent: vec![Bytes::new(), Bytes::new(), Bytes::from_static(&[1, 2])],
                    ..lease()
                },
                "a parent digest of 2 bytes",
            ),
            (
                RangeLease {
                    chunk_size: 3,
                    ..lease()
                },
                "power of two",
            ),
            (
                RangeLease {
                    disk: "../x".into(),
                    ..lease()
                },
                "disk name",
            ),
            (
                RangeLease {
                    source: String::new(),
                    ..lease()
                },
                "no source",
            ),
        ] {
            let e = LeasedRange::try_from(bad).unwrap_err();
            assert!(e.contains(needle) && e.contains("lease 9"), "{needle}: {e}");
        }
    }

    #[test]
    fn small_ranges_get_smaller_batches() {
        assert_eq!(range_options(32 << 20).batch_bytes, 8 << 20);
        assert_eq!(range_options(4 << 20).batch_bytes, 4 << 20);
        assert_eq!(range_options(1 << 30).batch_bytes, 32 << 20);
    }
}
