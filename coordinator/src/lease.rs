//! The lease table: hands out the ranges of running backup jobs to workers, takes their
//! results back, and says when a job is ready to commit. Pure state in, outcomes out: no
//! network, no clock (every call that needs the time is given `now_ms`), so every
//! interleaving of workers can be replayed in a test.
//!
//! # Policies
//!
//! - **Fairness.** Running jobs take turns (round robin): [`LeaseTable::lease`] serves the
//!   job served longest ago that has a range waiting, and moves it to the back of the
//!   line; a job skipped (nothing waiting, or its host at its limit) keeps its place. So
//!   several VMs' backups progress together instead of one after the other, and a job held
//!   back by its host's limit goes first once the host has room. Within a job, ranges go
//!   out in disk order; a range that failed or expired goes to the front of its job's
//!   queue, so a job is not left waiting for its retries at the end.
//! - **Per-host limit.** A job names the hypervisor host its disks are read from; at most
//!   [`LeaseConfig::per_host_limit`] ranges of one host's jobs are leased at once (expired
//!   leases no longer count: their workers are presumed gone).
//! - **Leases and heartbeats.** A lease lasts [`LeaseConfig::lease_ms`]; a heartbeat extends
//!   it. Leases end only through [`LeaseTable::expire`] (the driver calls it on a timer, see
//!   [`LeaseTable::next_deadline`]): until then a heartbeat extends even a lease past its
//!   time, which is safe because no one else has been given the range.
//! - **Late results: accepted if first.** A range's data is frozen for the whole job (the
//!   fleecing export), so any worker's result for it is as good as another's, and chunks are
//!   stored idempotently under their digests. A result from an expired lease is therefore
//!   taken if the range has no result yet (the range's new holder is told it was
//!   superseded); otherwise, and for any second report of a range, the answer is
//!   [`Stale::RangeDone`] and the first result stands. A range is done exactly once.
//!   Reports about a job that has ended are [`Stale::JobEnded`]. A failure reported by an
//!   expired lease is ignored: the expiry already used the attempt.
//! - **Attempts.** Every lease of a range is one attempt. After a failure or an expiry the
//!   range is queued again, unless it has had [`LeaseConfig::max_attempts`] leases: then the
//!   job fails, its other leases are released and it never commits.
//! - **Commit.** When the last range of the last disk gets its result,
//!   [`Completion::Accepted`] carries the [`JobCommit`]: every disk, every range in order,
//!   each with the one result accepted for it. It is produced once per job, never with a
//!   range missing.
//!
//! Ended jobs stay as a small status entry (so late reports are answered and a job id is
//! not reused by mistake) until [`LeaseTable::forget`].

mod job;
mod outcome;
mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use bora_core::job::RangeResult;

use job::{Accept, RunningJob, Step};
pub use outcome::{
    CancelOutcome, CommittedRange, Completion, DiskCommit, Expired, FailCause, FailOutcome,
    Heartbeat, JobCommit, JobFailure, JobStatus, LeaseError, Retry, Stale,
};
pub use types::{DiskSpec, JobId, JobSpec, Lease, LeaseConfig, LeaseId, WorkerId};

enum JobEntry {
    Running(RunningJob),
    Ended(JobStatus),
}

/// The leases of every running job. See the module documentation for the policies.
pub struct LeaseTable {
    config: LeaseConfig,
    jobs: BTreeMap<JobId, JobEntry>,
    /// Running jobs, the one served longest ago first.
    rotation: VecDeque<JobId>,
    /// The job of every lease of a running job.
    lease_job: HashMap<LeaseId, JobId>,
    /// The number of the next lease.
    next_id: u64,
}

