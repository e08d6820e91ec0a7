//! Leadership changes. Jobs are in the replicated catalog; the lease table is the
//! leader's memory. When this coordinator becomes the leader it **takes the running jobs
//! over**: a new lease table (lease numbers carry the new term, so leases of the old
//! leader are foreign), each running job with the ranges done before marked done — their
//! entries loaded from the pieces the catalog names — and the rest waiting for workers.
//! A job whose every range was done is committed at once. When it stops leading it drops
//! the table: long polls answer with the redirect, and the new leader goes on.
//!
//! Until the takeover is done, job and worker requests answer UNAVAILABLE ("taking
//! over"); clients retry. A job that cannot be taken over (its parent's index or a
//! range's pieces cannot be read) ends FAILED with the reason; nothing is committed.
//!
//! A live VM's freeze belongs to the process that made it; a job taken over from another
//! leader cleans the VM up when it ends, as the VM's next backup would.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tracing::{Instrument, info, info_span, warn};

use bora_core::job::RangeResult;

use super::epoch::Epoch;
use super::error::RequestError;
use super::jobs::{Phase, job_request};
use super::state::{Coordinator, Core};
use crate::lease::{JobId, LeaseTable};
use crate::raft::command::JobStatus as ReplicatedStatus;
use crate::raft::state::JobState;
use crate::range_piece;

/// Pieces loaded at once while taking a job over.
const LOADS_IN_FLIGHT: usize = 16;

/// Follows this member's leadership until the coordinator stops: takes the jobs over on
/// becoming the leader, drops the lease table on losing it.
pub(super) async fn run_leadership(c: Arc<Coordinator>) {
    let mut watch = c.raft.leadership();
    let mut stopping = c.stopping.subscribe();
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let term = watch.term();
        let held = c.core().leading;
        if term != held {
            if held.is_some() {
                c.step_down();
            }
            if let Some(term) = term
                && let Err(e) = c.clone().take_over(term).await
            {
                warn!(term, error = %e, "taking over the running jobs; will retry");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
        }
        tokio::select! {
            alive = watch.changed() => if !alive { return },
            _ = stopping.changed() => {}
        }
    }
}

impl Core {
    /// An empty lease table and no jobs, with lease numbers of `epoch`; not serving
    /// (`leading` is set once a takeover is done).
    fn reset(&mut self, epoch: Epoch) {
        self.leading = None;
        self.epoch = epoch;
        self.table = LeaseTable::new(self.table.config().clone());
        self.jobs.clear();
        self.ended.clear();
    }
}

impl Coordinator {
    /// Forgets the leases and jobs of a leadership that ended.
    pub(super) fn step_down(&self) {
        let mut core = self.core();
        let running = core.jobs.len();
        core.reset(Epoch::NONE);
        drop(core);
        info!(
            jobs = running,
            "no longer leading: jobs and leases left to the new leader"
        );
        self.leadership.send_replace(None);
        self.work.notify_waiters();
        self.expiry.notify_one();
    }

    /// Becomes the leader of `term`: a new lease table with every running job of the
    /// replicated catalog in it.
    pub(super) async fn take_over(self: Arc<Self>, term: u64) -> Result<(), RequestError> {
        self.core().reset(Epoch::of(term, self.start));
        let running: Vec<(String, JobState)> = self
            .raft
            .read(|s| {
                s.jobs
                    .iter()
                    .filter(|(_, j)| j.status == ReplicatedStatus::Running)
                    .map(|(id, j)| (id.clone(), j.clone()))
                    .collect()
            })
            .await?;
        info!(
            term,
            jobs = running.len(),
            "leading: taking over the running jobs"
        );
        for (id, job) in running {
            let span = info_span!("take_over", job = %id, vm = %job.vm, host = %job.host);
            if let Err(e) = self.take_job(&id, &job).instrument(span.clone()).await {
                let _in = span.enter();
                warn!(error = %e, "cannot take the job over; it fails, nothing is committed");
                tokio::spawn(self.clone().end_job(
                    JobId(id),
                    format!("taken over after a leader change, but: {e}"),
                ));
            }
        }
        self.core().leading = Some(term);
        self.leadership.send_replace(Some(term));
        self.work.notify_waiters();
        Ok(())
    }

