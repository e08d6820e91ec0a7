//! The coordinator: the snapshot catalog and the planner that splits disks into block
//! ranges for workers, and the job runner that turns range results into a snapshot. For
//! the cluster mode, two pure (sans-IO) cores: the lease table that hands ranges to
//! workers (`lease`) and the placement of chunks on storage nodes (`placement`); and the
//! gRPC service that drives them (`service`, configured by `config`). The replicated
//! catalog for a cluster of coordinators (`raft`) holds everything durable, jobs and
//! their ranges' results included (stored as pieces, `range_piece`).

pub mod backup;
pub mod catalog;
pub mod config;
mod fsutil;
pub mod inventory;
pub mod lease;
pub mod live;
/// Chunk placement lives in core (storage nodes and workers use it too).
pub use bora_core::placement;
pub mod planner;
pub mod raft;
pub mod range_piece;
pub mod replica_config;
pub mod service;
