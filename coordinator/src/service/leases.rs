//! Range leases as workers see them: ask for a range, heartbeat it, report its result or
//! its failure. A timer takes back the leases whose workers went silent. The policies
//! (fairness, attempts, late results) are the lease table's ([`crate::lease`]); this is
//! the driver that gives it the time and turns its outcomes into job states.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, Span, debug, info, info_span, warn};

use bora_core::job::RangeResult;
use bora_core::snapshot::DiskStats;
use bora_core::{ByteRange, Digest};

use super::error::RequestError;
use super::jobs::Phase;
use super::state::{Coordinator, Core};
use crate::lease::{
    Completion, FailOutcome, Heartbeat, JobFailure, JobId, Lease, LeaseError, Retry, Stale,
    WorkerId,
};
use crate::raft::command::{Command, RangeDone};
use crate::raft::{RaftCatalogError, Refusal};
use crate::range_piece;

/// A range handed to a worker, with what it needs to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RangeGrant {
    /// The lease's wire number.
    pub(super) lease: u64,
    pub(super) job: JobId,
    pub(super) vm: String,
    pub(super) disk: String,
    pub(super) source: String,
    pub(super) disk_size: u64,
    pub(super) range: ByteRange,
    pub(super) chunk_size: u32,
    pub(super) expires_in_ms: u64,
    /// Incremental: the source's dirty bitmap and the parent's digest of every chunk.
    pub(super) bitmap: Option<String>,
    pub(super) parent: Vec<Option<Digest>>,
}

/// A worker's result for a leased range (digests already checked for length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RangeReport {
    pub(super) lease: u64,
    pub(super) worker: WorkerId,
    /// `(chunk number, digest)`; `None`: all zeros.
    pub(super) entries: Vec<(u64, Option<Digest>)>,
    pub(super) stats: DiskStats,
}

/// The span of work on one range.
fn range_span(core: &Core, lease: &Lease, wire: u64) -> Span {
    let rec = core.jobs.get(&lease.job);
    let vm = rec.map_or("?", |r| r.vm.as_str());
    let host = rec.map_or("?", |r| r.host.as_str());
    let disk = rec
        .and_then(|r| r.disks.get(lease.disk))
        .map_or("?", |d| d.name.as_str());
    info_span!(
        "range", job = %lease.job, host = %host, vm = %vm, disk = %disk, range = %lease.range,
        lease = wire, worker = %lease.worker
    )
}

/// Checks that `entries` name chunks of `range` at most once, and every one of them in a
/// full read (an incremental reports only the changed ones).
fn check_entries(
    wire: u64,
    entries: Vec<(u64, Option<Digest>)>,
    range: ByteRange,
    chunk_size: u32,
    incremental: bool,
) -> Result<Vec<(usize, Option<Digest>)>, RequestError> {
    let cs = u64::from(chunk_size.max(1));
    let (first, end) = (range.offset / cs, range.end().div_ceil(cs));
    let mut seen = vec![false; usize::try_from(end - first).unwrap_or(0)];
    let mut out = Vec::with_capacity(entries.len());
    for (chunk, digest) in entries {
        let outside = || {
            RequestError::Invalid(format!(
                "lease {wire}: chunk {chunk} is outside the leased range {range} (chunks {first}..{end})"
            ))
        };
        if !(first..end).contains(&chunk) {
            return Err(outside());
        }
        let slot = usize::try_from(chunk - first)
            .ok()
            .and_then(|i| seen.get_mut(i))
            .ok_or_else(outside)?;
        if std::mem::replace(slot, true) {
            return Err(RequestError::Invalid(format!(
                "lease {wire}: chunk {chunk} is reported twice"
            )));
        }
        let index = usize::try_from(chunk).map_err(|_| outside())?;
        out.push((index, digest.filter(|d| !d.is_zero_marker())));
    }
    if !incremental && out.len() != seen.len() {
        return Err(RequestError::Invalid(format!(
            "lease {wire}: {} of the range's {} chunks reported; a full backup reports every chunk",
            out.len(),
            seen.len()
        )));
    }
    Ok(out)
}

