//! Wire types in and out. Every request is checked here, at the boundary, and turned into
//! the service's domain types; a request that cannot be right is
//! [`RequestError::Invalid`] with a message naming what is wrong. Answers are turned back
//! into wire types here too.

use std::time::Duration;

use bytes::Bytes;

use bora_core::Digest;
use bora_core::digest::DIGEST_LEN;
use bora_core::index::{check_chunk_size, chunk_count};
use bora_core::snapshot::{
    CbtRecord, DiskStats, SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta, check_name,
};
use bora_proto::coordinator as pb;

use super::error::RequestError;
use super::jobs::{DiskSource, Incremental, JobRequest, JobView, Phase};
use super::leases::{RangeGrant, RangeReport};
use super::storage::MembershipView;
use super::workers::StatusView;
use crate::lease::{JobId, WorkerId};
use crate::live::VmListing;
use bora_core::host::{HOST_FORMAT_VERSION, HostSpec};

/// Disks of one job.
pub(super) const MAX_DISKS: usize = 256;
/// Bytes of a disk's source (path or URL).
pub(super) const MAX_SOURCE_LEN: usize = 4096;
/// Chunks of one disk: its index (32 bytes each) is built in memory at commit.
pub(super) const MAX_DISK_CHUNKS: u64 = 1 << 26;
/// Longest `WaitJob`.
pub(super) const MAX_WAIT_MS: u32 = 300_000;
/// Longest `Lease` long poll.
pub(super) const MAX_LEASE_WAIT_MS: u32 = 30_000;
/// Leases in one heartbeat.
pub(super) const MAX_LEASE_IDS: usize = 4096;
/// Bytes of a failure message kept (longer ones are cut).
pub(super) const MAX_ERROR_LEN: usize = 4096;
const MAX_HOSTNAME_LEN: usize = 255;
const MAX_JOB_ID_LEN: usize = 128;

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::Invalid(msg.into())
}

pub(super) fn worker_id(s: &str) -> Result<WorkerId, RequestError> {
    check_name("worker", s).map_err(invalid)?;
    Ok(WorkerId(s.to_string()))
}

pub(super) fn job_id(s: &str) -> Result<JobId, RequestError> {
    if s.is_empty() || s.len() > MAX_JOB_ID_LEN || s.chars().any(char::is_control) {
        return Err(invalid(format!("invalid job id {s:?}")));
    }
    Ok(JobId(s.to_string()))
}

