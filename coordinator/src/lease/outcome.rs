//! What the lease table answers: outcomes of each call, the job's commit or failure, and the
//! errors for input that names nothing the table knows.
//!
//! A report that arrives too late (its range already has a result, its job has ended) is an
//! ordinary outcome ([`Stale`]), not an error: workers race, networks repeat messages, and
//! neither may fail a job. Errors are for input that cannot be right: a lease number never
//! handed out, a job that was never added, a result whose chunks lie outside its range.

use std::fmt;

use bora_core::ByteRange;
use bora_core::job::RangeResult;

use super::types::{JobId, Lease, LeaseId, WorkerId};

/// Why a report about a lease changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The range already has a result, from this lease or another; the first one stands.
    RangeDone,
    /// The lease ran out and its range was queued again (the expiry used the attempt).
    LeaseExpired,
    /// The lease already reported a failure and its range was queued again.
    LeaseFailed,
    /// The job was committed, failed or cancelled (or forgotten).
    JobEnded,
}

/// The answer to [`super::LeaseTable::complete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The result is now the range's result.
    Accepted {
        /// Set when this was the job's last range: the job is ready to commit.
        commit: Option<JobCommit>,
        /// The range's current holder when an expired lease's result came first: its work
        /// is no longer needed (tell its worker to stop).
        superseded: Option<Lease>,
    },
    /// Nothing changed.
    Ignored(Stale),
}

/// The answer to [`super::LeaseTable::heartbeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease now lasts until `expires_ms`.
    Extended { expires_ms: u64 },
    /// The lease is over; the worker should stop reading its range. (After
    /// [`Stale::LeaseExpired`] a result sent anyway is still taken if it comes first.)
    Ended(Stale),
}

/// What happened to a range whose lease failed or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The range is queued again (at the front of its job's queue); `attempts` leases of
    /// it have been given so far.
    Requeued { attempts: u32 },
    /// The range used its last attempt: the job failed and will not commit.
    JobFailed(JobFailure),
}

/// The answer to [`super::LeaseTable::fail`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    Retry(Retry),
    Ignored(Stale),
}

/// A lease [`super::LeaseTable::expire`] took back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub lease: Lease,
    pub retry: Retry,
}

/// The answer to [`super::LeaseTable::cancel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job ended without a commit; these leases were still held (tell their workers).
    Cancelled { released: Vec<Lease> },
    /// The job had already ended.
    AlreadyEnded(JobStatus),
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// `done` of `total` ranges have a result.
    Running {
        done: usize,
        total: usize,
    },
    Committed,
    Failed,
    Cancelled,
}

/// Every range of every disk of a job has a result: the job is ready to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCommit {
    pub job: JobId,
    pub host: String,
    /// In the order of [`super::JobSpec::disks`].
    pub disks: Vec<DiskCommit>,
}

/// One disk of a [`JobCommit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCommit {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Every range of the disk, in disk order; together they cover the disk once.
    pub ranges: Vec<CommittedRange>,
}

/// A range and the one result accepted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedRange {
    pub range: ByteRange,
    /// The lease whose result this is.
    pub lease: LeaseId,
    pub result: RangeResult,
}

/// Why the last attempt on a range ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailCause {
    /// The worker reported this error.
    Error(String),
    /// The worker's lease ran out without a heartbeat.
    Expired { worker: WorkerId },
}

impl fmt::Display for FailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailCause::Error(e) => f.write_str(e),
            FailCause::Expired { worker } => write!(f, "lease of worker {worker} expired"),
        }
    }
}

/// A job failed because one range used all its attempts. Nothing of it is committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "job {job} disk {disk} range {index} ({range}): gave up after {attempts} attempts, last: {cause}"
)]
pub struct JobFailure {
    pub job: JobId,
    pub disk: String,
    pub index: usize,
    pub range: ByteRange,
    pub attempts: u32,
    pub cause: FailCause,
    /// Other leases of the job that were still held (tell their workers to stop).
    pub released: Vec<Lease>,
}

/// Input the table cannot act on. The table is unchanged when one is returned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("job {0} already exists")]
    DuplicateJob(JobId),
    #[error("job {0}: no disks")]
    NoDisks(JobId),
    #[error("job {job}: disk {disk} listed twice")]
    DuplicateDisk { job: JobId, disk: String },
    #[error("job {job} disk {disk}: size is zero")]
    EmptyDisk { job: JobId, disk: String },
    #[error("job {job} disk {disk}: chunk size is zero")]
    ZeroChunkSize { job: JobId, disk: String },
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    #[error("job {job} has no range {index} of disk {disk}")]
    NoSuchRange {
        job: JobId,
        disk: usize,
        index: usize,
    },
    #[error("lease {0} was never handed out")]
    UnknownLease(LeaseId),
    #[error("lease {lease} belongs to worker {owner}, not {worker}")]
    WrongWorker {
        lease: LeaseId,
        owner: WorkerId,
        worker: WorkerId,
    },
    #[error(
        "job {job} disk {disk} range {index} ({range}): result names chunk {chunk} outside the range"
    )]
    ChunkOutsideRange {
        job: JobId,
        disk: String,
        index: usize,
        range: ByteRange,
        chunk: usize,
    },
}