impl Coordinator {
    /// A job failed after a range used its last attempt: its end is proposed to the
    /// replicated catalog (the lease table has already released its leases).
    fn job_failed(self: &Arc<Self>, failure: &JobFailure) {
        warn!(job = %failure.job, error = %failure, "job failed; nothing is committed");
        tokio::spawn(
            self.clone()
                .end_job(failure.job.clone(), failure.to_string()),
        );
    }

    /// The next range for `worker`, if any job has one waiting.
    pub(super) fn lease(
        &self,
        worker: &WorkerId,
        peer: Option<SocketAddr>,
    ) -> Result<Option<RangeGrant>, RequestError> {
        let now = self.clock.now_ms();
        let mut core = self.core();
        core.touch(worker, peer, now);
        let Some(lease) = core.table.lease(worker, now) else {
            return Ok(None);
        };
        let wire = core.epoch.wire(lease.id);
        let span = range_span(&core, &lease, wire);
        let _in = span.enter();
        let rec = core.jobs.get(&lease.job);
        let disk = rec.and_then(|r| r.disks.get(lease.disk));
        let (Some(rec), Some(disk)) = (rec, disk) else {
            return Err(RequestError::Internal(format!(
                "lease {wire} names job {} disk {} the coordinator has no record of",
                lease.job, lease.disk
            )));
        };
        let grant = RangeGrant {
            lease: wire,
            job: lease.job.clone(),
            vm: rec.vm.clone(),
            disk: disk.name.clone(),
            source: disk.source.clone(),
            disk_size: disk.size,
            range: lease.range,
            chunk_size: rec.chunk_size,
            expires_in_ms: lease.expires_ms.saturating_sub(now),
            bitmap: disk.incremental.as_ref().map(|i| i.bitmap.clone()),
            parent: disk
                .incremental
                .as_ref()
                .map(|i| i.parent_digests(lease.range, rec.chunk_size))
                .unwrap_or_default(),
        };
        info!(attempt = lease.attempt, "range leased");
        drop(core);
        // The new lease may run out before the one the timer waits for.
        self.expiry.notify_one();
        Ok(Some(grant))
    }

    /// Extends `worker`'s leases; returns those it must stop.
    pub(super) fn heartbeat(
        &self,
        worker: &WorkerId,
        leases: &[u64],
        peer: Option<SocketAddr>,
    ) -> Vec<u64> {
        let now = self.clock.now_ms();
        let mut core = self.core();
        core.touch(worker, peer, now);
        let mut ended = Vec::new();
        for &wire in leases {
            let Some(id) = core.epoch.local(wire) else {
                debug!(worker = %worker, lease = wire, "lease of another leadership");
                ended.push(wire);
                continue;
            };
            match core.table.heartbeat(worker, id, now) {
                Ok(Heartbeat::Extended { .. }) => {}
                Ok(Heartbeat::Ended(why)) => {
                    debug!(worker = %worker, lease = wire, ?why, "lease ended");
                    ended.push(wire);
                }
                Err(e) => {
                    warn!(worker = %worker, lease = wire, error = %e, "heartbeat for a lease the worker does not hold");
                    ended.push(wire);
                }
            }
        }
        ended
    }