impl LeaseTable {
    pub fn new(config: LeaseConfig) -> LeaseTable {
        LeaseTable {
            config,
            jobs: BTreeMap::new(),
            rotation: VecDeque::new(),
            lease_job: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Adds a job: splits its disks into ranges, all waiting to be leased. Returns the
    /// number of ranges.
    pub fn add_job(&mut self, spec: JobSpec) -> Result<usize, LeaseError> {
        let range_bytes = self.config.range_bytes;
        self.add_job_split(spec, range_bytes)
    }

    /// [`Self::add_job`] with the disks split in ranges of `range_bytes` (a job taken over
    /// from another leader keeps the split it started with).
    pub fn add_job_split(&mut self, spec: JobSpec, range_bytes: u64) -> Result<usize, LeaseError> {
        if self.jobs.contains_key(&spec.id) {
            return Err(LeaseError::DuplicateJob(spec.id));
        }
        let job = RunningJob::new(spec, range_bytes)?;
        let total = job.total();
        self.rotation.push_back(job.id().clone());
        self.jobs.insert(job.id().clone(), JobEntry::Running(job));
        Ok(total)
    }

    /// Leases the next range to `worker`, taking jobs in turn. `None`: no job has a range
    /// waiting whose host is under its limit.
    pub fn lease(&mut self, worker: &WorkerId, now_ms: u64) -> Option<Lease> {
        for pos in 0..self.rotation.len() {
            let id = self.rotation.get(pos)?.clone();
            let Some(JobEntry::Running(job)) = self.jobs.get(&id) else {
                continue;
            };
            if let Some(limit) = self.config.per_host_limit
                && self.host_load(job.host()) >= limit
            {
                continue;
            }
            let Some(JobEntry::Running(job)) = self.jobs.get_mut(&id) else {
                continue;
            };
            let lease_id = LeaseId(self.next_id);
            if let Some(lease) = job.grant(lease_id, worker, now_ms, self.config.lease_ms) {
                self.next_id += 1;
                self.lease_job.insert(lease_id, id);
                // The job served goes last; the ones skipped keep their places.
                if let Some(served) = self.rotation.remove(pos) {
                    self.rotation.push_back(served);
                }
                return Some(lease);
            }
        }
        None
    }

    /// Extends `worker`'s lease `lease` to `now_ms` + the lease time.
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        lease: LeaseId,
        now_ms: u64,
    ) -> Result<Heartbeat, LeaseError> {
        let lease_ms = self.config.lease_ms;
        match self.job_of(lease)? {
            Some(job) => job.heartbeat(worker, lease, now_ms, lease_ms),
            None => Ok(Heartbeat::Ended(Stale::JobEnded)),
        }
    }

    /// Takes back every active lease whose time ran out at or before `now_ms`; their ranges
    /// can be leased again (or their jobs failed, after the last attempt).
    pub fn expire(&mut self, now_ms: u64) -> Vec<Expired> {
        let max = self.config.max_attempts;
        let mut steps = Vec::new();
        for entry in self.jobs.values_mut() {
            let JobEntry::Running(job) = entry else {
                continue;
            };
            for id in job.due(now_ms) {
                let Some((lease, step)) = job.expire(id, max) else {
                    continue;
                };
                let exhausted = matches!(step, Step::Exhausted(_));
                steps.push((lease, step));
                if exhausted {
                    // The job ends; its other leases are released, not expired.
                    break;
                }
            }
        }
        steps
            .into_iter()
            .map(|(lease, step)| {
                let retry = match step {
                    Step::Requeued { attempts } => Retry::Requeued { attempts },
                    Step::Exhausted(failure) => Retry::JobFailed(self.fail_job(failure)),
                };
                Expired { lease, retry }
            })
            .collect()
    }

    /// Reports the result of `lease`'s range. See the module documentation for which
    /// results are taken.
    pub fn complete(
        &mut self,
        lease: LeaseId,
        result: RangeResult,
    ) -> Result<Completion, LeaseError> {
        let Some(job) = self.job_of(lease)? else {
            return Ok(Completion::Ignored(Stale::JobEnded));
        };
        match job.complete(lease, result)? {
            Accept::Ignored(stale) => Ok(Completion::Ignored(stale)),
            Accept::Accepted { superseded } => {
                let commit = job.take_commit();
                if let Some(c) = &commit {
                    self.end(&c.job.clone(), JobStatus::Committed);
                }
                Ok(Completion::Accepted { commit, superseded })
            }
        }
    }

    /// What [`Self::complete`] would answer for `lease` without taking a result: `None`
    /// if a result would be taken, else why not. Changes nothing.
    pub fn check_complete(&self, lease: LeaseId) -> Result<Option<Stale>, LeaseError> {
        if lease.0 == 0 || lease.0 >= self.next_id {
            return Err(LeaseError::UnknownLease(lease));
        }
        let job = self.lease_job.get(&lease).and_then(|id| self.jobs.get(id));
        Ok(match job {
            Some(JobEntry::Running(job)) => job.check_complete(lease),
            _ => Some(Stale::JobEnded),
        })
    }

    /// Marks range `index` of disk `disk` of `job` done with `result`, without a lease of
    /// this table: a result accepted before (by an earlier leader, or by the replicated
    /// catalog while this table's lease was stale). A lease holding the range is
    /// superseded. Returns the commit once every range is done; `Ok(None)` also when the
    /// range already had a result (the first one stands) or the job has ended.
    pub fn mark_done(
        &mut self,
        job: &JobId,
        disk: usize,
        index: usize,
        result: RangeResult,
    ) -> Result<Option<JobCommit>, LeaseError> {
        let Some(entry) = self.jobs.get_mut(job) else {
            return Err(LeaseError::UnknownJob(job.clone()));
        };
        let JobEntry::Running(running) = entry else {
            return Ok(None);
        };
        if !running.mark_done(disk, index, result)? {
            return Ok(None);
        }
        let commit = running.take_commit();
        if commit.is_some() {
            self.end(job, JobStatus::Committed);
        }
        Ok(commit)
    }

    /// Reports that `lease`'s worker could not back up its range.
    pub fn fail(
        &mut self,
        lease: LeaseId,
        error: impl Into<String>,
    ) -> Result<FailOutcome, LeaseError> {
        let max = self.config.max_attempts;
        let Some(job) = self.job_of(lease)? else {
            return Ok(FailOutcome::Ignored(Stale::JobEnded));
        };
        Ok(match job.fail(lease, error.into(), max) {
            Err(stale) => FailOutcome::Ignored(stale),
            Ok(Step::Requeued { attempts }) => FailOutcome::Retry(Retry::Requeued { attempts }),
            Ok(Step::Exhausted(failure)) => {
                FailOutcome::Retry(Retry::JobFailed(self.fail_job(failure)))
            }
        })
    }

    /// Ends a job without a commit, releasing its leases.
    pub fn cancel(&mut self, job: &JobId) -> Result<CancelOutcome, LeaseError> {
        match self.jobs.get(job) {
            None => Err(LeaseError::UnknownJob(job.clone())),
            Some(JobEntry::Ended(status)) => Ok(CancelOutcome::AlreadyEnded(*status)),
            Some(JobEntry::Running(_)) => Ok(CancelOutcome::Cancelled {
                released: self.end(job, JobStatus::Cancelled),
            }),
        }
    }

    pub fn status(&self, job: &JobId) -> Option<JobStatus> {
        match self.jobs.get(job)? {
            JobEntry::Running(j) => Some(j.status()),
            JobEntry::Ended(status) => Some(*status),
        }
    }

    /// Drops an ended job's status entry. `false` if the job is unknown or still running.
    pub fn forget(&mut self, job: &JobId) -> bool {
        if matches!(self.jobs.get(job), Some(JobEntry::Ended(_))) {
            self.jobs.remove(job);
            return true;
        }
        false
    }

    /// A lease of a running job, in whatever state it is (active, expired, done...).
    /// `None` once its job has ended, or if it was never handed out.
    pub fn get_lease(&self, lease: LeaseId) -> Option<&Lease> {
        match self.jobs.get(self.lease_job.get(&lease)?)? {
            JobEntry::Running(job) => job.lease(lease),
            JobEntry::Ended(_) => None,
        }
    }

    /// Every lease that now holds a range.
    pub fn active_leases(&self) -> impl Iterator<Item = &Lease> {
        self.running().flat_map(|j| j.active_leases())
    }

    /// The earliest time an active lease runs out: when [`Self::expire`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.running().filter_map(|j| j.next_deadline()).min()
    }

