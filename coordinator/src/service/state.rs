//! The coordinator's shared state: the lease table with the jobs and workers it serves
//! (behind one mutex, never held across an await), the catalog, the storage membership,
//! and the clock every lease time is read from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::epoch::Epoch;
use super::jobs::JobRecord;
use super::storage::Storage;
use super::workers::WorkerRecord;
use crate::lease::{JobCommit, JobId, LeaseTable, WorkerId};
use crate::live::LiveVms;
use crate::raft::RaftCatalog;

/// Ended jobs whose status is kept for `WaitJob` and `Status`; older ones are forgotten.
pub(super) const KEEP_ENDED_JOBS: usize = 1000;

/// Milliseconds since the coordinator started, on tokio's clock (so tests can pause it).
pub(super) struct Clock {
    start: Instant,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of `ms` on this clock.
    pub(super) fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
}

/// What the mutex guards: the lease table and the records that go with its jobs.
pub(super) struct Core {
    pub(super) table: LeaseTable,
    pub(super) jobs: HashMap<JobId, JobRecord>,
    /// Ended jobs, oldest first, for forgetting the oldest beyond [`KEEP_ENDED_JOBS`].
    pub(super) ended: VecDeque<JobId>,
    pub(super) workers: BTreeMap<WorkerId, WorkerRecord>,
    /// Start order of jobs.
    pub(super) next_seq: u64,
    /// VMs whose live backup is being prepared (frozen) and has no job yet.
    pub(super) preparing: HashSet<String>,
}

/// Everything the request handlers and the background tasks share.
pub(super) struct Coordinator {
    pub(super) id: String,
    /// The cluster's name ("" if none): storage nodes must name the same.
    pub(super) cluster: String,
    pub(super) addr: SocketAddr,
    pub(super) lease_ms: u64,
    pub(super) epoch: Epoch,
    pub(super) clock: Clock,
    pub(super) core: Mutex<Core>,
    /// The replicated catalog: snapshot records, registered hypervisor hosts and the
    /// storage membership (jobs and leases stay in this leader's memory for now).
    pub(super) raft: RaftCatalog,
    /// How live VMs are frozen and read; unset: `BackupVm` and `ListVms` are refused.
    pub(super) live: OnceLock<Arc<dyn LiveVms>>,
    pub(super) storage: Storage,
    /// Wakes the expiry timer when a lease with an earlier deadline is granted.
    pub(super) expiry: Notify,
    /// Wakes long-polling `Lease` calls when the lease table changed (a job started, a
    /// range was queued again or a lease ended).
    pub(super) work: Notify,
    /// Jobs ready to commit, for the commit loop of `run`.
    pub(super) commits: mpsc::UnboundedSender<JobCommit>,
    /// Set when the coordinator stops: long polls answer at once.
    pub(super) stopping: watch::Sender<bool>,
}

impl Coordinator {
    /// `Ok` on the leader; else the `NotLeader` redirect (jobs and workers are served by
    /// the leader only: jobs live in its memory).
    pub(super) fn leading(&self) -> Result<(), super::RequestError> {
        Ok(self.raft.ensure_leading()?)
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        // The state stays consistent at every unlock (no call inside can panic halfway
        // through a change that matters), so a poisoned lock is still usable.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