    /// Takes a range's result: its entries are stored as pieces and the range is
    /// accepted in the replicated catalog (the first result of a range wins there), then
    /// in the lease table. `false`: it changed nothing (the range already had a result,
    /// the job ended, or the lease is another leadership's).
    pub(super) async fn complete(
        self: &Arc<Self>,
        report: RangeReport,
    ) -> Result<bool, RequestError> {
        let now = self.clock.now_ms();
        let RangeReport {
            lease: wire,
            worker,
            entries,
            stats,
        } = report;
        let (id, lease, entries, span) = {
            let mut core = self.core();
            core.touch(&worker, None, now);
            let Some(id) = core.epoch.local(wire) else {
                info!(worker = %worker, lease = wire, "result for a lease of another leadership ignored");
                return Ok(false);
            };
            let Some(lease) = core.table.get_lease(id).cloned() else {
                // The job has ended (ignored) or the lease never existed (an error): the
                // table tells which, and takes no result in either case.
                return match core.table.check_complete(id)? {
                    Some(_) => Ok(false),
                    None => Err(RequestError::Internal(format!(
                        "lease {wire} of no running job would be accepted"
                    ))),
                };
            };
            if lease.worker != worker {
                return Err(LeaseError::WrongWorker {
                    lease: id,
                    owner: lease.worker,
                    worker,
                }
                .into());
            }
            let span = range_span(&core, &lease, wire);
            let _in = span.enter();
            let (chunk_size, incremental) = core
                .jobs
                .get(&lease.job)
                .map(|r| {
                    let inc = r
                        .disks
                        .get(lease.disk)
                        .is_some_and(|d| d.incremental.is_some());
                    (r.chunk_size, inc)
                })
                .ok_or_else(|| RequestError::Internal(format!("no record of job {}", lease.job)))?;
            let entries = check_entries(wire, entries, lease.range, chunk_size, incremental)?;
            if let Some(why) = core.table.check_complete(id)? {
                info!(?why, "late result ignored; the range's first result stands");
                return Ok(false);
            }
            drop(_in);
            (id, lease, entries, span)
        };
        let accepted = self
            .accept_range(&lease, wire, &worker, &entries, &stats)
            .instrument(span.clone())
            .await?;
        let _in = span.enter();
        if !accepted {
            info!("the replicated catalog has another result for the range; it stands");
            return Ok(false);
        }
        let result = RangeResult { entries, stats };
        let mut core = self.core();
        let commit = match core.table.check_complete(id)? {
            Some(Stale::JobEnded) => {
                info!("the job ended while its range was accepted");
                return Ok(false);
            }
            // The catalog took it although this lease went stale meanwhile: the table
            // follows the catalog.
            Some(_) => core
                .table
                .mark_done(&lease.job, lease.disk, lease.index, result)?,
            None => match core.table.complete(id, result)? {
                Completion::Accepted { commit, superseded } => {
                    if let Some(s) = superseded {
                        info!(superseded = %s.worker, "range done by an expired lease; its new holder was superseded");
                    }
                    commit
                }
                Completion::Ignored(why) => {
                    return Err(RequestError::Internal(format!(
                        "lease {wire}: the lease table refused a result it had just checked ({why:?})"
                    )));
                }
            },
        };
        core.update_progress(&lease.job);
        info!("range done");
        // A per-host slot is free.
        self.work.notify_waiters();
        if let Some(commit) = commit {
            core.set_phase(&lease.job, Phase::Committing);
            info!("every range done; committing");
            if self.commits.send(commit).is_err() {
                core.set_phase(
                    &lease.job,
                    Phase::Failed {
                        error: RequestError::ShuttingDown.to_string(),
                    },
                );
            }
        }
        Ok(true)
    }