    /// Puts one running job of the catalog in the lease table with its done ranges.
    async fn take_job(self: &Arc<Self>, id: &str, job: &JobState) -> Result<(), RequestError> {
        let mut req = job_request(id, job)?;
        self.load_bases(&mut req).await?;
        let store = self.storage.store()?;
        let loads: Vec<_> = job
            .done
            .iter()
            .map(|(&(disk, index), rd)| {
                let store = store.clone();
                let (pieces, stats) = (rd.pieces.clone(), rd.stats.clone());
                async move {
                    let entries = range_piece::load(store.as_ref(), &pieces)
                        .await
                        .map_err(|e| RequestError::Unavailable(e.to_string()))?;
                    Ok::<_, RequestError>((
                        disk as usize,
                        index as usize,
                        RangeResult { entries, stats },
                    ))
                }
            })
            .collect();
        let done: Vec<(usize, usize, RangeResult)> = futures::stream::iter(loads)
            .buffer_unordered(LOADS_IN_FLIGHT)
            .try_collect()
            .await?;
        let job_id = JobId(id.to_string());
        let mut core = self.core();
        let range_bytes = match job.range_bytes {
            0 => core.table.config().range_bytes,
            n => n,
        };
        let total = core.add_running(job_id.clone(), req, range_bytes)?;
        if total as u64 != job.total() {
            core.jobs.remove(&job_id);
            let _ = core.table.cancel(&job_id);
            return Err(RequestError::Internal(format!(
                "the job has {} ranges in the catalog but splits into {total} here",
                job.total()
            )));
        }
        let mut commit = None;
        for (disk, index, result) in done {
            if let Some(c) = core.table.mark_done(&job_id, disk, index, result)? {
                commit = Some(c);
            }
        }
        core.update_progress(&job_id);
        info!(done = job.done.len(), total, "job taken over");
        if let Some(commit) = commit {
            core.set_phase(&job_id, Phase::Committing);
            info!("every range was done; committing");
            if self.commits.send(commit).is_err() {
                core.set_phase(
                    &job_id,
                    Phase::Failed {
                        error: RequestError::ShuttingDown.to_string(),
                    },
                );
            }
        }
        let view = core.jobs.get(&job_id).map(|r| r.view.subscribe());
        drop(core);
        if job.live
            && let Some(view) = view
        {
            tokio::spawn(
                self.clone()
                    .clean_up_when_ended(job.vm.clone(), job.host.clone(), view)
                    .instrument(tracing::Span::current()),
            );
        }
        Ok(())
    }

    /// Waits for a taken-over live job to end, then cleans its VM up on its host.
    async fn clean_up_when_ended(
        self: Arc<Self>,
        vm: String,
        host: String,
        mut view: tokio::sync::watch::Receiver<super::jobs::JobView>,
    ) {
        if view.wait_for(|v| v.phase.is_ended()).await.is_err() {
            // This coordinator stopped leading: the next leader cleans up.
            return;
        }
        let Some(live) = self.live.get().cloned() else {
            return;
        };
        let found = self
            .raft
            .read(|s| (s.hosts.get(&host).cloned(), s.latest(&vm).cloned()))
            .await;
        let (spec, latest) = match found {
            Ok((Some(spec), latest)) => (spec, latest),
            Ok((None, _)) => {
                warn!("the VM's host is no longer registered; its next backup cleans up");
                return;
            }
            Err(e) => {
                warn!(error = %e, "reading the VM's host; its next backup cleans up");
                return;
            }
        };
        match live.clean_up(&spec, &vm, latest.as_ref()).await {
            Ok(done) => info!(done = ?done, "VM cleaned up after the job taken over"),
            Err(e) => warn!(error = %e, "cleaning the VM up failed; its next backup does"),
        }
    }
}
