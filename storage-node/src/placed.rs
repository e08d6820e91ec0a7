//! [`PlacedChunkStore`]: one [`ChunkStore`] over several storage nodes, each chunk kept on
//! the nodes that rendezvous placement gives it.
//!
//! # Semantics
//!
//! - **Targets.** A chunk's *ranking* is every member in the order
//!   [`Membership::ranking`] gives for its digest; its *owners* are the first
//!   [`Membership::copies`] of them. Writes go to its *targets*: the first `copies()`
//!   members of the ranking that are not marked down. While an owner is down its share
//!   goes to the next node in the ranking (hinted handoff); [`crate::repair`] later copies
//!   it to the owner. Handed-off copies are not deleted.
//! - **Down nodes.** A node that fails a request at the transport level (unreachable,
//!   timed out, or answering `Unavailable`/`Internal`) is marked down for [`DOWN_FOR`] and
//!   skipped by writes until then; a success clears the mark. If every member is marked
//!   down, all are tried anyway.
//! - **`missing`** asks each target, batched per node, nodes in parallel; a digest is
//!   missing if any of its targets lacks it. A target that fails is replaced by the next
//!   node in the ranking.
//! - **`put`** sends each chunk to all its targets (one batch per node, nodes in
//!   parallel). A node that fails is marked down and its chunks go to the next node in
//!   their ranking, until every chunk is durable on all its targets — then `put` returns
//!   Ok. With fewer reachable nodes than copies, Ok means every chunk is on every
//!   reachable target (at least one); the shortfall is logged as a warning
//!   (under-replicated) for repair to fix. A request error (invalid chunk, size conflict)
//!   fails the put at once.
//! - **`read`** asks the ranking's live nodes, then the nodes marked down, and returns
//!   the first copy that verifies against its digest (a corrupt copy is never returned).
//!   Reads are hedged: a node is asked, and if it has not answered within the hedge delay
//!   ([`PlacedChunkStore::hedge_delay`]: three times the recent mean read latency, 20 ms to
//!   500 ms) the next node is asked too, and so on; the first good copy wins and the other
//!   requests are cancelled. A node that answers not found, corrupt or with a node failure
//!   hands over to the next node at once. So a slow or hung node delays a read by at most
//!   the hedge delay while another node has the chunk. When every node fails, the error
//!   names each node and what it said (plain `NotFound` when every member answered that
//!   it does not have the chunk).
//! - **Node identity.** A node is used only once the process answering at its address has
//!   said (`Stats`) that it is that member — the same node id, and the same cluster when
//!   the store was given one ([`PlacedChunkStore::with_cluster`]). The check is made once
//!   per connection, and again when the channel has reconnected (a node restarted, or its
//!   port reused by another node); a request that went out over a new connection counts
//!   only if the node behind it passes. Another node at the address is a node failure
//!   ([`WrongNode`]). (A request sent before such a check may still have reached the other
//!   node: a put then leaves harmless extra chunks there, and is retried elsewhere.)
//! - **Counts.** `put` returns node counts scaled to the chunks passed in: `chunks_new +
//!   chunks_existing` equals the number of chunks, `chunks_new` is the share of copies that
//!   were new (exact when all copies agree, as they do for the worker's "missing → put"),
//!   and `bytes_written` is the bytes written on all nodes together (every copy).
//!   [`PlacedChunkStore::bytes_sent`] counts request bytes sent to all nodes.
//!
//! Connections are made lazily, one gRPC channel per node, with the client's timeouts
//! ([`crate::grpc::client::CONNECT_TIMEOUT`], [`crate::grpc::client::REQUEST_TIMEOUT`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use async_trait::async_trait;
use bora_core::chunk::EncodedChunk;
use bora_core::digest::Digest;
use bora_core::placement::{Membership, NodeId};
use bora_core::store::{ChunkStore, PutOutcome, StoreError};
use bytes::Bytes;
use futures::future::join_all;
use tokio::time::Instant;
use tracing::Instrument;

use crate::grpc::chunk_to_wire;
use crate::grpc::client::GrpcChunkStore;

mod identity;
mod read;

pub use identity::WrongNode;
use read::ReadLatency;
pub use read::{HEDGE_FACTOR, HEDGE_MAX, HEDGE_MIN};