pub(super) fn wait_timeout(ms: u32) -> Result<Duration, RequestError> {
    if ms > MAX_WAIT_MS {
        return Err(invalid(format!(
            "timeout_ms {ms} is over the limit {MAX_WAIT_MS}; wait again after it answers"
        )));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

pub(super) fn lease_wait(ms: u32) -> Result<Duration, RequestError> {
    if ms > MAX_LEASE_WAIT_MS {
        return Err(invalid(format!(
            "wait_ms {ms} is over the limit {MAX_LEASE_WAIT_MS}"
        )));
    }
    Ok(Duration::from_millis(u64::from(ms)))
}

pub(super) fn lease_ids(ids: Vec<u64>) -> Result<Vec<u64>, RequestError> {
    if ids.len() > MAX_LEASE_IDS {
        return Err(invalid(format!(
            "{} leases in one heartbeat, at most {MAX_LEASE_IDS}",
            ids.len()
        )));
    }
    Ok(ids)
}

/// A hostname as a worker reports it.
pub(super) fn hostname(s: String) -> Result<String, RequestError> {
    if s.len() > MAX_HOSTNAME_LEN || s.chars().any(char::is_control) {
        return Err(invalid(format!("invalid hostname {s:?}")));
    }
    Ok(s)
}

/// A worker's failure message, cut to [`MAX_ERROR_LEN`] bytes.
pub(super) fn error_text(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A disk's size and chunk size: a valid chunk size, a size that is not zero and whose
/// index fits.
pub(super) fn disk_geometry(what: &str, size: u64, chunk_size: u32) -> Result<(), RequestError> {
    check_chunk_size(chunk_size).map_err(|e| invalid(e.to_string()))?;
    if size == 0 {
        return Err(invalid(format!("{what}: size is zero")));
    }
    let chunks = chunk_count(size, chunk_size);
    if chunks > MAX_DISK_CHUNKS {
        return Err(invalid(format!(
            "{what}: {size} bytes at chunk size {chunk_size} is {chunks} chunks, at most \
             {MAX_DISK_CHUNKS} per disk (use a larger chunk size)"
        )));
    }
    Ok(())
}

/// A snapshot record sent for `CommitSnapshot`.
pub(super) fn snapshot_from_json(json: &str) -> Result<SnapshotMeta, RequestError> {
    let meta: SnapshotMeta = serde_json::from_str(json)
        .map_err(|e| invalid(format!("snapshot_json is not a snapshot record: {e}")))?;
    if meta.format == 0 || meta.format > SNAPSHOT_FORMAT_VERSION {
        return Err(invalid(format!(
            "snapshot format version {} is not supported (this build writes {SNAPSHOT_FORMAT_VERSION})",
            meta.format
        )));
    }
    check_name("vm", &meta.vm).map_err(invalid)?;
    for d in &meta.disks {
        check_name("disk", &d.disk).map_err(invalid)?;
    }
    Ok(meta)
}

impl TryFrom<pb::StartBackupRequest> for JobRequest {
    type Error = RequestError;

    fn try_from(r: pb::StartBackupRequest) -> Result<JobRequest, RequestError> {
        check_name("vm", &r.vm).map_err(invalid)?;
        let id = chosen_job_id(&r.job)?;
        check_name("host", &r.host).map_err(invalid)?;
        check_chunk_size(r.chunk_size).map_err(|e| invalid(e.to_string()))?;
        if r.disks.is_empty() {
            return Err(invalid(format!("vm {}: no disks to back up", r.vm)));
        }
        if r.disks.len() > MAX_DISKS {
            return Err(invalid(format!(
                "vm {}: {} disks, at most {MAX_DISKS}",
                r.vm,
                r.disks.len()
            )));
        }
        let mut disks: Vec<DiskSource> = Vec::with_capacity(r.disks.len());
        for d in r.disks {
            check_name("disk", &d.name).map_err(invalid)?;
            let what = format!("vm {} disk {}", r.vm, d.name);
            if disks.iter().any(|x| x.name == d.name) {
                return Err(invalid(format!("{what} is listed twice")));
            }
            if d.source.is_empty()
                || d.source.len() > MAX_SOURCE_LEN
                || d.source.chars().any(char::is_control)
            {
                return Err(invalid(format!(
                    "{what}: source must be an image path or NBD URL of 1-{MAX_SOURCE_LEN} bytes"
                )));
            }
            disk_geometry(&what, d.size, r.chunk_size)?;
            let incremental = match (d.bitmap.is_empty(), d.parent_snapshot.is_empty()) {
                (true, true) => None,
                (false, false) => {
                    check_name("bitmap", &d.bitmap).map_err(|e| invalid(format!("{what}: {e}")))?;
                    Some(Incremental {
                        bitmap: d.bitmap,
                        parent: d.parent_snapshot,
                        base: None,
                    })
                }
                _ => {
                    return Err(invalid(format!(
                        "{what}: an incremental needs both bitmap and parent_snapshot"
                    )));
                }
            };
            let cbt = if d.cbt_json.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str::<CbtRecord>(&d.cbt_json)
                        .map_err(|e| invalid(format!("{what}: cbt_json: {e}")))?,
                )
            };
            disks.push(DiskSource {
                name: d.name,
                source: d.source,
                size: d.size,
                incremental,
                cbt,
            });
        }
        Ok(JobRequest {
            vm: r.vm,
            host: r.host,
            chunk_size: r.chunk_size,
            disks,
            id,
        })
    }
}

/// A job id a client chose (empty: none).
pub(super) fn chosen_job_id(job: &str) -> Result<Option<SnapshotId>, RequestError> {
    if job.is_empty() {
        return Ok(None);
    }
    job.parse()
        .map(Some)
        .map_err(|e| invalid(format!("job id {job:?}: {e}")))
}

impl TryFrom<pb::CompleteRangeRequest> for RangeReport {
    type Error = RequestError;

    fn try_from(r: pb::CompleteRangeRequest) -> Result<RangeReport, RequestError> {
        let worker = worker_id(&r.worker)?;
        let entries = r
            .entries
            .into_iter()
            .map(|e| {
                if e.digest.is_empty() {
                    return Ok((e.index, None));
                }
                Digest::from_slice(&e.digest)
                    .map(|d| (e.index, Some(d)))
                    .ok_or_else(|| {
                        invalid(format!(
                            "lease {}: chunk {}: digest is {} bytes, expected {DIGEST_LEN} (or empty for an all-zero chunk)",
                            r.lease_id,
                            e.index,
                            e.digest.len()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeReport {
            lease: r.lease_id,
            worker,
            entries,
            stats: DiskStats {
                bytes_read: r.bytes_read,
                bytes_uploaded: r.bytes_uploaded,
                chunks_new: r.chunks_new,
                chunks_reused: r.chunks_reused,
                chunks_zero: r.chunks_zero,
                chunks_clean: 0,
            },
        })
    }
}

impl From<JobView> for pb::JobStatus {
    fn from(v: JobView) -> pb::JobStatus {
        use pb::job_status::State;
        let (state, snapshot_json, error) = match v.phase {
            Phase::Running | Phase::Committing => (State::Running, String::new(), String::new()),
            Phase::Committed { snapshot_json } => (State::Committed, snapshot_json, String::new()),
            Phase::Failed { error } => (State::Failed, String::new(), error),
            Phase::Cancelled => (State::Cancelled, String::new(), String::new()),
        };
        pb::JobStatus {
            job: v.job.0,
            state: state.into(),
            ranges_done: v.done as u64,
            ranges_total: v.total as u64,
            snapshot_json,
            error,
            vm: v.vm,
        }
    }
}

impl From<RangeGrant> for pb::RangeLease {
    fn from(g: RangeGrant) -> pb::RangeLease {
        pb::RangeLease {
            lease_id: g.lease,
            job: g.job.0,
            vm: g.vm,
            disk: g.disk,
            source: g.source,
            offset: g.range.offset,
            length: g.range.length,
            chunk_size: g.chunk_size,
            expires_in_ms: g.expires_in_ms,
            disk_size: g.disk_size,
            bitmap: g.bitmap.unwrap_or_default(),
            parent: g
                .parent
                .into_iter()
                .map(|d| d.map_or_else(Bytes::new, |d| Bytes::copy_from_slice(d.as_bytes())))
                .collect(),
        }
    }
}

impl From<MembershipView> for pb::MembershipResponse {
    fn from(m: MembershipView) -> pb::MembershipResponse {
        pb::MembershipResponse {
            replicas: m.replicas,
            nodes: m
                .nodes
                .into_iter()
                .map(|(id, addr)| pb::StorageNode { id, addr })
                .collect(),
            cluster: String::new(),
        }
    }
}

impl From<StatusView> for pb::StatusResponse {
    fn from(s: StatusView) -> pb::StatusResponse {
        pb::StatusResponse {
            id: s.id,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    role: m.role.into(),
                    id: m.id,
                    addr: m.addr,
                    pid: m.pid,
                    state: m.state.into(),
                    hostname: m.hostname,
                    leases: m.leases,
                    chunks: m.chunks,
                })
                .collect(),
            replicas: s.replicas,
            jobs: s.jobs.into_iter().map(pb::JobStatus::from).collect(),
            raft: None,
        }
    }
}

impl From<crate::raft::ClusterStatus> for pb::RaftStatus {
    fn from(s: crate::raft::ClusterStatus) -> pb::RaftStatus {
        pb::RaftStatus {
            id: s.id,
            state: s.state.into(),
            term: s.term,
            leader: s.leader,
            last_log: s.last_log,
            applied: s.applied,
            snapshot: s.snapshot,
            purged: s.purged,
            members: s
                .members
                .into_iter()
                .map(|m| pb::RaftMember {
                    id: m.id,
                    addr: m.addr,
                    voter: m.voter,
                    matched: m.matched,
                })
                .collect(),
        }
    }
}

/// A host record sent by a client, checked.
pub(super) fn host_from_json(json: &str) -> Result<HostSpec, RequestError> {
    let host: HostSpec =
        serde_json::from_str(json).map_err(|e| invalid(format!("host record: {e}")))?;
    check_name("host", &host.name).map_err(invalid)?;
    if host.format != HOST_FORMAT_VERSION {
        return Err(invalid(format!(
            "host record format {} is not supported (this coordinator reads {HOST_FORMAT_VERSION})",
            host.format
        )));
    }
    Ok(host)
}

pub(super) fn vm_info(v: VmListing) -> pb::VmInfo {
    pb::VmInfo {
        vm: v.vm,
        host: v.host,
        disks: v
            .disks
            .into_iter()
            .map(|(disk, size)| pb::VmDiskInfo { disk, size })
            .collect(),
        error: v.error.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn start(disks: Vec<pb::DiskSource>, chunk_size: u32) -> pb::StartBackupRequest {
        pb::StartBackupRequest {
            vm: "vm1".into(),
            host: "h1".into(),
            chunk_size,
            disks,
            job: String::new(),
        }
    }

    fn disk(name: &str, size: u64) -> pb::DiskSource {
        pb::DiskSource {
            name: name.into(),
            source: "/img".into(),
            size,
            ..Default::default()
        }
    }

    fn refused(r: pb::StartBackupRequest, needle: &str) {
        let e = JobRequest::try_from(r).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }

    #[test]
    fn start_requests_are_checked() {
        let cs = 64 << 10;
        assert!(JobRequest::try_from(start(vec![disk("a", 1 << 20)], cs)).is_ok());
        refused(start(vec![disk("a", 1)], 1000), "power of two");
        refused(start(vec![disk("a", 1)], 32 << 20), "power of two");
        refused(start(vec![], cs), "no disks");
        refused(start(vec![disk("a", 0)], cs), "size is zero");
        refused(start(vec![disk("a", 1), disk("a", 1)], cs), "twice");
        refused(start(vec![disk("a/b", 1)], cs), "invalid disk name");
        refused(start(vec![disk("a", 1 << 50)], cs), "at most");
        let mut r = start(vec![disk("a", 1)], cs);
        r.vm = String::new();
        refused(r, "invalid vm name");
    }

    #[test]
    fn digests_are_32_bytes_or_empty() {
        let req = |digest: Bytes| pb::CompleteRangeRequest {
            lease_id: 7,
            worker: "w".into(),
            entries: vec![pb::ChunkEntry { index: 3, digest }],
            ..Default::default()
        };
        let ok = RangeReport::try_from(req(Bytes::from_static(&[1; 32]))).unwrap();
        assert_eq!(ok.entries, vec![(3, Some(Digest([1; 32])))]);
        let zero = RangeReport::try_from(req(Bytes::new())).unwrap();
        assert_eq!(zero.entries, vec![(3, None)]);
        let e = RangeReport::try_from(req(Bytes::from_static(&[1; 31])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chunk 3: digest is 31 bytes, expected 32"),
            "{e}"
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character() {
        let s = error_text("é".repeat(MAX_ERROR_LEN));
        assert!(s.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert_eq!(error_text("short".into()), "short");
    }
}
