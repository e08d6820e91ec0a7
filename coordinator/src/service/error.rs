//! The service's errors, in two tiers: [`ServiceError`] stops the coordinator (it cannot
//! start or keep serving), [`RequestError`] fails one request and is sent back as a gRPC
//! status through [`to_status`], the one place that mapping lives.

use std::net::SocketAddr;
use std::path::PathBuf;

use tonic::Status;

use crate::catalog::CatalogError;
use crate::lease::{JobId, LeaseError};
use crate::raft::{RaftCatalogError, Refusal};

/// The metadata entry of an UNAVAILABLE status naming the leader as `id@addr`, on the
/// answers of a coordinator that is not the leader.
pub const LEADER_METADATA: &str = "bora-leader";

/// Why the coordinator cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("coordinator config: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("replicated catalog: {0}")]
    Raft(#[from] RaftCatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Why one request failed. The coordinator is unaffected.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "job {0} is unknown to this coordinator (it may have restarted); nothing was committed for it"
    )]
    UnknownJob(JobId),
    #[error("vm {vm} already has a running job {job}")]
    VmBusy { vm: String, job: JobId },
    #[error("job {0} is committing its snapshot and can no longer be cancelled")]
    Committing(JobId),
    #[error("no storage nodes: add one (AddStorageNode) before starting a backup")]
    NoStorageNodes,
    #[error("storage node {0} is not a member")]
    UnknownNode(String),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The replicated catalog refused or could not answer (not the leader, a refusal,
    /// no quorum in time).
    #[error(transparent)]
    Raft(#[from] RaftCatalogError),
    #[error("saving {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// Something the request needs cannot be reached now (a storage node, an index).
    #[error("{0}")]
    Unavailable(String),
    /// No registered host has the VM.
    #[error("{0}")]
    UnknownVm(String),
    /// This coordinator was started without live-VM support (embedded tests).
    #[error("this coordinator cannot back up live VMs (it has no hypervisor access)")]
    NoLiveVms,
    /// The hypervisor refused or failed (QMP, the NBD server, a scratch image).
    #[error("{0}")]
    Hypervisor(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Maps a request's error to the status sent back.
pub fn to_status(e: RequestError) -> Status {
    let msg = e.to_string();
    match e {
        RequestError::Invalid(_) => Status::invalid_argument(msg),
        RequestError::UnknownJob(_) | RequestError::UnknownNode(_) => Status::not_found(msg),
        RequestError::VmBusy { .. }
        | RequestError::Committing(_)
        | RequestError::NoStorageNodes => Status::failed_precondition(msg),
        RequestError::Lease(l) => match l {
            LeaseError::UnknownJob(_)
            | LeaseError::UnknownLease(_)
            | LeaseError::NoSuchRange { .. } => Status::not_found(msg),
            LeaseError::WrongWorker { .. } => Status::permission_denied(msg),
            LeaseError::DuplicateJob(_) => Status::already_exists(msg),
            LeaseError::NoDisks(_)
            | LeaseError::DuplicateDisk { .. }
            | LeaseError::EmptyDisk { .. }
            | LeaseError::ZeroChunkSize { .. }
            | LeaseError::ChunkOutsideRange { .. } => Status::invalid_argument(msg),
        },
        RequestError::Catalog(c) => match c {
            CatalogError::NotFound { .. } | CatalogError::NoSnapshots(_) => Status::not_found(msg),
            CatalogError::Duplicate(_) | CatalogError::HostExists(_) => Status::already_exists(msg),
            CatalogError::NoHost(_) => Status::not_found(msg),
            CatalogError::Io { .. } | CatalogError::BadRecord { .. } => Status::internal(msg),
        },
        RequestError::Raft(r) => raft_status(r, msg),
        RequestError::ShuttingDown | RequestError::Unavailable(_) => Status::unavailable(msg),
        RequestError::UnknownVm(_) => Status::not_found(msg),
        RequestError::NoLiveVms | RequestError::Hypervisor(_) => Status::failed_precondition(msg),
        RequestError::Persist { .. } | RequestError::Internal(_) => Status::internal(msg),
    }
}

/// The replicated catalog's errors: `NotLeader` is UNAVAILABLE with the leader in the
/// [`LEADER_METADATA`] entry (when known), so a client retries there; a refusal gets the
/// code the matching file-catalog error had.
fn raft_status(e: RaftCatalogError, msg: String) -> Status {
    match e {
        RaftCatalogError::NotLeader { leader } => {
            let mut s = Status::unavailable(msg);
            if let Some((id, addr)) = leader
                && let Ok(v) = format!("{id}@{addr}").parse()
            {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        }
        RaftCatalogError::Refused(r) => match r {
            Refusal::DuplicateSnapshot { .. }
            | Refusal::HostExists { .. }
            | Refusal::RemoteExists { .. }
            | Refusal::DuplicateJob { .. } => Status::already_exists(msg),
            Refusal::NoHost { .. }
            | Refusal::NoRemote { .. }
            | Refusal::UnknownNode { .. }
            | Refusal::UnknownJob { .. }
            | Refusal::NoSuchRange { .. } => Status::not_found(msg),
            Refusal::Invalid { .. } => Status::invalid_argument(msg),
            Refusal::VmBusy { .. }
            | Refusal::JobEnded { .. }
            | Refusal::RangeDone { .. }
            | Refusal::RangesMissing { .. } => Status::failed_precondition(msg),
        },
        RaftCatalogError::Uncertain(_)
        | RaftCatalogError::Behind { .. }
        | RaftCatalogError::NoQuorum(_) => Status::unavailable(msg),
        RaftCatalogError::Membership(_)
        | RaftCatalogError::Initialize(_)
        | RaftCatalogError::LastVoter { .. } => Status::failed_precondition(msg),
        RaftCatalogError::UnknownMember { .. } => Status::not_found(msg),
        RaftCatalogError::MemberConflict { .. } => Status::already_exists(msg),
        RaftCatalogError::NotCaughtUp { .. } => Status::deadline_exceeded(msg),
        RaftCatalogError::Config(_) | RaftCatalogError::Stopped(_) | RaftCatalogError::Store(_) => {
            Status::internal(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn statuses() {
        let code = |e| to_status(e).code();
        assert_eq!(
            code(RequestError::Invalid("x".into())),
            Code::InvalidArgument
        );
        assert_eq!(code(RequestError::UnknownJob("j".into())), Code::NotFound);
        assert_eq!(code(RequestError::NoStorageNodes), Code::FailedPrecondition);
        assert_eq!(
            code(RequestError::Lease(LeaseError::UnknownLease(
                crate::lease::LeaseId(3)
            ))),
            Code::NotFound
        );
        let s = to_status(RequestError::UnknownJob("j1".into()));
        assert!(s.message().contains("nothing was committed"), "{s}");
        assert_eq!(
            code(RequestError::Raft(RaftCatalogError::Refused(
                Refusal::DuplicateSnapshot { id: "s".into() }
            ))),
            Code::AlreadyExists
        );
    }

    #[test]
    fn membership_refusals_have_their_own_codes() {
        let code = |e| to_status(RequestError::Raft(e)).code();
        assert_eq!(
            code(RaftCatalogError::LastVoter { id: 1 }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(RaftCatalogError::UnknownMember { id: 7 }),
            Code::NotFound
        );
        assert_eq!(
            code(RaftCatalogError::MemberConflict {
                id: 2,
                addr: "h:1".into()
            }),
            Code::AlreadyExists
        );
        let s = to_status(RequestError::Raft(RaftCatalogError::NotCaughtUp {
            id: 4,
            addr: "h:4".into(),
            waited: std::time::Duration::from_secs(60),
        }));
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert!(s.message().contains("stays a learner"), "{s}");
    }

    #[test]
    fn not_leader_is_unavailable_and_names_the_leader() {
        let s = to_status(RequestError::Raft(RaftCatalogError::NotLeader {
            leader: Some((2, "127.0.0.1:7100".into())),
        }));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("2@127.0.0.1:7100")
        );
        let s = to_status(RequestError::Raft(RaftCatalogError::NotLeader {
            leader: None,
        }));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(LEADER_METADATA).is_none());
    }
}
