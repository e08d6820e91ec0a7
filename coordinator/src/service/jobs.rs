//! Backup jobs: started by a client, split into ranges by the lease table, watched by long
//! polls, ended by a commit, a failure or a cancel.
//!
//! A job's id is the id of the snapshot it commits. Jobs live in memory only; a client
//! that goes away does not cancel its job (it belongs to the coordinator until it ends).
//! After a restart a job is unknown unless its snapshot is in the catalog: then `WaitJob`
//! answers with the committed snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use bora_core::index::DiskIndex;
use bora_core::index_store::load_index;
use bora_core::snapshot::{CbtRecord, SnapshotId};
use bora_core::{ByteRange, Digest};

use super::error::RequestError;
use super::state::{Coordinator, Core, KEEP_ENDED_JOBS};
use crate::lease::{CancelOutcome, DiskSpec, JobId, JobSpec, JobStatus};

/// One disk of a job: where workers read it and how large it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DiskSource {
    pub(super) name: String,
    /// Image path or NBD URL the workers can reach.
    pub(super) source: String,
    pub(super) size: u64,
    /// Read only what a dirty bitmap marks, on top of a parent snapshot's disk.
    pub(super) incremental: Option<Incremental>,
    /// Recorded with the disk; `None`: the coordinator records the mode it ran.
    pub(super) cbt: Option<CbtRecord>,
}

/// An incremental disk: the bitmap the source exposes and the parent it is based on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Incremental {
    pub(super) bitmap: String,
    pub(super) parent: String,
    /// The parent's index of the disk, loaded before the job starts
    /// ([`Coordinator::load_bases`]); workers get its digests with each range.
    pub(super) base: Option<Arc<DiskIndex>>,
}

impl Incremental {
    /// The base's digest of every chunk of `range`, in order.
    pub(super) fn parent_digests(&self, range: ByteRange, chunk_size: u32) -> Vec<Option<Digest>> {
        let Some(base) = &self.base else {
            return Vec::new();
        };
        let cs = u64::from(chunk_size);
        let first = (range.offset / cs) as usize;
        let n = range.length.div_ceil(cs) as usize;
        (first..first + n).map(|i| base.get(i)).collect()
    }
}

/// A client's request for a backup of one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JobRequest {
    pub(super) vm: String,
    pub(super) host: String,
    pub(super) chunk_size: u32,
    pub(super) disks: Vec<DiskSource>,
    /// The job's (and snapshot's) id when the caller chose it; `None`: a new one.
    pub(super) id: Option<SnapshotId>,
}

/// Where a job is, as clients see it. The lease table's `Committed` (every range done)
/// is `Committing` here until the snapshot is in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Committing,
    Committed { snapshot_json: String },
    Failed { error: String },
    Cancelled,
}

impl Phase {
    pub(super) fn is_ended(&self) -> bool {
        !matches!(self, Phase::Running | Phase::Committing)
    }
}

/// A job's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JobView {
    pub(super) job: JobId,
    pub(super) vm: String,
    pub(super) phase: Phase,
    pub(super) done: usize,
    pub(super) total: usize,
}

/// What the coordinator keeps of a job beside its lease table entry.
pub(super) struct JobRecord {
    pub(super) seq: u64,
    pub(super) vm: String,
    /// The hypervisor host the disks are read from.
    pub(super) host: String,
    pub(super) chunk_size: u32,
    /// In the order of the lease table's disks.
    pub(super) disks: Vec<DiskSource>,
    pub(super) view: watch::Sender<JobView>,
}

impl Core {
    /// Copies the table's progress of a running job into its view.
    pub(super) fn update_progress(&mut self, job: &JobId) {
        let Some(JobStatus::Running { done, total }) = self.table.status(job) else {
            return;
        };
        if let Some(rec) = self.jobs.get(job) {
            rec.view.send_modify(|v| {
                v.done = done;
                v.total = total;
            });
        }
    }

    /// Moves a job's view to `phase`.
    pub(super) fn set_phase(&mut self, job: &JobId, phase: Phase) {
        let ended = phase.is_ended();
        let Some(rec) = self.jobs.get(job) else {
            return;
        };
        if rec.view.borrow().phase.is_ended() {
            return;
        }
        rec.view.send_modify(|v| {
            if matches!(phase, Phase::Committing | Phase::Committed { .. }) {
                v.done = v.total;
            }
            v.phase = phase;
        });
        if ended {
            self.ended.push_back(job.clone());
            while self.ended.len() > KEEP_ENDED_JOBS {
                if let Some(old) = self.ended.pop_front() {
                    self.jobs.remove(&old);
                    self.table.forget(&old);
                }
            }
        }
    }

    /// The running job of `vm`, if any.
    pub(super) fn running_job_of(&self, vm: &str) -> Option<JobId> {
        self.jobs
            .iter()
            .find(|(_, r)| r.vm == vm && !r.view.borrow().phase.is_ended())
            .map(|(id, _)| id.clone())
    }
}

