//! One running job inside the lease table: its ranges (pending, leased, done), the queue of
//! ranges to hand out, and every lease given for it so far.
//!
//! A range's state and its leases live together here so that every change to one is made
//! next to the other: a range is `Done` exactly once, and only through a lease of it.

use std::collections::{BTreeMap, VecDeque};

use bora_core::ByteRange;
use bora_core::job::RangeResult;

use super::outcome::{
    CommittedRange, DiskCommit, FailCause, Heartbeat, JobCommit, JobFailure, JobStatus, LeaseError,
    Stale,
};
use super::types::{JobId, JobSpec, Lease, LeaseId, WorkerId};
use crate::planner::split_disk;

/// Where a lease is. Only `Active` leases hold their range and count against the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseState {
    Active,
    /// Ran out; its range was queued again. Its result is still taken if it comes first.
    Expired,
    /// Reported a failure; its range was queued again.
    Failed,
    /// Its result is the range's result.
    Completed,
    /// Held the range when an expired lease's result came first.
    Superseded,
}

impl LeaseState {
    /// Why a report on a lease in this state changes nothing (`None`: it may).
    fn stale(self) -> Option<Stale> {
        match self {
            LeaseState::Active => None,
            LeaseState::Expired => Some(Stale::LeaseExpired),
            LeaseState::Failed => Some(Stale::LeaseFailed),
            LeaseState::Completed | LeaseState::Superseded => Some(Stale::RangeDone),
        }
    }
}

struct LeaseRecord {
    lease: Lease,
    state: LeaseState,
}

enum Slot {
    /// Waiting in the queue.
    Pending,
    /// Held by this (active) lease.
    Leased(LeaseId),
    Done {
        lease: LeaseId,
        result: RangeResult,
    },
}

struct RangeSlot {
    range: ByteRange,
    /// Leases given for this range so far.
    attempts: u32,
    state: Slot,
}

struct Disk {
    name: String,
    size: u64,
    chunk_size: u32,
    ranges: Vec<RangeSlot>,
}

/// What [`RunningJob::complete`] did.
pub(super) enum Accept {
    Accepted { superseded: Option<Lease> },
    Ignored(Stale),
}

/// What a failed or expired lease did to its range.
pub(super) enum Step {
    Requeued {
        attempts: u32,
    },
    /// The range used its last attempt; `released` is still empty.
    Exhausted(JobFailure),
}

pub(super) struct RunningJob {
    id: JobId,
    host: String,
    disks: Vec<Disk>,
    /// Pending ranges as `(disk, index)`, next first. May hold a range that an expired
    /// lease's late result finished meanwhile; such entries are skipped when popped.
    queue: VecDeque<(usize, usize)>,
    done: usize,
    total: usize,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    /// Leases in `leases` that are `Active`.
    active: usize,
}

impl RunningJob {
    /// Checks `spec` and splits every disk into ranges, all pending in disk order.
    pub(super) fn new(spec: JobSpec, range_bytes: u64) -> Result<RunningJob, LeaseError> {
        let job = spec.id;
        if spec.disks.is_empty() {
            return Err(LeaseError::NoDisks(job));
        }
        let mut disks: Vec<Disk> = Vec::with_capacity(spec.disks.len());
        for d in spec.disks {
            let (j, disk) = (job.clone(), d.name.clone());
            if disks.iter().any(|x| x.name == d.name) {
                return Err(LeaseError::DuplicateDisk { job: j, disk });
            }
            if d.size == 0 {
                return Err(LeaseError::EmptyDisk { job: j, disk });
            }
            if d.chunk_size == 0 {
                return Err(LeaseError::ZeroChunkSize { job: j, disk });
            }
            let ranges = split_disk(d.size, d.chunk_size, range_bytes)
                .into_iter()
                .map(|range| RangeSlot {
                    range,
                    attempts: 0,
                    state: Slot::Pending,
                })
                .collect();
            disks.push(Disk {
                name: d.name,
                size: d.size,
                chunk_size: d.chunk_size,
                ranges,
            });
        }
        let queue: VecDeque<_> = disks
            .iter()
            .enumerate()
            .flat_map(|(d, disk)| (0..disk.ranges.len()).map(move |i| (d, i)))
            .collect();
        Ok(RunningJob {
            id: job,
            host: spec.host,
            disks,
            total: queue.len(),
            queue,
            done: 0,
            leases: BTreeMap::new(),
            active: 0,
        })
    }

    pub(super) fn id(&self) -> &JobId {
        &self.id
    }

    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// Leases now holding a range of this job.
    pub(super) fn active(&self) -> usize {
        self.active
    }

    pub(super) fn total(&self) -> usize {
        self.total
    }

    pub(super) fn status(&self) -> JobStatus {
        JobStatus::Running {
            done: self.done,
            total: self.total,
        }
    }