    fn running(&self) -> impl Iterator<Item = &RunningJob> {
        self.jobs.values().filter_map(|e| match e {
            JobEntry::Running(j) => Some(j),
            JobEntry::Ended(_) => None,
        })
    }

    /// Ranges of `host`'s jobs now leased.
    fn host_load(&self, host: &str) -> usize {
        self.running()
            .filter(|j| j.host() == host)
            .map(|j| j.active())
            .sum()
    }

    /// The running job `lease` belongs to; `None` if the job has ended; an error if the
    /// lease was never handed out.
    fn job_of(&mut self, lease: LeaseId) -> Result<Option<&mut RunningJob>, LeaseError> {
        if lease.0 == 0 || lease.0 >= self.next_id {
            return Err(LeaseError::UnknownLease(lease));
        }
        let Some(id) = self.lease_job.get(&lease) else {
            return Ok(None);
        };
        Ok(match self.jobs.get_mut(id) {
            Some(JobEntry::Running(job)) => Some(job),
            _ => None,
        })
    }

    /// Ends a failed job and fills in the leases it released.
    fn fail_job(&mut self, mut failure: JobFailure) -> JobFailure {
        failure.released = self.end(&failure.job.clone(), JobStatus::Failed);
        failure
    }

    /// Ends a running job with `status`; returns the leases it still held.
    fn end(&mut self, job: &JobId, status: JobStatus) -> Vec<Lease> {
        let Some(entry @ JobEntry::Running(_)) = self.jobs.get_mut(job) else {
            return Vec::new();
        };
        let JobEntry::Running(running) = std::mem::replace(entry, JobEntry::Ended(status)) else {
            return Vec::new();
        };
        self.rotation.retain(|j| j != job);
        for id in running.lease_ids() {
            self.lease_job.remove(&id);
        }
        running.release()
    }
}
