//! Errors of the replicated catalog's facade. "This request failed" (not the leader, a
//! refusal, no quorum in time) is kept apart from "this member is broken or stopped"
//! ([`RaftCatalogError::Stopped`], [`RaftCatalogError::Store`]).

use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError,
    RaftError,
};

use super::command::Refusal;
use super::store::StoreError;
use super::{Node, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum RaftCatalogError {
    /// This member is not the leader: send the request to `leader` (id, address) when
    /// known, or try another member.
    #[error("this coordinator is not the leader ({})", match leader {
        Some((id, addr)) => format!("the leader is {id} at {addr}"),
        None => "no leader is known yet".to_string(),
    })]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The state machine refused the command (identically on every member).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The command was not committed within the wait: it may still commit later (the
    /// caller cannot tell), so a retry must be idempotent or checked first.
    #[error("not committed within {0:?} (no quorum reachable?); it may still commit")]
    Uncertain(Duration),
    /// This member had not applied `index` within `timeout`.
    #[error("this coordinator has not applied entry {index} within {timeout:?}")]
    Behind { index: u64, timeout: Duration },
    /// The leader could not confirm its leadership with a quorum (read refused).
    #[error("no quorum confirmed this leader: {0}")]
    NoQuorum(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    /// No coordinator with this id is a member.
    #[error("coordinator {id} is not a member of the cluster")]
    UnknownMember { id: NodeId },
    /// Removing this voter would leave the cluster without one.
    #[error("coordinator {id} is the last voter: a cluster cannot remove its last member")]
    LastVoter { id: NodeId },
    /// The id is a member already, at another address (ids are never reused).
    #[error("coordinator {id} is already a member at {addr}: give the new coordinator a new id")]
    MemberConflict { id: NodeId, addr: String },
    /// A new member did not catch up with the leader's log in time; it stays a learner.
    #[error(
        "coordinator {id} at {addr} has not caught up with the leader's log within {waited:?}: \
         is it running (bora coordinator --config) with an empty data dir, and reachable from \
         the leader? It stays a learner: run the add again, or remove it"
    )]
    NotCaughtUp {
        id: NodeId,
        addr: String,
        waited: Duration,
    },
    #[error("cluster initialization refused: {0}")]
    Initialize(String),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// This member stopped (shut down, or a storage error made it stop).
    #[error("this coordinator's raft member stopped: {0}")]
    Stopped(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_leader(f: ForwardToLeader<NodeId, Node>) -> RaftCatalogError {
    RaftCatalogError::NotLeader {
        leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
    }
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, Node>>> for RaftCatalogError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> RaftCatalogError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(f),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                RaftCatalogError::Membership(e.to_string())
            }
            RaftError::Fatal(f) => RaftCatalogError::Stopped(f.to_string()),
        }
    }
}

impl From<RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>> for RaftCatalogError {
    fn from(e: RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>) -> RaftCatalogError {
        match e {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => not_leader(f),
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
                RaftCatalogError::NoQuorum(q.to_string())
            }
            RaftError::Fatal(f) => RaftCatalogError::Stopped(f.to_string()),
        }
    }
}

impl From<RaftError<NodeId, InitializeError<NodeId, Node>>> for RaftCatalogError {
    fn from(e: RaftError<NodeId, InitializeError<NodeId, Node>>) -> RaftCatalogError {
        match e {
            RaftError::APIError(e) => RaftCatalogError::Initialize(e.to_string()),
            RaftError::Fatal(f) => RaftCatalogError::Stopped(f.to_string()),
        }
    }
}

impl From<ChangeMembershipError<NodeId>> for RaftCatalogError {
    fn from(e: ChangeMembershipError<NodeId>) -> RaftCatalogError {
        RaftCatalogError::Membership(e.to_string())
    }
}

impl From<openraft::error::Fatal<NodeId>> for RaftCatalogError {
    fn from(f: openraft::error::Fatal<NodeId>) -> RaftCatalogError {
        RaftCatalogError::Stopped(f.to_string())
    }
}
