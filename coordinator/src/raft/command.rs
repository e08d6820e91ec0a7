//! The commands of the replicated catalog: every change the coordinator makes to its
//! durable state, as one serde enum. A command is proposed to the leader, replicated in
//! the Raft log and applied by [`super::state::CatalogState::apply`] on every member, in
//! log order. What the apply decides (accepted, or refused and why) comes back to the
//! proposer as an [`Outcome`].
//!
//! What is *not* a command: leases, heartbeats and lease expiry (leader-local soft state,
//! re-created by a new leader from the jobs' ranges that have no result), worker
//! registrations, and anything time-driven. Commands never read a clock: a time a record
//! carries (a snapshot's `time`) is chosen by the proposer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use bora_core::Digest;
use bora_core::host::HostSpec;
use bora_core::snapshot::{CbtRecord, DiskStats, SnapshotMeta};

/// One change to the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Command {
    /// Commits a snapshot record (the `CommitSnapshot` RPC of the embedded mode's pushes).
    /// Refused if the id exists.
    CommitSnapshot { meta: SnapshotMeta, parent: Parent },
    /// Forgets snapshot records `ids` of `vm` (`bora prune`); ids that are not there (or
    /// are another VM's) are skipped. Their chunks stay until garbage collection.
    ForgetSnapshots { vm: String, ids: Vec<String> },
    /// Adds a storage node, or changes a member's address.
    AddStorageNode { id: String, addr: String },
    /// Removes a storage node. Refused if it is not a member.
    RemoveStorageNode { id: String },
    /// Copies of each chunk (at least 1).
    SetReplicas { replicas: u32 },
    /// Registers a hypervisor host; one of the same name is replaced only with `replace`.
    AddHost { host: HostSpec, replace: bool },
    /// Unregisters a host. Refused if it is not registered.
    RemoveHost { name: String },
    /// Starts a backup job. Refused if the id was used, or the VM has a running job.
    StartJob(JobStart),
    /// A range's result: the first one accepted for a range wins, any later one is
    /// refused ([`super::Refusal::RangeDone`]).
    AcceptRange {
        job: String,
        /// The disk's position in [`JobStart::disks`].
        disk: u32,
        /// The range's position among the disk's ranges.
        index: u32,
        result: RangeDone,
    },
    /// Ends a running job. Committing requires every range to have a result and commits
    /// the snapshot record in the same step (the record's parent is the VM's latest
    /// snapshot, as [`Parent::Latest`]).
    EndJob { job: String, end: JobEnd },
    /// Keeps a second-site remote (`bora remote add`). `remote` is its definition as the
    /// replica crate writes it: a JSON object, validated there (URL, trust, token), whose
    /// `name` is `name`; this crate keeps it opaque. One of the same name is replaced only
    /// with `replace`.
    AddRemote {
        name: String,
        remote: String,
        replace: bool,
    },
    /// Forgets a remote. Refused if there is none of that name.
    RemoveRemote { name: String },
}

/// How a committed snapshot record gets its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parent {
    /// The VM's newest snapshot when the command is applied (job commits: what
    /// `commit_record` computes under its lock today).
    Latest,
    /// As the record names it (a record committed by a client that chose its parent).
    AsGiven,
}

/// A job as it starts: the VM, its host, and each disk with its number of ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStart {
    /// The job's id: the id of the snapshot it commits.
    pub id: String,
    pub vm: String,
    /// The hypervisor host the disks are read from.
    pub host: String,
    pub disks: Vec<JobDisk>,
    /// The range size the disks were split with (`ranges` of each disk is
    /// `planner::split_disk(size, chunk_size, range_bytes)`), so a new leader splits them
    /// the same way whatever its own config says. 0: unknown (older entries).
    #[serde(default)]
    pub range_bytes: u64,
    /// A live VM frozen by the leader that started the job: when the job ends under
    /// another leader, that one cleans up the VM's freeze.
    #[serde(default)]
    pub live: bool,
}