    /// Stores a range's entries as pieces, then proposes `AcceptRange`. `false`: the
    /// catalog refused it (the range has a result, or the job ended).
    async fn accept_range(
        &self,
        lease: &Lease,
        wire: u64,
        worker: &WorkerId,
        entries: &[(usize, Option<Digest>)],
        stats: &DiskStats,
    ) -> Result<bool, RequestError> {
        let store = self.storage.store()?;
        let pieces = range_piece::store(store.as_ref(), entries)
            .await
            .map_err(|e| RequestError::Unavailable(e.to_string()))?;
        let number = |n: usize, what: &str| {
            u32::try_from(n).map_err(|_| RequestError::Internal(format!("{what} {n} out of range")))
        };
        let command = Command::AcceptRange {
            job: lease.job.0.clone(),
            disk: number(lease.disk, "disk")?,
            index: number(lease.index, "range")?,
            result: RangeDone {
                worker: worker.0.clone(),
                lease: wire,
                chunks: entries.len() as u64,
                pieces,
                stats: stats.clone(),
            },
        };
        match self.raft.propose(command).await {
            Ok(_) => Ok(true),
            Err(RaftCatalogError::Refused(
                Refusal::RangeDone { .. } | Refusal::JobEnded { .. } | Refusal::UnknownJob { .. },
            )) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// A worker could not back up its range: the range is retried, or its job fails after
    /// the last attempt.
    pub(super) fn fail(
        self: &Arc<Self>,
        wire: u64,
        worker: &WorkerId,
        error: String,
    ) -> Result<(), RequestError> {
        let now = self.clock.now_ms();
        let mut core = self.core();
        core.touch(worker, None, now);
        let Some(id) = core.epoch.local(wire) else {
            return Ok(());
        };
        let span = match core.table.get_lease(id) {
            Some(lease) if lease.worker != *worker => {
                return Err(LeaseError::WrongWorker {
                    lease: id,
                    owner: lease.worker.clone(),
                    worker: worker.clone(),
                }
                .into());
            }
            Some(lease) => range_span(&core, lease, wire),
            None => Span::none(),
        };
        let _in = span.enter();
        match core.table.fail(id, error.clone())? {
            FailOutcome::Ignored(why) => {
                debug!(?why, error = %error, "failure of an ended lease ignored")
            }
            FailOutcome::Retry(Retry::Requeued { attempts }) => {
                warn!(attempts, error = %error, "range failed; queued again");
            }
            FailOutcome::Retry(Retry::JobFailed(failure)) => self.job_failed(&failure),
        }
        drop(_in);
        drop(core);
        self.work.notify_waiters();
        Ok(())
    }

    /// [`Self::lease`], waiting up to `wait` for a range when none is waiting now.
    pub(super) async fn lease_wait(
        &self,
        worker: &WorkerId,
        peer: Option<SocketAddr>,
        wait: Duration,
    ) -> Result<Option<RangeGrant>, RequestError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = self.stopping.subscribe();
        loop {
            // Registered before the table is asked, so a change in between is not missed.
            let changed = self.work.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(grant) = self.lease(worker, peer)? {
                return Ok(Some(grant));
            }
            if *stopping.borrow_and_update() {
                return Ok(None);
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
                _ = stopping.changed() => return Ok(None),
            }
        }
    }

    /// Takes back leases as they run out, until the coordinator stops.
    pub(super) async fn run_expiry(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            let next = self.core().table.next_deadline();
            let until = match next {
                Some(ms) => self.clock.at(ms),
                None => tokio::time::Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => self.expire_now(),
                _ = self.expiry.notified() => {}
                _ = stopping.changed() => {}
            }
        }
    }

    fn expire_now(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let mut core = self.core();
        for e in core.table.expire(now) {
            let span = range_span(&core, &e.lease, core.epoch.wire(e.lease.id));
            let _in = span.enter();
            match e.retry {
                Retry::Requeued { attempts } => {
                    warn!(
                        attempts,
                        "lease expired without a heartbeat; range queued again"
                    );
                }
                Retry::JobFailed(failure) => self.job_failed(&failure),
            }
        }
        drop(core);
        self.work.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_must_cover_the_range_once() {
        let cs = 1 << 16;
        let range = ByteRange {
            offset: 4 * u64::from(cs),
            length: 3 * u64::from(cs) - 5,
        };
        let d = Some(Digest::of(b"x"));
        let ok = check_entries(1, vec![(6, None), (4, d), (5, d)], range, cs, false).unwrap();
        assert_eq!(ok, vec![(6, None), (4, d), (5, d)]);
        let e = check_entries(1, vec![(4, d), (5, d), (7, d)], range, cs, false).unwrap_err();
        assert!(e.to_string().contains("chunk 7 is outside"), "{e}");
        let e = check_entries(1, vec![(4, d), (4, d), (5, d)], range, cs, false).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = check_entries(1, vec![(4, d), (5, d)], range, cs, false).unwrap_err();
        assert!(e.to_string().contains("2 of the range's 3"), "{e}");
        // The reserved all-zero digest means a zero chunk.
        let z = check_entries(
            1,
            vec![(4, Some(Digest::ZERO)), (5, d), (6, d)],
            range,
            cs,
            false,
        );
        assert_eq!(z.unwrap()[0], (4, None));
        // An incremental reports only its changed chunks, still each once and inside.
        let some = check_entries(1, vec![(5, d)], range, cs, true).unwrap();
        assert_eq!(some, vec![(5, d)]);
        let e = check_entries(1, vec![(5, d), (5, d)], range, cs, true).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = check_entries(1, vec![(8, d)], range, cs, true).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
    }
}
