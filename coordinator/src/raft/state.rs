//! The replicated catalog's state and the one function that changes it,
//! [`CatalogState::apply`]: pure and deterministic (no clock, no I/O, no randomness, only
//! ordered maps), so every member that applies the same log holds the same state, and the
//! invariants — a range is done once, a committed snapshot is never lost — are checked
//! against it in property tests.
//!
//! `apply` also says which records it touched ([`Key`]), so the store writes only those
//! to RocksDB, in the same batch as the applied log id.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use bora_core::host::{HOST_FORMAT_VERSION, HostSpec};
use bora_core::snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotMeta, check_name};

use super::command::{
    Applied, Command, JobDisk, JobEnd, JobStart, JobStatus, Outcome, Parent, RangeDone, Refusal,
    StorageView,
};

/// Ended jobs kept (for late reports and status); older ones are forgotten, oldest first.
pub const KEEP_ENDED_JOBS: usize = 1000;

/// Copies of each chunk before any `SetReplicas`.
pub const DEFAULT_REPLICAS: u32 = 2;

/// One committed snapshot record and its place in commit order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSnapshot {
    /// Commit order over every VM (1, 2, ...).
    pub seq: u64,
    pub meta: SnapshotMeta,
}

/// A job in the replicated state: what it reads and which ranges have their result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub vm: String,
    pub host: String,
    pub disks: Vec<JobDisk>,
    pub status: JobStatus,
    /// Order in which the job ended (for forgetting the oldest); `None` while running.
    pub ended: Option<u64>,
    /// As [`JobStart::range_bytes`].
    #[serde(default)]
    pub range_bytes: u64,
    /// As [`JobStart::live`].
    #[serde(default)]
    pub live: bool,
    /// `(disk, range index)` → the result accepted for it.
    #[serde(with = "range_map")]
    pub done: BTreeMap<(u32, u32), RangeDone>,
}

impl JobState {
    pub fn total(&self) -> u64 {
        self.disks.iter().map(|d| u64::from(d.ranges)).sum()
    }
}

/// A record `apply` changed (or removed): the store rewrites exactly these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Snapshot {
        vm: String,
        id: String,
    },
    Host(String),
    Remote(String),
    StorageNode(String),
    /// Replicas and the sequence counters.
    Counters,
    /// A job's header (removed with all its ranges when the job is forgotten).
    Job(String),
    Range {
        job: String,
        disk: u32,
        index: u32,
    },
}

/// Everything the catalog replicates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogState {
    /// VM → its snapshots, oldest first.
    pub snapshots: BTreeMap<String, Vec<StoredSnapshot>>,
    pub hosts: BTreeMap<String, HostSpec>,
    pub storage: StorageView,
    pub jobs: BTreeMap<String, JobState>,
    pub counters: Counters,
    /// Second-site remotes: name → definition (JSON, opaque here; see
    /// [`Command::AddRemote`]). Absent from snapshots made before remotes were
    /// replicated.
    #[serde(default)]
    pub remotes: BTreeMap<String, String>,
}

/// Sequence counters and settings kept as one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The next snapshot's commit sequence.
    pub next_snapshot: u64,
    /// The next ended job's sequence.
    pub next_end: u64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            next_snapshot: 1,
            next_end: 1,
        }
    }
}

impl Default for CatalogState {
    fn default() -> CatalogState {
        CatalogState {
            snapshots: BTreeMap::new(),
            hosts: BTreeMap::new(),
            storage: StorageView {
                replicas: DEFAULT_REPLICAS,
                nodes: BTreeMap::new(),
            },
            jobs: BTreeMap::new(),
            counters: Counters::default(),
            remotes: BTreeMap::new(),
        }
    }
}

fn invalid(reason: String) -> Refusal {
    Refusal::Invalid { reason }
}

impl CatalogState {
    /// Every snapshot (of `vm`, if given), in commit order.
    pub fn list(&self, vm: Option<&str>) -> Vec<SnapshotMeta> {
        let mut all: Vec<&StoredSnapshot> = match vm {
            Some(vm) => self.snapshots.get(vm).into_iter().flatten().collect(),
            None => self.snapshots.values().flatten().collect(),
        };
        all.sort_by_key(|s| s.seq);
        all.into_iter().map(|s| s.meta.clone()).collect()
    }