/// One disk of a job. `ranges` is computed by the proposer (`planner::split_disk` with its
/// `range-bytes`), so every member agrees on it whatever its own config says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDisk {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Image path or NBD URL the workers read.
    pub source: String,
    pub ranges: u32,
    /// Incremental: the dirty bitmap the source exposes…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
    /// …and the parent snapshot whose index the changed chunks are laid over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Recorded with the disk in the snapshot (`None`: the mode the job ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<CbtRecord>,
}

/// The accepted result of one range: who produced it and where its chunk entries are.
///
/// The entries themselves (a digest per chunk) do not go into the log: catalog writes
/// per backup stay O(ranges), not O(chunks). They are stored as index pieces in the
/// storage nodes (`core::index_store`) before the command is proposed; `pieces` names
/// them, so a new leader can build the job's index after a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDone {
    pub worker: String,
    /// The lease number the result was reported under.
    pub lease: u64,
    /// Chunk entries the worker reported.
    pub chunks: u64,
    pub pieces: Vec<Digest>,
    pub stats: DiskStats,
}

/// How a job ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "end")]
pub enum JobEnd {
    /// Every range is done and the snapshot (whose id must be the job's) is committed.
    Committed {
        meta: SnapshotMeta,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

/// Where a job is in the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum JobStatus {
    Running,
    Committed,
    Failed { error: String },
    Cancelled,
}

/// The storage membership after a change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageView {
    pub replicas: u32,
    /// Node id → address.
    pub nodes: BTreeMap<String, String>,
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "applied")]
pub enum Applied {
    /// A snapshot record was committed (as stored: with its parent).
    Snapshot {
        meta: SnapshotMeta,
    },
    /// Snapshot records forgotten (the ids that were there).
    Forgotten {
        ids: Vec<String>,
    },
    Storage {
        view: StorageView,
    },
    Host,
    Remote,
    JobStarted {
        ranges: u64,
    },
    RangeAccepted {
        done: u64,
        total: u64,
    },
    /// The job ended; `snapshot` is the record committed with it.
    JobEnded {
        status: JobStatus,
        snapshot: Option<SnapshotMeta>,
    },
    /// A Raft entry with no command (a leader's blank entry, a membership change).
    Nothing,
}

/// Why the state machine refused a command. Refusals are decided identically on every
/// member; the state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "refused")]
pub enum Refusal {
    #[error("snapshot {id} already exists")]
    DuplicateSnapshot { id: String },
    #[error("{reason}")]
    Invalid { reason: String },
    #[error("host {name} is already registered (bora host add --replace to change it)")]
    HostExists { name: String },
    #[error("no host {name} is registered")]
    NoHost { name: String },
    #[error("a remote named {name} exists already (pass --replace to change it)")]
    RemoteExists { name: String },
    #[error("no remote named {name}")]
    NoRemote { name: String },
    #[error("storage node {id} is not a member")]
    UnknownNode { id: String },
    #[error("job {job} is unknown")]
    UnknownJob { job: String },
    #[error("job {job} already exists")]
    DuplicateJob { job: String },
    #[error("vm {vm} already has a running job ({job})")]
    VmBusy { vm: String, job: String },
    #[error("job {job} has ended ({status:?})")]
    JobEnded { job: String, status: JobStatus },
    #[error("job {job} has no range {index} of disk {disk}")]
    NoSuchRange { job: String, disk: u32, index: u32 },
    #[error("range {index} of disk {disk} of job {job} already has a result (lease {lease})")]
    RangeDone {
        job: String,
        disk: u32,
        index: u32,
        lease: u64,
    },
    #[error("job {job} cannot commit: {missing} ranges have no result")]
    RangesMissing { job: String, missing: u64 },
}

/// What applying a command answers: the response type of the Raft state machine.
pub type Outcome = Result<Applied, Refusal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_outcomes_round_trip_through_json() {
        let c = Command::AcceptRange {
            job: "j".into(),
            disk: 0,
            index: 3,
            result: RangeDone {
                worker: "w".into(),
                lease: 7,
                chunks: 2,
                pieces: vec![Digest([1; 32])],
                stats: DiskStats::default(),
            },
        };
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"op\":\"accept-range\""), "{text}");
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), c);
        let o: Outcome = Err(Refusal::RangeDone {
            job: "j".into(),
            disk: 0,
            index: 3,
            lease: 7,
        });
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), o);
    }
}
