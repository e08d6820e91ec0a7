//! The replicated catalog: the coordinator's durable state (snapshot records, hosts,
//! storage membership, jobs and their accepted range results, the second site's remotes)
//! as a Raft state machine, so that a cluster of coordinators survives losing a minority
//! of them.
//!
//! ```text
//!  RaftCatalog (facade) ── propose(Command) ──► openraft::Raft ── AppendEntries/Vote/ ──► peers
//!      │ read (read-index) ◄── StateReader          │          InstallSnapshot
//!      │                                  ┌─────────┴──────────┐  (network::grpc, or
//!      │                                  ▼                    ▼   network::memory in tests)
//!      │                           store::LogStore      store::StateMachine
//!      │                           (log, vote: RocksDB)  (CatalogState::apply, rows in RocksDB,
//!      └──────────────────────────────────────────────── snapshots: build / install)
//! ```
//!
//! - [`command`]: every change as a serde enum ([`Command`]) and what applying it answers
//!   ([`Outcome`]: [`Applied`] or a [`Refusal`]).
//! - [`state`]: [`CatalogState`] and its pure, deterministic `apply`.
//! - [`store`]: RocksDB column families for the log, the vote and the state machine;
//!   snapshots and log purge. Every write is synced before it is acknowledged.
//! - [`network`]: the `Raft` gRPC service (`proto/raft.proto`) and its client, and an
//!   in-process network with injected faults for tests.
//! - [`catalog`]: [`RaftCatalog`], the facade the coordinator service uses.
//!
//! # Guarantees
//!
//! - A command is applied once on every member, in log order; [`RaftCatalog::propose`]
//!   returns after it was committed by a majority and applied on the leader.
//! - [`RaftCatalog::read`] is **linearizable** (read-index: the leader confirms with a
//!   quorum that it still leads, then waits until its state machine has applied up to the
//!   commit index it saw). So a snapshot list read after a backup returned shows that
//!   backup, whichever client asks. Followers answer [`RaftCatalogError::NotLeader`] with
//!   the leader's id and address; [`RaftCatalog::read_local`] reads this member's applied
//!   state without that check (possibly stale: for status pages, not for decisions).
//!
//! # Switching the service over (next step)
//!
//! See `docs/raft.md`: each current write (`commit_record`, `Storage::add/remove`,
//! `Inventory::add/remove`, job start/complete/end in `service/*`) becomes one
//! [`Command`]; reads go through [`RaftCatalog::read`]; `NotLeader` maps to a redirect.

pub mod catalog;
pub mod codec;
pub mod command;
pub mod error;
pub mod network;
pub mod state;
pub mod store;

#[cfg(test)]
mod tests;

use std::io::Cursor;

pub use catalog::{ClusterStatus, LeadershipWatch, MemberStatus, RaftCatalog, RaftCatalogConfig};
pub use command::{Applied, Command, Outcome, Refusal};
pub use error::RaftCatalogError;
pub use state::CatalogState;

/// A coordinator's id in the Raft cluster.
pub type NodeId = u64;
/// A member as the cluster records it: the address of its `Raft` gRPC service.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// The replicated catalog's types for openraft.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of the catalog.
pub type Entry = openraft::Entry<TypeConfig>;
/// A running Raft member of the catalog.
pub type Raft = openraft::Raft<TypeConfig>;