    /// The newest snapshot of `vm`.
    pub fn latest(&self, vm: &str) -> Option<&SnapshotMeta> {
        self.snapshots.get(vm)?.last().map(|s| &s.meta)
    }

    /// A snapshot of `vm` by id, or its newest for `"latest"`.
    pub fn get(&self, vm: &str, id: &str) -> Option<&SnapshotMeta> {
        if id == "latest" {
            return self.latest(vm);
        }
        self.snapshots
            .get(vm)?
            .iter()
            .find(|s| s.meta.id.as_str() == id)
            .map(|s| &s.meta)
    }

    /// The snapshot `id`, of whichever VM.
    pub fn find(&self, id: &str) -> Option<&SnapshotMeta> {
        self.snapshots
            .values()
            .flatten()
            .map(|s| &s.meta)
            .find(|m| m.id.as_str() == id)
    }

    fn has_snapshot(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// Whether job `id` is (or was, and its snapshot is kept) a job of `vm`.
    pub fn job_of_vm(&self, id: &str, vm: &str) -> bool {
        match self.jobs.get(id) {
            Some(j) => j.vm == vm,
            None => self.find(id).is_some_and(|m| m.vm == vm),
        }
    }

    /// Applies one command: the state changes only if the outcome is `Ok`. Returns the
    /// outcome and the records touched.
    pub fn apply(&mut self, command: &Command) -> (Outcome, Vec<Key>) {
        let mut touched = Vec::new();
        let outcome = self.apply_inner(command, &mut touched);
        if outcome.is_err() {
            touched.clear();
        }
        (outcome, touched)
    }

    fn apply_inner(&mut self, command: &Command, touched: &mut Vec<Key>) -> Outcome {
        match command {
            Command::CommitSnapshot { meta, parent } => {
                let meta = self.commit_snapshot(meta, *parent, touched)?;
                Ok(Applied::Snapshot { meta })
            }
            Command::ForgetSnapshots { vm, ids } => {
                let mut gone = Vec::new();
                if let Some(snaps) = self.snapshots.get_mut(vm) {
                    snaps.retain(|s| {
                        let forget = ids.iter().any(|i| i == s.meta.id.as_str());
                        if forget {
                            gone.push(s.meta.id.to_string());
                        }
                        !forget
                    });
                    if snaps.is_empty() {
                        self.snapshots.remove(vm);
                    }
                }
                touched.extend(gone.iter().map(|id| Key::Snapshot {
                    vm: vm.clone(),
                    id: id.clone(),
                }));
                Ok(Applied::Forgotten { ids: gone })
            }
            Command::AddStorageNode { id, addr } => {
                crate::config::check_node(id, addr).map_err(invalid)?;
                if self.storage.nodes.get(id) != Some(addr) {
                    self.storage.nodes.insert(id.clone(), addr.clone());
                    touched.push(Key::StorageNode(id.clone()));
                }
                Ok(Applied::Storage {
                    view: self.storage.clone(),
                })
            }
            Command::RemoveStorageNode { id } => {
                if self.storage.nodes.remove(id).is_none() {
                    return Err(Refusal::UnknownNode { id: id.clone() });
                }
                touched.push(Key::StorageNode(id.clone()));
                Ok(Applied::Storage {
                    view: self.storage.clone(),
                })
            }
            Command::SetReplicas { replicas } => {
                if *replicas == 0 {
                    return Err(invalid("replicas must be at least 1".into()));
                }
                self.storage.replicas = *replicas;
                touched.push(Key::Counters);
                Ok(Applied::Storage {
                    view: self.storage.clone(),
                })
            }
            Command::AddHost { host, replace } => {
                check_name("host", &host.name).map_err(invalid)?;
                if host.format > HOST_FORMAT_VERSION {
                    return Err(invalid(format!(
                        "host record format {} is newer than this build ({HOST_FORMAT_VERSION})",
                        host.format
                    )));
                }
                if self.hosts.contains_key(&host.name) && !replace {
                    return Err(Refusal::HostExists {
                        name: host.name.clone(),
                    });
                }
                self.hosts.insert(host.name.clone(), host.clone());
                touched.push(Key::Host(host.name.clone()));
                Ok(Applied::Host)
            }
            Command::RemoveHost { name } => {
                if self.hosts.remove(name).is_none() {
                    return Err(Refusal::NoHost { name: name.clone() });
                }
                touched.push(Key::Host(name.clone()));
                Ok(Applied::Host)
            }
            Command::AddRemote {
                name,
                remote,
                replace,
            } => {
                check_remote(name, remote).map_err(invalid)?;
                if self.remotes.contains_key(name) && !replace {
                    return Err(Refusal::RemoteExists { name: name.clone() });
                }
                self.remotes.insert(name.clone(), remote.clone());
                touched.push(Key::Remote(name.clone()));
                Ok(Applied::Remote)
            }
            Command::RemoveRemote { name } => {
                if self.remotes.remove(name).is_none() {
                    return Err(Refusal::NoRemote { name: name.clone() });
                }
                touched.push(Key::Remote(name.clone()));
                Ok(Applied::Remote)
            }
            Command::StartJob(start) => self.start_job(start, touched),
            Command::AcceptRange {
                job,
                disk,
                index,
                result,
            } => self.accept_range(job, *disk, *index, result, touched),
            Command::EndJob { job, end } => self.end_job(job, end, touched),
        }
    }

    fn commit_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        parent: Parent,
        touched: &mut Vec<Key>,
    ) -> Result<SnapshotMeta, Refusal> {
        check_name("vm", &meta.vm).map_err(invalid)?;
        if meta.format > SNAPSHOT_FORMAT_VERSION {
            return Err(invalid(format!(
                "snapshot record format {} is newer than this build ({SNAPSHOT_FORMAT_VERSION})",
                meta.format
            )));
        }
        if self.has_snapshot(meta.id.as_str()) {
            return Err(Refusal::DuplicateSnapshot {
                id: meta.id.to_string(),
            });
        }
        let mut meta = meta.clone();
        if parent == Parent::Latest {
            meta.parent = self.latest(&meta.vm).map(|m| m.id.clone());
        }
        let seq = self.counters.next_snapshot;
        self.counters.next_snapshot += 1;
        touched.push(Key::Counters);
        touched.push(Key::Snapshot {
            vm: meta.vm.clone(),
            id: meta.id.to_string(),
        });
        self.snapshots
            .entry(meta.vm.clone())
            .or_default()
            .push(StoredSnapshot {
                seq,
                meta: meta.clone(),
            });
        Ok(meta)
    }

