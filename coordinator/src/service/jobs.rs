//! Backup jobs: started by a client, split into ranges by the lease table, watched by long
//! polls, ended by a commit, a failure or a cancel.
//!
//! A job's id is the id of the snapshot it commits. Jobs are replicated: a job starts,
//! each range's result is accepted and the job ends through commands of the replicated
//! catalog (`StartJob`, `AcceptRange`, `EndJob`), so a new leader takes the running jobs
//! over (see `takeover`). The lease table and the watch channels of long polls are the
//! leader's memory. A client that goes away does not cancel its job (it belongs to the
//! cluster until it ends).

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
use crate::planner::split_disk;
use crate::raft::command::{Command, JobDisk, JobEnd, JobStart, JobStatus as ReplicatedStatus};
use crate::raft::state::JobState;
use crate::raft::{RaftCatalogError, Refusal};

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

    /// Puts a started job in the lease table (its disks split in ranges of
    /// `range_bytes`) with its record. Returns the number of ranges.
    pub(super) fn add_running(
        &mut self,
        job: JobId,
        req: JobRequest,
        range_bytes: u64,
    ) -> Result<usize, RequestError> {
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
        let total = self.table.add_job_split(spec, range_bytes)?;
        let seq = self.next_seq;
        self.next_seq += 1;
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
        self.jobs.insert(
            job,
            JobRecord {
                seq,
                vm: req.vm,
                host: req.host,
                chunk_size: req.chunk_size,
                disks: req.disks,
                view,
            },
        );
        Ok(total)
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
    /// Starts a backup job: proposed to the replicated catalog, then its ranges wait for
    /// workers. A request naming the id of a job that already exists for the same VM (a
    /// client retrying after a lost answer or a leader change) gets that job back.
    pub(super) async fn start_backup(
        &self,
        req: JobRequest,
        live: bool,
    ) -> Result<JobId, RequestError> {
        if self.storage.is_empty() {
            return Err(RequestError::NoStorageNodes);
        }
        let job = JobId(
            req.id
                .clone()
                .unwrap_or_else(SnapshotId::random)
                .to_string(),
        );
        let range_bytes = {
            let core = self.core();
            if core.jobs.get(&job).is_some_and(|r| r.vm == req.vm) {
                return Ok(job);
            }
            if let Some(running) = core.running_job_of(&req.vm) {
                return Err(RequestError::VmBusy {
                    vm: req.vm,
                    job: running,
                });
            }
            core.table.config().range_bytes
        };
        let start = job_start(&job, &req, range_bytes, live)?;
        match self.raft.propose(Command::StartJob(start)).await {
            Ok(_) => {}
            Err(RaftCatalogError::Refused(Refusal::DuplicateJob { .. })) => {
                // Started (or even ended) by an earlier try of this request: WaitJob tells.
                let same_vm = self.raft.read(|s| s.job_of_vm(&job.0, &req.vm)).await?;
                if same_vm {
                    return Ok(job);
                }
                return Err(RequestError::Invalid(format!(
                    "job id {job} is taken by another VM's job or snapshot"
                )));
            }
            Err(RaftCatalogError::Refused(Refusal::VmBusy { vm, job })) => {
                return Err(RequestError::VmBusy {
                    vm,
                    job: JobId(job),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let mut core = self.core();
        if core.jobs.contains_key(&job) {
            return Ok(job);
        }
        if core.leading.is_none() {
            // The new leader takes the job over; the client's retry finds it there.
            return Err(RequestError::Unavailable(format!(
                "job {job} started, but this coordinator stopped leading; retry"
            )));
        }
        core.add_running(job.clone(), req, range_bytes)?;
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

    /// Waits up to `timeout` for `job` to end; returns its status then. If this
    /// coordinator stops leading meanwhile, the answer is the redirect to the new leader
    /// (which has taken the job over).
    pub(super) async fn wait_job(
        &self,
        job: &JobId,
        timeout: Duration,
    ) -> Result<JobView, RequestError> {
        let rx = self.core().jobs.get(job).map(|r| r.view.subscribe());
        let Some(mut rx) = rx else {
            return self.ended_before(job).await;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stopping = self.stopping.subscribe();
        let mut leadership = self.leadership.subscribe();
        let term = *leadership.borrow_and_update();
        loop {
            if rx.borrow_and_update().phase.is_ended() || *stopping.borrow_and_update() {
                break;
            }
            if *leadership.borrow_and_update() != term {
                self.leading()?;
                return Err(RequestError::Unavailable(format!(
                    "job {job}: the leadership changed; ask again"
                )));
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stopping.changed() => {}
                _ = leadership.changed() => {}
            }
        }
        let view = rx.borrow().clone();
        if !view.phase.is_ended() && *leadership.borrow() != term {
            self.leading()?;
        }
        Ok(view)
    }

    /// A job this leader has no record of: ended before (under an earlier leader, or
    /// forgotten from the records kept), as the replicated catalog says.
    async fn ended_before(&self, job: &JobId) -> Result<JobView, RequestError> {
        if job.0.parse::<SnapshotId>().is_err() {
            return Err(RequestError::UnknownJob(job.clone()));
        }
        let (state, meta) = self
            .raft
            .read(|s| (s.jobs.get(&job.0).cloned(), s.find(&job.0).cloned()))
            .await?;
        let view = |vm: String, phase| JobView {
            job: job.clone(),
            vm,
            phase,
            done: 0,
            total: 0,
        };
        if let Some(meta) = meta {
            let snapshot_json = serde_json::to_string(&meta)
                .map_err(|e| RequestError::Internal(format!("encoding snapshot {job}: {e}")))?;
            return Ok(view(meta.vm, Phase::Committed { snapshot_json }));
        }
        let Some(state) = state else {
            return Err(RequestError::UnknownJob(job.clone()));
        };
        let phase = match state.status {
            ReplicatedStatus::Committed => Phase::Failed {
                error: "committed, but its snapshot has been forgotten since (bora prune)".into(),
            },
            ReplicatedStatus::Running => {
                return Err(RequestError::Unavailable(format!(
                    "job {job} is being taken over by this leader; ask again"
                )));
            }
            status => self.ended_phase(job, status).await,
        };
        Ok(view(state.vm, phase))
    }

    /// Ends a running job without a commit (proposed to the replicated catalog first); an
    /// ended job's status is returned as it is.
    pub(super) async fn cancel_job(&self, job: &JobId) -> Result<JobView, RequestError> {
        let phase = self
            .core()
            .jobs
            .get(job)
            .map(|rec| rec.view.borrow().phase.clone());
        let Some(phase) = phase else {
            return self.ended_before(job).await;
        };
        match phase {
            Phase::Committing => return Err(RequestError::Committing(job.clone())),
            Phase::Running => {
                let end = Command::EndJob {
                    job: job.0.clone(),
                    end: JobEnd::Cancelled,
                };
                match self.raft.propose(end).await {
                    Ok(_) => {
                        let mut core = self.core();
                        if let CancelOutcome::Cancelled { released } = core.table.cancel(job)? {
                            info!(job = %job, released = released.len(), "job cancelled");
                        }
                        core.set_phase(job, Phase::Cancelled);
                        drop(core);
                        // Its other jobs' ranges may now fit the per-host limit.
                        self.work.notify_waiters();
                    }
                    // Ended meanwhile (committed or failed): its status says how.
                    Err(RaftCatalogError::Refused(Refusal::JobEnded { .. })) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
        let view = self.core().jobs.get(job).map(|r| r.view.borrow().clone());
        match view {
            Some(v) => Ok(v),
            None => self.ended_before(job).await,
        }
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

/// The replicated record of a job about to start: its disks with their range counts (as
/// the lease table will split them) and what a new leader needs to go on with it.
fn job_start(
    job: &JobId,
    req: &JobRequest,
    range_bytes: u64,
    live: bool,
) -> Result<JobStart, RequestError> {
    let disks = req
        .disks
        .iter()
        .map(|d| {
            let ranges = split_disk(d.size, req.chunk_size, range_bytes).len();
            let ranges = u32::try_from(ranges).map_err(|_| {
                RequestError::Invalid(format!(
                    "disk {} has {ranges} ranges; use larger ranges (range-bytes)",
                    d.name
                ))
            })?;
            Ok(JobDisk {
                name: d.name.clone(),
                size: d.size,
                chunk_size: req.chunk_size,
                source: d.source.clone(),
                ranges,
                bitmap: d.incremental.as_ref().map(|i| i.bitmap.clone()),
                parent: d.incremental.as_ref().map(|i| i.parent.clone()),
                cbt: d.cbt.clone(),
            })
        })
        .collect::<Result<Vec<_>, RequestError>>()?;
    Ok(JobStart {
        id: job.0.clone(),
        vm: req.vm.clone(),
        host: req.host.clone(),
        disks,
        range_bytes,
        live,
    })
}

/// A replicated job's request as the lease table and the commit need it (incremental
/// disks without their bases: [`Coordinator::load_bases`] loads them).
pub(super) fn job_request(id: &str, job: &JobState) -> Result<JobRequest, RequestError> {
    let chunk_size = job.disks.first().map_or(0, |d| d.chunk_size);
    let id = id
        .parse::<SnapshotId>()
        .map_err(|e| RequestError::Internal(format!("job id {id:?}: {e}")))?;
    Ok(JobRequest {
        vm: job.vm.clone(),
        host: job.host.clone(),
        chunk_size,
        disks: job
            .disks
            .iter()
            .map(|d| DiskSource {
                name: d.name.clone(),
                source: d.source.clone(),
                size: d.size,
                incremental: match (&d.bitmap, &d.parent) {
                    (Some(bitmap), Some(parent)) => Some(Incremental {
                        bitmap: bitmap.clone(),
                        parent: parent.clone(),
                        base: None,
                    }),
                    _ => None,
                },
                cbt: d.cbt.clone(),
            })
            .collect(),
        id: Some(id),
    })
}