/// How long a node that failed a request is skipped by writes.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// One member: its address, its client once connected, which of the client's
/// connections was verified to reach it, and whether it is marked down.
#[derive(Debug)]
struct Member {
    /// `http://HOST:PORT`, or `None` when no address was given for it.
    url: Option<String>,
    client: Mutex<Option<GrpcChunkStore>>,
    /// The [`GrpcChunkStore::connections`] count at which the node answering at `url` said
    /// it is this member; 0 until then.
    verified_at: AtomicU64,
    /// Held while its identity is checked, so concurrent requests make one `Stats` call.
    checking: tokio::sync::Mutex<()>,
    down_until: Mutex<Option<Instant>>,
}

/// A chunk store over the storage nodes of a [`Membership`]; see the module docs.
#[derive(Debug)]
pub struct PlacedChunkStore {
    membership: Membership,
    members: BTreeMap<NodeId, Member>,
    /// The cluster every node must say it is in, when known.
    cluster: Option<String>,
    read_latency: ReadLatency,
}

/// Whether an error says the node is unusable right now (as opposed to "this request is
/// wrong", which every node would answer the same way).
pub(crate) fn is_node_failure(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(_) | StoreError::Index(_))
}

/// `e`, saying which node answered it.
fn on_node(node: &NodeId, e: StoreError) -> StoreError {
    match e {
        StoreError::Corrupt {
            digest,
            location,
            source,
        } => StoreError::Corrupt {
            digest,
            location: format!("storage node {node}: {location}"),
            source,
        },
        StoreError::Index(m) => StoreError::Index(format!("storage node {node}: {m}")),
        StoreError::Backend(m) => StoreError::Backend(format!("storage node {node}: {m}")),
        StoreError::Invalid(m) => StoreError::Invalid(format!("storage node {node}: {m}")),
        e @ (StoreError::NotFound(_) | StoreError::SizeConflict { .. }) => e,
    }
}

/// The first `copies` nodes of `ranking` that are usable and have not failed.
fn pick<'a>(
    ranking: &'a [NodeId],
    usable: &'a BTreeSet<NodeId>,
    failed: &'a BTreeSet<NodeId>,
    copies: usize,
) -> impl Iterator<Item = &'a NodeId> {
    ranking
        .iter()
        .filter(|n| usable.contains(*n) && !failed.contains(*n))
        .take(copies)
}

fn names<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) -> String {
    let names: Vec<&str> = nodes.into_iter().map(|n| n.0.as_str()).collect();
    names.join(", ")
}

impl PlacedChunkStore {
    /// A store over `membership`'s nodes, reached at `addrs` (`"HOST:PORT"` per node).
    /// Connects lazily. A member without an address is treated as unreachable; addresses
    /// of non-members are ignored.
    pub fn new(membership: Membership, addrs: BTreeMap<NodeId, String>) -> PlacedChunkStore {
        let members = membership
            .nodes()
            .map(|id| {
                let url = addrs.get(id).map(|a| match a.contains("://") {
                    true => a.clone(),
                    false => format!("http://{a}"),
                });
                if url.is_none() {
                    tracing::warn!(node = %id, "storage node has no address; it is unreachable");
                }
                let member = Member {
                    url,
                    client: Mutex::new(None),
                    verified_at: AtomicU64::new(0),
                    checking: tokio::sync::Mutex::new(()),
                    down_until: Mutex::new(None),
                };
                (id.clone(), member)
            })
            .collect();
        PlacedChunkStore {
            membership,
            members,
            cluster: None,
            read_latency: ReadLatency::default(),
        }
    }

    /// Also requires every node to say it is in `cluster` (its config's `cluster`; `""`
    /// for a node whose config names none). Without it only node ids are checked.
    pub fn with_cluster(mut self, cluster: &str) -> PlacedChunkStore {
        self.cluster = Some(cluster.to_string());
        self
    }

    /// The nodes and replica count chunks are placed by.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Members not marked down, sorted by id.
    pub fn live_nodes(&self) -> Vec<NodeId> {
        self.members
            .keys()
            .filter(|id| self.is_live(id))
            .cloned()
            .collect()
    }