    fn start_job(&mut self, start: &JobStart, touched: &mut Vec<Key>) -> Outcome {
        check_name("vm", &start.vm).map_err(invalid)?;
        if start.id.parse::<bora_core::snapshot::SnapshotId>().is_err() {
            return Err(invalid(format!(
                "job id {:?} is not a snapshot id",
                start.id
            )));
        }
        if start.disks.is_empty() {
            return Err(invalid(format!("job {} has no disks", start.id)));
        }
        if let Some(d) = start.disks.iter().find(|d| d.ranges == 0) {
            return Err(invalid(format!(
                "disk {} of job {} has no ranges",
                d.name, start.id
            )));
        }
        if self.jobs.contains_key(&start.id) || self.has_snapshot(&start.id) {
            return Err(Refusal::DuplicateJob {
                job: start.id.clone(),
            });
        }
        if let Some((id, _)) = self
            .jobs
            .iter()
            .find(|(_, j)| j.vm == start.vm && j.status == JobStatus::Running)
        {
            return Err(Refusal::VmBusy {
                vm: start.vm.clone(),
                job: id.clone(),
            });
        }
        let job = JobState {
            vm: start.vm.clone(),
            host: start.host.clone(),
            disks: start.disks.clone(),
            status: JobStatus::Running,
            ended: None,
            range_bytes: start.range_bytes,
            live: start.live,
            done: BTreeMap::new(),
        };
        let ranges = job.total();
        self.jobs.insert(start.id.clone(), job);
        touched.push(Key::Job(start.id.clone()));
        Ok(Applied::JobStarted { ranges })
    }

