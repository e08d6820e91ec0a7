//! The coordinator's shared state: the lease table with the jobs and workers it serves
//! (behind one mutex, never held across an await), the catalog, the storage membership,
//! and the clock every lease time is read from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::epoch::{Epoch, Start};
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
    /// The lease numbers of this leadership ([`Epoch::NONE`] while not leading).
    pub(super) epoch: Epoch,
    /// The term in which this coordinator leads with its jobs taken over (`None`: not
    /// leading, or still taking over).
    pub(super) leading: Option<u64>,
}

/// Everything the request handlers and the background tasks share.
pub(super) struct Coordinator {
    pub(super) id: String,
    /// The cluster's name ("" if none): storage nodes must name the same.
    pub(super) cluster: String,
    pub(super) addr: SocketAddr,
    pub(super) lease_ms: u64,
    /// This process's start number: with the term, the epoch of lease numbers.
    pub(super) start: Start,
    pub(super) clock: Clock,
    pub(super) core: Mutex<Core>,
    /// The replicated catalog: snapshot records, registered hypervisor hosts, the
    /// storage membership, and jobs with their ranges' results (leases stay in the
    /// leader's memory: a new leader makes new ones for the ranges without a result).
    pub(super) raft: RaftCatalog,
    /// The term this coordinator leads in with its jobs taken over (see `Core::leading`),
    /// for long polls to notice a change.
    pub(super) leadership: watch::Sender<Option<u64>>,
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
    /// `Ok` on the leader once it has taken the running jobs over; else the `NotLeader`
    /// redirect, or UNAVAILABLE while taking over (jobs and workers are served by the
    /// leader only: the lease table lives in its memory).
    pub(super) fn leading(&self) -> Result<(), super::RequestError> {
        self.raft.ensure_leading()?;
        if self.core().leading.is_none() {
            return Err(super::RequestError::Unavailable(
                "this coordinator was just elected and is taking over the running jobs; retry in a moment"
                    .into(),
            ));
        }
        Ok(())
    }

    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        // The state stays consistent at every unlock (no call inside can panic halfway
        // through a change that matters), so a poisoned lock is still usable.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
