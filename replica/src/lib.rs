//! Second-site replication: a Bora cluster at another site keeps copies of chosen VMs'
//! snapshots, so that everything restores from it alone.
//!
//! ```text
//! source (repo or cluster)                     remote site (a cluster)
//!   send::replicate ── TLS + token (link) ──►  coordinator's Replica listener (listen)
//!     HasSnapshots / Missing (batches)           receive::ReplicaService over a Site:
//!     PutRecords (stored form, N streams)          verify each record, put on its owners
//!     Commit(snapshot JSON)                        commit once every chunk is there
//! ```
//!
//! - [`remote`]: a remote's definition (URL, trust, token, VMs, auto) and the file that
//!   keeps a repository's remotes; [`book`]: where remotes are kept, as a trait (the file,
//!   or a cluster's replicated catalog in the `bora` binary);
//! - [`tls`], [`link`], [`auth`], [`listen`], [`certgen`]: the secure link — a pinned
//!   certificate fingerprint or a CA, a bearer token compared in constant time, and
//!   self-signed material for `bora up`;
//! - [`receive`]: the receiving service over a [`receive::Site`] (the site's chunk store and
//!   catalog); [`send`]: the sender over a [`send::Source`];
//! - [`limit`]: the optional bandwidth limit; [`remotes_service`]: the `Remotes` service a
//!   cluster's coordinator serves so `bora --cluster … remote add` keeps remotes in its book.
//!
//! This crate knows nothing of storage engines or of the coordinator: the `bora` binary
//! implements `Site` and `Source` over them.

pub mod auth;
pub mod book;
pub mod certgen;
pub mod error;
pub mod limit;
pub mod link;
pub mod listen;
pub mod receive;
pub mod remote;
pub mod remotes_service;
pub mod send;
pub mod tls;

#[cfg(test)]
mod testing;

/// The replication protocol's version, answered by `Hello`.
pub const PROTOCOL: u32 = 1;

/// Largest gRPC message either way: one batch of records (the sender keeps batches near
/// [`send::PUT_BYTES`]) or one largest chunk with room to spare.
pub const MAX_MESSAGE_BYTES: usize = bora_core::chunk::MAX_CHUNK_LEN + (4 << 20);