    /// The running job `id`, or why a report about it changes nothing.
    fn running_job(&mut self, id: &str) -> Result<&mut JobState, Refusal> {
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| Refusal::UnknownJob { job: id.into() })?;
        if job.status != JobStatus::Running {
            return Err(Refusal::JobEnded {
                job: id.into(),
                status: job.status.clone(),
            });
        }
        Ok(job)
    }

    fn accept_range(
        &mut self,
        id: &str,
        disk: u32,
        index: u32,
        result: &RangeDone,
        touched: &mut Vec<Key>,
    ) -> Outcome {
        let job = self.running_job(id)?;
        let exists = usize::try_from(disk)
            .ok()
            .and_then(|d| job.disks.get(d))
            .is_some_and(|d| index < d.ranges);
        if !exists {
            return Err(Refusal::NoSuchRange {
                job: id.into(),
                disk,
                index,
            });
        }
        if let Some(first) = job.done.get(&(disk, index)) {
            return Err(Refusal::RangeDone {
                job: id.into(),
                disk,
                index,
                lease: first.lease,
            });
        }
        job.done.insert((disk, index), result.clone());
        let (done, total) = (job.done.len() as u64, job.total());
        touched.push(Key::Range {
            job: id.into(),
            disk,
            index,
        });
        Ok(Applied::RangeAccepted { done, total })
    }

    fn end_job(&mut self, id: &str, end: &JobEnd, touched: &mut Vec<Key>) -> Outcome {
        let job = self.running_job(id)?;
        let (status, snapshot) = match end {
            JobEnd::Committed { meta } => {
                let missing = job.total().saturating_sub(job.done.len() as u64);
                if missing > 0 {
                    return Err(Refusal::RangesMissing {
                        job: id.into(),
                        missing,
                    });
                }
                if meta.id.as_str() != id || meta.vm != job.vm {
                    return Err(invalid(format!(
                        "job {id} of vm {} cannot commit snapshot {} of vm {}",
                        job.vm, meta.id, meta.vm
                    )));
                }
                // The job's own id is taken by the job; only another snapshot may clash.
                let meta = self.commit_snapshot(meta, Parent::Latest, touched)?;
                (JobStatus::Committed, Some(meta))
            }
            JobEnd::Failed { error } => (
                JobStatus::Failed {
                    error: error.clone(),
                },
                None,
            ),
            JobEnd::Cancelled => (JobStatus::Cancelled, None),
        };
        let seq = self.counters.next_end;
        self.counters.next_end += 1;
        if let Some(job) = self.jobs.get_mut(id) {
            job.status = status.clone();
            job.ended = Some(seq);
        }
        touched.push(Key::Counters);
        touched.push(Key::Job(id.into()));
        self.forget_old_jobs(touched);
        Ok(Applied::JobEnded { status, snapshot })
    }

    /// Drops the oldest ended jobs beyond [`KEEP_ENDED_JOBS`].
    fn forget_old_jobs(&mut self, touched: &mut Vec<Key>) {
        let mut ended: Vec<(u64, String)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.ended.map(|s| (s, id.clone())))
            .collect();
        if ended.len() <= KEEP_ENDED_JOBS {
            return;
        }
        ended.sort();
        let excess = ended.len() - KEEP_ENDED_JOBS;
        for (_, id) in ended.into_iter().take(excess) {
            self.jobs.remove(&id);
            touched.push(Key::Job(id));
        }
    }
}

/// What the catalog itself checks of a remote: a valid name, and a JSON object that
/// names itself so (the rest is the replica crate's to validate before proposing).
fn check_remote(name: &str, remote: &str) -> Result<(), String> {
    check_name("remote name", name)?;
    let value: serde_json::Value = serde_json::from_str(remote)
        .map_err(|e| format!("remote {name}: its definition is not JSON: {e}"))?;
    match value.get("name").and_then(|n| n.as_str()) {
        Some(n) if n == name => Ok(()),
        Some(n) => Err(format!("remote {name}: its definition is named {n}")),
        None => Err(format!("remote {name}: its definition has no name")),
    }
}

/// `(disk, index)` keys as `"disk/index"` strings, so the map is a JSON object.
mod range_map {
    use std::collections::BTreeMap;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::RangeDone;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<(u32, u32), RangeDone>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<String, &RangeDone> = map
            .iter()
            .map(|((d, i), r)| (format!("{d}/{i}"), r))
            .collect();
        m.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(u32, u32), RangeDone>, D::Error> {
        let m = BTreeMap::<String, RangeDone>::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| {
                let (disk, index) = k
                    .split_once('/')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| {
                        D::Error::custom(format!("range key {k:?} is not disk/index"))
                    })?;
                Ok(((disk, index), v))
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests;