    /// Whether `node` is a member not marked down.
    pub fn is_live(&self, node: &NodeId) -> bool {
        self.members.get(node).is_some_and(|m| {
            let until = *m.down_until.lock().unwrap_or_else(|e| e.into_inner());
            until.is_none_or(|t| Instant::now() >= t)
        })
    }

    /// Where a put of `digest` would go now: the first [`Membership::copies`] live nodes
    /// of its ranking.
    pub fn targets(&self, digest: &Digest) -> Vec<NodeId> {
        let usable = self.usable();
        let ranking = self.membership.ranking(digest);
        pick(
            &ranking,
            &usable,
            &BTreeSet::new(),
            self.membership.copies(),
        )
        .cloned()
        .collect()
    }

    /// Request bytes sent to all nodes so far (protobuf messages and gRPC frame headers):
    /// with the bytes stored, what "gRPC bytes per stored byte" is computed from.
    pub fn bytes_sent(&self) -> u64 {
        self.members
            .values()
            .filter_map(|m| {
                let client = m.client.lock().unwrap_or_else(|e| e.into_inner());
                client.as_ref().map(GrpcChunkStore::bytes_sent)
            })
            .sum()
    }

    /// The client for one member, connecting lazily (needs a tokio runtime). Its identity
    /// is not checked: [`PlacedChunkStore::verified`] does that.
    pub fn node(&self, id: &NodeId) -> Result<GrpcChunkStore, StoreError> {
        let member = self
            .members
            .get(id)
            .ok_or_else(|| StoreError::Invalid(format!("{id} is not a storage node member")))?;
        let url = member
            .url
            .as_deref()
            .ok_or_else(|| StoreError::Backend(format!("storage node {id} has no address")))?;
        let mut client = member.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::Backend(
                "storage node clients need a tokio runtime".into(),
            ));
        }
        let c = GrpcChunkStore::connect_lazy(url)?;
        *client = Some(c.clone());
        Ok(c)
    }

    /// Marks `node` down for [`DOWN_FOR`] after `error`.
    pub(crate) fn mark_down(&self, node: &NodeId, error: &StoreError) {
        let Some(m) = self.members.get(node) else {
            return;
        };
        let mut until = m.down_until.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if until.is_none_or(|t| now >= t) {
            tracing::warn!(%node, %error, "storage node marked down for {DOWN_FOR:?}");
        }
        *until = Some(now + DOWN_FOR);
    }

    /// Clears `node`'s down mark after a success.
    pub(crate) fn mark_up(&self, node: &NodeId) {
        if let Some(m) = self.members.get(node) {
            let mut until = m.down_until.lock().unwrap_or_else(|e| e.into_inner());
            if until.take().is_some() {
                tracing::info!(%node, "storage node answers again");
            }
        }
    }

    /// The members writes may use now: the live ones, or all when none is live.
    fn usable(&self) -> BTreeSet<NodeId> {
        let live: BTreeSet<NodeId> = self.live_nodes().into_iter().collect();
        match live.is_empty() {
            true => self.members.keys().cloned().collect(),
            false => live,
        }
    }

    async fn missing_placed(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let copies = self.membership.copies();
        let usable = self.usable();
        let rankings: Vec<Vec<NodeId>> =
            digests.iter().map(|d| self.membership.ranking(d)).collect();
        let mut failed = BTreeSet::new();
        let mut answered: Vec<Vec<NodeId>> = vec![Vec::new(); digests.len()];
        let mut missing = vec![false; digests.len()];
        loop {
            let mut asks: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
            for (i, ranking) in rankings.iter().enumerate() {
                if missing[i] {
                    continue;
                }
                for node in pick(ranking, &usable, &failed, copies) {
                    if !answered[i].contains(node) {
                        asks.entry(node.clone()).or_default().push(i);
                    }
                }
            }
            if asks.is_empty() {
                break;
            }
            let results = join_all(asks.into_iter().map(|(node, at)| async move {
                let ds: Vec<Digest> = at.iter().map(|&i| digests[i]).collect();
                let r = self
                    .ask(&node, |c| async move { c.missing(&ds).await })
                    .await;
                (node, at, r)
            }))
            .await;
            for (node, at, r) in results {
                match r {
                    Ok(flags) => {
                        self.mark_up(&node);
                        for (i, flag) in at.into_iter().zip(flags) {
                            missing[i] |= flag;
                            answered[i].push(node.clone());
                        }
                    }
                    Err(e) if is_node_failure(&e) => {
                        self.mark_down(&node, &e);
                        failed.insert(node);
                    }
                    Err(e) => return Err(on_node(&node, e)),
                }
            }
        }
        if let Some(i) = (0..digests.len()).find(|&i| !missing[i] && answered[i].is_empty()) {
            return Err(StoreError::Backend(format!(
                "cannot tell whether chunk {} is stored: no storage node answered (failed: {})",
                digests[i],
                names(&failed)
            )));
        }
        Ok(missing)
    }

    async fn put_placed(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        let total = chunks.len() as u64;
        let copies = self.membership.copies();
        let usable = self.usable();
        let digests: Vec<Digest> = chunks.iter().map(|c| c.digest).collect();
        let rankings: Vec<Vec<NodeId>> =
            digests.iter().map(|d| self.membership.ranking(d)).collect();
        // Converted once: every copy shares the record's bytes.
        let records: Vec<_> = chunks.into_iter().map(chunk_to_wire).collect();
        let mut stored: Vec<Vec<NodeId>> = vec![Vec::new(); records.len()];
        let mut failed = BTreeSet::new();
        let mut sums = PutOutcome::default();
        loop {
            let mut sends: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
            for (i, ranking) in rankings.iter().enumerate() {
                for node in pick(ranking, &usable, &failed, copies) {
                    if !stored[i].contains(node) {
                        sends.entry(node.clone()).or_default().push(i);
                    }
                }
            }
            if sends.is_empty() {
                break;
            }
            let records = &records;
            let results = join_all(sends.into_iter().map(|(node, at)| async move {
                let batch = at.iter().map(|&i| records[i].clone()).collect();
                let r = self
                    .ask(&node, |c| async move { c.put_records(batch).await })
                    .await;
                (node, at, r)
            }))
            .await;
            for (node, at, r) in results {
                match r {
                    Ok(o) => {
                        self.mark_up(&node);
                        sums.chunks_new += o.chunks_new;
                        sums.chunks_existing += o.chunks_existing;
                        sums.bytes_written += o.bytes_written;
                        for i in at {
                            stored[i].push(node.clone());
                        }
                    }
                    Err(e) if is_node_failure(&e) => {
                        tracing::warn!(%node, chunks = at.len(), "put failed; trying the next nodes of their rankings");
                        self.mark_down(&node, &e);
                        failed.insert(node);
                    }
                    Err(e) => return Err(on_node(&node, e)),
                }
            }
        }
        let mut under = 0u64;
        for (digest, on) in digests.iter().zip(&stored) {
            if on.is_empty() {
                return Err(StoreError::Backend(format!(
                    "chunk {digest} could not be stored on any storage node (failed: {})",
                    names(&failed)
                )));
            }
            under += u64::from(on.len() < copies);
        }
        if under > 0 {
            tracing::warn!(
                chunks = under,
                copies,
                live = %names(&self.live_nodes()),
                "chunks stored under-replicated: fewer reachable storage nodes than copies; repair adds the missing copies"
            );
        }
        // Node counts are per copy; scale them to the chunks passed in.
        let copies_counted = sums.chunks_new + sums.chunks_existing;
        let chunks_new = match copies_counted {
            0 => 0,
            c => {
                ((u128::from(total) * u128::from(sums.chunks_new) * 2 + u128::from(c))
                    / (2 * u128::from(c))) as u64
            }
        };
        Ok(PutOutcome {
            chunks_new,
            chunks_existing: total - chunks_new,
            bytes_written: sums.bytes_written,
        })
    }
}

#[async_trait]
impl ChunkStore for PlacedChunkStore {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let span = tracing::debug_span!("placed_missing", digests = digests.len());
        self.missing_placed(digests).instrument(span).await
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        let span = tracing::debug_span!("placed_put", chunks = chunks.len());
        self.put_placed(chunks).instrument(span).await
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let span = tracing::debug_span!("placed_read", chunk = %digest);
        self.read_placed(digest).instrument(span).await
    }
}

mod record;

#[cfg(test)]
mod tests;