    pub(super) fn active_leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases
            .values()
            .filter(|r| r.state == LeaseState::Active)
            .map(|r| &r.lease)
    }

    pub(super) fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id).map(|r| &r.lease)
    }

    pub(super) fn lease_ids(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.leases.keys().copied()
    }

    /// Gives the next pending range to `worker` as lease `id`, if there is one.
    pub(super) fn grant(
        &mut self,
        id: LeaseId,
        worker: &WorkerId,
        now_ms: u64,
        lease_ms: u64,
    ) -> Option<Lease> {
        while let Some((d, i)) = self.queue.pop_front() {
            let Some(slot) = self.disks.get_mut(d).and_then(|x| x.ranges.get_mut(i)) else {
                continue;
            };
            if !matches!(slot.state, Slot::Pending) {
                continue;
            }
            slot.attempts += 1;
            slot.state = Slot::Leased(id);
            let lease = Lease {
                id,
                worker: worker.clone(),
                job: self.id.clone(),
                disk: d,
                index: i,
                range: slot.range,
                attempt: slot.attempts,
                expires_ms: now_ms.saturating_add(lease_ms),
            };
            let record = LeaseRecord {
                lease: lease.clone(),
                state: LeaseState::Active,
            };
            self.leases.insert(id, record);
            self.active += 1;
            return Some(lease);
        }
        None
    }

    /// Extends an active lease to `now_ms + lease_ms` (never shortens it).
    pub(super) fn heartbeat(
        &mut self,
        worker: &WorkerId,
        id: LeaseId,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Heartbeat, LeaseError> {
        let Some(rec) = self.leases.get_mut(&id) else {
            return Ok(Heartbeat::Ended(Stale::JobEnded));
        };
        if rec.lease.worker != *worker {
            return Err(LeaseError::WrongWorker {
                lease: id,
                owner: rec.lease.worker.clone(),
                worker: worker.clone(),
            });
        }
        if let Some(stale) = rec.state.stale() {
            return Ok(Heartbeat::Ended(stale));
        }
        let expires_ms = rec.lease.expires_ms.max(now_ms.saturating_add(lease_ms));
        rec.lease.expires_ms = expires_ms;
        Ok(Heartbeat::Extended { expires_ms })
    }

    /// Takes `result` as the range's result if the range has none yet and the lease is
    /// active or expired (accept-if-first).
    pub(super) fn complete(
        &mut self,
        id: LeaseId,
        result: RangeResult,
    ) -> Result<Accept, LeaseError> {
        let Some(rec) = self.leases.get(&id) else {
            return Ok(Accept::Ignored(Stale::JobEnded));
        };
        let (d, i, state) = (rec.lease.disk, rec.lease.index, rec.state);
        let Some(disk) = self.disks.get_mut(d) else {
            return Ok(Accept::Ignored(Stale::JobEnded));
        };
        let cs = u64::from(disk.chunk_size);
        let Some(slot) = disk.ranges.get_mut(i) else {
            return Ok(Accept::Ignored(Stale::JobEnded));
        };
        if matches!(slot.state, Slot::Done { .. }) {
            return Ok(Accept::Ignored(Stale::RangeDone));
        }
        match state {
            LeaseState::Active | LeaseState::Expired => {}
            LeaseState::Failed => return Ok(Accept::Ignored(Stale::LeaseFailed)),
            LeaseState::Completed | LeaseState::Superseded => {
                return Ok(Accept::Ignored(Stale::RangeDone));
            }
        }
        let (first, end) = (slot.range.offset / cs, slot.range.end().div_ceil(cs));
        if let Some(&(chunk, _)) = result
            .entries
            .iter()
            .find(|(c, _)| !(first..end).contains(&(*c as u64)))
        {
            return Err(LeaseError::ChunkOutsideRange {
                job: self.id.clone(),
                disk: disk.name.clone(),
                index: i,
                range: slot.range,
                chunk,
            });
        }
        let holder = match slot.state {
            Slot::Leased(h) if h != id => Some(h),
            _ => None,
        };
        slot.state = Slot::Done { lease: id, result };
        self.done += 1;
        self.set_state(id, LeaseState::Completed);
        let superseded = holder.and_then(|h| {
            self.set_state(h, LeaseState::Superseded);
            self.leases.get(&h).map(|r| r.lease.clone())
        });
        Ok(Accept::Accepted { superseded })
    }

    /// Why [`Self::complete`] would ignore a result of lease `id` (`None`: it would take it).
    pub(super) fn check_complete(&self, id: LeaseId) -> Option<Stale> {
        let Some(rec) = self.leases.get(&id) else {
            return Some(Stale::JobEnded);
        };
        let slot = self
            .disks
            .get(rec.lease.disk)
            .and_then(|d| d.ranges.get(rec.lease.index));
        match slot {
            None => Some(Stale::JobEnded),
            Some(s) if matches!(s.state, Slot::Done { .. }) => Some(Stale::RangeDone),
            Some(_) => match rec.state {
                LeaseState::Active | LeaseState::Expired => None,
                LeaseState::Failed => Some(Stale::LeaseFailed),
                LeaseState::Completed | LeaseState::Superseded => Some(Stale::RangeDone),
            },
        }
    }

    /// Marks a range done without a lease of this table (see
    /// [`super::LeaseTable::mark_done`]). `false`: it already had a result.
    pub(super) fn mark_done(
        &mut self,
        d: usize,
        i: usize,
        result: RangeResult,
    ) -> Result<bool, LeaseError> {
        let job = self.id.clone();
        let Some(disk) = self.disks.get_mut(d) else {
            return Err(LeaseError::NoSuchRange {
                job,
                disk: d,
                index: i,
            });
        };
        let Some(slot) = disk.ranges.get_mut(i) else {
            return Err(LeaseError::NoSuchRange {
                job,
                disk: d,
                index: i,
            });
        };
        let holder = match slot.state {
            Slot::Done { .. } => return Ok(false),
            Slot::Leased(h) => Some(h),
            Slot::Pending => None,
        };
        // A pending range stays in the queue; it is skipped when popped.
        slot.state = Slot::Done {
            lease: LeaseId(0),
            result,
        };
        self.done += 1;
        if let Some(h) = holder {
            self.set_state(h, LeaseState::Superseded);
        }
        Ok(true)
    }

    /// An active lease's worker gave up on its range.
    pub(super) fn fail(
        &mut self,
        id: LeaseId,
        error: String,
        max_attempts: u32,
    ) -> Result<Step, Stale> {
        let Some(rec) = self.leases.get(&id) else {
            return Err(Stale::JobEnded);
        };
        if let Some(stale) = rec.state.stale() {
            return Err(stale);
        }
        let (d, i) = (rec.lease.disk, rec.lease.index);
        self.set_state(id, LeaseState::Failed);
        Ok(self.retry(d, i, FailCause::Error(error), max_attempts))
    }

    /// Active leases that run out at or before `now_ms`, oldest first.
    pub(super) fn due(&self, now_ms: u64) -> Vec<LeaseId> {
        self.active_leases()
            .filter(|l| l.expires_ms <= now_ms)
            .map(|l| l.id)
            .collect()
    }

    /// The earliest time an active lease runs out.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.active_leases().map(|l| l.expires_ms).min()
    }

    /// Takes an active lease back.
    pub(super) fn expire(&mut self, id: LeaseId, max_attempts: u32) -> Option<(Lease, Step)> {
        let rec = self.leases.get(&id)?;
        if rec.state != LeaseState::Active {
            return None;
        }
        let lease = rec.lease.clone();
        self.set_state(id, LeaseState::Expired);
        let cause = FailCause::Expired {
            worker: lease.worker.clone(),
        };
        let step = self.retry(lease.disk, lease.index, cause, max_attempts);
        Some((lease, step))
    }

    /// Every range has a result: moves the results out, in disk and range order. `None`
    /// (and nothing moved) while a range is missing one.
    pub(super) fn take_commit(&mut self) -> Option<JobCommit> {
        let all_done = self
            .disks
            .iter()
            .flat_map(|d| &d.ranges)
            .all(|s| matches!(s.state, Slot::Done { .. }));
        if !all_done || self.done != self.total {
            return None;
        }
        let disks = std::mem::take(&mut self.disks)
            .into_iter()
            .map(|d| DiskCommit {
                name: d.name,
                size: d.size,
                chunk_size: d.chunk_size,
                ranges: d
                    .ranges
                    .into_iter()
                    .filter_map(|s| match s.state {
                        Slot::Done { lease, result } => Some(CommittedRange {
                            range: s.range,
                            lease,
                            result,
                        }),
                        _ => None,
                    })
                    .collect(),
            })
            .collect();
        Some(JobCommit {
            job: self.id.clone(),
            host: self.host.clone(),
            disks,
        })
    }

    /// The job ends: every active lease is released and returned.
    pub(super) fn release(self) -> Vec<Lease> {
        self.leases
            .into_values()
            .filter(|r| r.state == LeaseState::Active)
            .map(|r| r.lease)
            .collect()
    }

    /// Queues the range again, or gives up on it after its last attempt.
    fn retry(&mut self, d: usize, i: usize, cause: FailCause, max_attempts: u32) -> Step {
        // Leases are only made for ranges that exist, so both lookups succeed.
        let Some(disk) = self.disks.get_mut(d) else {
            return Step::Requeued { attempts: 0 };
        };
        let Some(slot) = disk.ranges.get_mut(i) else {
            return Step::Requeued { attempts: 0 };
        };
        if slot.attempts >= max_attempts.max(1) {
            return Step::Exhausted(JobFailure {
                job: self.id.clone(),
                disk: disk.name.clone(),
                index: i,
                range: slot.range,
                attempts: slot.attempts,
                cause,
                released: Vec::new(),
            });
        }
        slot.state = Slot::Pending;
        self.queue.push_front((d, i));
        Step::Requeued {
            attempts: slot.attempts,
        }
    }

    /// Moves a lease to `state`, keeping the count of active leases.
    fn set_state(&mut self, id: LeaseId, state: LeaseState) {
        if let Some(rec) = self.leases.get_mut(&id) {
            match (rec.state == LeaseState::Active, state == LeaseState::Active) {
                (true, false) => self.active -= 1,
                (false, true) => self.active += 1,
                _ => {}
            }
            rec.state = state;
        }
    }
}