impl Coordinator {
    /// Starts a full backup job; its ranges wait for workers.
    pub(super) fn start_backup(&self, req: JobRequest) -> Result<JobId, RequestError> {
        if self.storage.is_empty() {
            return Err(RequestError::NoStorageNodes);
        }
        let job = JobId(
            req.id
                .clone()
                .unwrap_or_else(SnapshotId::random)
                .to_string(),
        );
        let mut core = self.core();
        if let Some(running) = core.running_job_of(&req.vm) {
            return Err(RequestError::VmBusy {
                vm: req.vm,
                job: running,
            });
        }
        let spec = JobSpec {
            id: job.clone(),
            host: req.host.clone(),
            disks: req
                .disks
                .iter()
                .map(|d| DiskSpec {
                    name: d.name.clone(),
                    size: d.size,
                    chunk_size: req.chunk_size,
                })
                .collect(),
        };
        let total = core.table.add_job(spec)?;
        let seq = core.next_seq;
        core.next_seq += 1;
        let (view, _) = watch::channel(JobView {
            job: job.clone(),
            vm: req.vm.clone(),
            phase: Phase::Running,
            done: 0,
            total,
        });
        info!(
            job = %job, vm = %req.vm, host = %req.host, disks = req.disks.len(),
            ranges = total, "job started"
        );
        core.jobs.insert(
            job.clone(),
            JobRecord {
                seq,
                vm: req.vm,
                host: req.host,
                chunk_size: req.chunk_size,
                disks: req.disks,
                view,
            },
        );
        self.work.notify_waiters();
        Ok(job)
    }

    /// Loads the parent index of every incremental disk of `req`; checks the parent is a
    /// snapshot of the same VM whose disk has the same size and chunk size.
    pub(super) async fn load_bases(&self, req: &mut JobRequest) -> Result<(), RequestError> {
        for d in &mut req.disks {
            let Some(inc) = &mut d.incremental else {
                continue;
            };
            let what = format!("vm {} disk {}", req.vm, d.name);
            let meta = self
                .catalog_get(req.vm.clone(), inc.parent.clone())
                .await
                .map_err(|e| RequestError::Invalid(format!("{what}: parent snapshot: {e}")))?;
            let pd = meta.disk(&d.name).ok_or_else(|| {
                RequestError::Invalid(format!(
                    "{what}: parent snapshot {} has no such disk",
                    meta.id
                ))
            })?;
            if pd.size != d.size || pd.index.chunk_size != req.chunk_size {
                return Err(RequestError::Invalid(format!(
                    "{what}: parent snapshot {} has a {}-byte disk in {}-byte chunks, the job a {}-byte disk in {}-byte chunks; back up in full",
                    meta.id, pd.size, pd.index.chunk_size, d.size, req.chunk_size
                )));
            }
            let store = self.storage.store()?;
            let base = load_index(store.as_ref(), &pd.index).await.map_err(|e| {
                RequestError::Unavailable(format!(
                    "{what}: loading the index of parent snapshot {}: {e}",
                    meta.id
                ))
            })?;
            inc.parent = meta.id.to_string();
            inc.base = Some(Arc::new(base));
        }
        Ok(())
    }

    /// Waits up to `timeout` for `job` to end; returns its status then.
    pub(super) async fn wait_job(
        &self,
        job: &JobId,
        timeout: Duration,
    ) -> Result<JobView, RequestError> {
        let rx = self.core().jobs.get(job).map(|r| r.view.subscribe());
        let Some(mut rx) = rx else {
            return self.committed_before(job).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stopping = self.stopping.subscribe();
        loop {
            if rx.borrow_and_update().phase.is_ended() || *stopping.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.changed() => {}
            }
        }
        let view = rx.borrow().clone();
        Ok(view)
    }

    /// A job this coordinator does not know: committed if its snapshot is in the catalog
    /// (committed before a restart), unknown otherwise.
    async fn committed_before(&self, job: &JobId) -> Result<JobView, RequestError> {
        if job.0.parse::<SnapshotId>().is_err() {
            return Err(RequestError::UnknownJob(job.clone()));
        }
        let found = self
            .catalog_list(None)
            .await?
            .into_iter()
            .find(|m| m.id.as_str() == job.0);
        let meta = found.ok_or_else(|| RequestError::UnknownJob(job.clone()))?;
        let snapshot_json = serde_json::to_string(&meta)
            .map_err(|e| RequestError::Internal(format!("encoding snapshot {job}: {e}")))?;
        Ok(JobView {
            job: job.clone(),
            vm: meta.vm,
            phase: Phase::Committed { snapshot_json },
            done: 0,
            total: 0,
        })
    }

    /// Ends a running job without a commit; an ended job's status is returned as it is.
    pub(super) fn cancel_job(&self, job: &JobId) -> Result<JobView, RequestError> {
        let mut core = self.core();
        let phase = match core.jobs.get(job) {
            Some(rec) => rec.view.borrow().phase.clone(),
            None => return Err(RequestError::UnknownJob(job.clone())),
        };
        match phase {
            Phase::Committing => return Err(RequestError::Committing(job.clone())),
            Phase::Running => {
                if let CancelOutcome::Cancelled { released } = core.table.cancel(job)? {
                    info!(job = %job, released = released.len(), "job cancelled");
                }
                core.set_phase(job, Phase::Cancelled);
                // Its other jobs' ranges may now fit the per-host limit.
                self.work.notify_waiters();
            }
            _ => {}
        }
        core.jobs
            .get(job)
            .map(|r| r.view.borrow().clone())
            .ok_or_else(|| RequestError::UnknownJob(job.clone()))
    }

    /// Every job this coordinator knows, in start order.
    pub(super) fn job_views(&self) -> Vec<JobView> {
        let core = self.core();
        let mut jobs: Vec<_> = core
            .jobs
            .values()
            .map(|r| (r.seq, r.view.borrow().clone()))
            .collect();
        jobs.sort_by_key(|(seq, _)| *seq);
        jobs.into_iter().map(|(_, v)| v).collect()
    }
}
