//! What the lease table is given and what it hands out: job and worker names, a job's
//! disks, the table's settings, and the lease itself.

use std::fmt;

use bora_core::ByteRange;

use crate::planner::DEFAULT_RANGE_BYTES;

/// A backup job's name (one VM's backup: all its disks commit together).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub String);

/// A worker's name, as it asks for leases and sends heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub String);

macro_rules! string_id {
    ($t:ident) => {
        impl From<&str> for $t {
            fn from(s: &str) -> $t {
                $t(s.to_string())
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> $t {
                $t(s)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_id!(JobId);
string_id!(WorkerId);

/// A lease's number: unique in its table, increasing, never reused (the first is 1).
///
/// It is also the lease's epoch: reports name the lease, not the range, so a report from an
/// expired or superseded lease of a range is told apart from the current holder's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// Settings of a lease table. Times are milliseconds on the caller's clock: the table never
/// reads a clock, every call that needs the time is given `now_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease lasts after it is granted or last extended by a heartbeat.
    pub lease_ms: u64,
    /// Leases one range may be given before its job fails. A lease that fails or expires
    /// uses one attempt; expiry counts too, so a range that kills every worker that reads
    /// it (out of memory, a crash on bad data) ends the job instead of looping forever.
    /// 0 behaves like 1.
    pub max_attempts: u32,
    /// At most this many ranges of one host's jobs leased at once (`None`: no limit).
    /// Every leased range is a reader on the hypervisor; the host's VMs run on the same
    /// disks and CPUs. `Some(0)` leases nothing of any host: a pause.
    pub per_host_limit: Option<usize>,
    /// About this many bytes per range ([`crate::planner::split_disk`] rounds up to whole
    /// chunks).
    pub range_bytes: u64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease_ms: 30_000,
            max_attempts: 3,
            per_host_limit: None,
            range_bytes: DEFAULT_RANGE_BYTES,
        }
    }
}

/// One disk of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
}

/// A job to split into ranges and lease out: every disk of one VM on `host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub id: JobId,
    /// The hypervisor host the disks are read from, for [`LeaseConfig::per_host_limit`].
    pub host: String,
    pub disks: Vec<DiskSpec>,
}

/// One range handed to one worker until `expires_ms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub worker: WorkerId,
    pub job: JobId,
    /// The disk's position in [`JobSpec::disks`].
    pub disk: usize,
    /// The range's position among the disk's ranges (the order of
    /// [`crate::planner::split_disk`]).
    pub index: usize,
    pub range: ByteRange,
    /// 1 for the range's first lease, 2 for the first retry, and so on.
    pub attempt: u32,
    /// When the lease runs out unless a heartbeat extends it.
    pub expires_ms: u64,
}
