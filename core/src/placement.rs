//! Chunk placement: which storage nodes hold a chunk, by rendezvous (highest random weight)
//! hashing of its digest over the cluster's storage nodes.
//!
//! Every node gets a score for the digest; the `replicas` highest-scoring nodes own the
//! chunk, best first. Rendezvous hashing is chosen over a ring of virtual nodes because a
//! membership change moves only what it must, with no tuning and no table to keep: a new
//! node takes exactly the chunks for which it now scores in the top `replicas` (each from
//! the owner it displaced), and a removed node's chunks each move to the one node that
//! ranked next. Every other chunk keeps its owners, in the same order. The cost is one
//! score per (chunk, node), which is a few multiplications, so tens of nodes cost well
//! under a microsecond per chunk.
//!
//! # The score
//!
//! A digest is already BLAKE3 output, uniformly distributed, so it needs no hashing again:
//! the score mixes the digest's first 16 bytes with a per-node seed through two rounds of
//! the SplitMix64 finalizer (a bijective mixer with full avalanche). The node's seed is
//! BLAKE3 of a domain string and its id, computed once when the node is added. Scores of
//! one digest on different nodes are then as good as independent, which is what keeps the
//! spread even (the tests check it).
//!
//! The score is part of the storage format: changing it moves nearly every chunk. It is
//! pinned by a test with fixed values; a new one needs a new domain string and a
//! migration. Because the mix is not keyed with a secret, someone who controls chunk
//! contents could pick data whose digests favour one node (about one try in `nodes` per
//! chunk); that skews space, not correctness.

use std::fmt;
use std::num::NonZeroUsize;

use crate::Digest;

/// Copies of each chunk unless configured otherwise (fewer when there are fewer nodes).
pub const DEFAULT_REPLICAS: NonZeroUsize = NonZeroUsize::MIN.saturating_add(1);

/// Prefix of the node seed: names this version of the score.
const SEED_DOMAIN: &[u8] = b"bora placement v1\0";

/// A storage node's name in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub String);

impl From<&str> for NodeId {
    fn from(s: &str) -> NodeId {
        NodeId(s.to_string())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    id: NodeId,
    seed: [u64; 2],
}

impl Node {
    fn new(id: NodeId) -> Node {
        let d = Digest::of(&[SEED_DOMAIN, id.0.as_bytes()].concat());
        Node {
            seed: [word(&d, 0), word(&d, 1)],
            id,
        }
    }

    fn score(&self, digest: &Digest) -> u64 {
        mix(mix(word(digest, 0) ^ self.seed[0]) ^ word(digest, 1) ^ self.seed[1])
    }
}

/// The `i`th little-endian 64-bit word of a digest (`i` < 4).
fn word(d: &Digest, i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&d.0[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// The SplitMix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The storage nodes chunks are placed on, and how many copies each chunk gets.
///
/// Owners depend only on the set of node ids and `replicas`, not on the order nodes were
/// added in: nodes are kept sorted, and equal scores (one chance in 2^64) go to the
/// smaller id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// Sorted by id.
    nodes: Vec<Node>,
    replicas: NonZeroUsize,
}

impl Default for Membership {
    fn default() -> Membership {
        Membership::new(DEFAULT_REPLICAS)
    }
}

impl Membership {
    /// No nodes yet; each chunk will have `replicas` owners once there are that many.
    pub fn new(replicas: NonZeroUsize) -> Membership {
        Membership {
            nodes: Vec::new(),
            replicas,
        }
    }

    pub fn with_nodes(replicas: NonZeroUsize, nodes: impl IntoIterator<Item = NodeId>) -> Self {
        let mut m = Membership::new(replicas);
        for n in nodes {
            m.add(n);
        }
        m
    }

    /// Adds a node; `false` if it was already a member.
    pub fn add(&mut self, id: NodeId) -> bool {
        match self.nodes.binary_search_by(|n| n.id.cmp(&id)) {
            Ok(_) => false,
            Err(at) => {
                self.nodes.insert(at, Node::new(id));
                true
            }
        }
    }

    /// Removes a node; `false` if it was not a member.
    pub fn remove(&mut self, id: &NodeId) -> bool {
        match self.nodes.binary_search_by(|n| n.id.cmp(id)) {
            Ok(at) => {
                self.nodes.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.binary_search_by(|n| n.id.cmp(id)).is_ok()
    }

    /// The members, sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.iter().map(|n| &n.id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Copies wanted per chunk.
    pub fn replicas(&self) -> NonZeroUsize {
        self.replicas
    }

    /// Copies each chunk gets now: `replicas`, or every node if there are fewer.
    pub fn copies(&self) -> usize {
        self.replicas.get().min(self.nodes.len())
    }

    /// The nodes that hold `digest`, best first: [`Self::copies`] distinct members (none
    /// when there are no nodes). Readers try them in this order; writers write all.
    pub fn owners(&self, digest: &Digest) -> Vec<NodeId> {
        self.ranked(digest)
            .into_iter()
            .map(|i| self.nodes[i].id.clone())
            .collect()
    }

    /// The first owner of `digest`.
    pub fn primary(&self, digest: &Digest) -> Option<&NodeId> {
        self.ranked(digest).first().map(|&i| &self.nodes[i].id)
    }

    /// Whether `node` is one of `digest`'s owners.
    pub fn is_owner(&self, digest: &Digest, node: &NodeId) -> bool {
        self.ranked(digest)
            .iter()
            .any(|&i| self.nodes[i].id == *node)
    }

    /// Every member in `digest`'s preference order: [`Self::owners`] are its first
    /// [`Self::copies`] entries, and the rest say where the chunk goes next when owners
    /// are down (hinted handoff) or removed.
    pub fn ranking(&self, digest: &Digest) -> Vec<NodeId> {
        let mut scored: Vec<(u64, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.score(digest), i))
            .collect();
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored
            .into_iter()
            .map(|(_, i)| self.nodes[i].id.clone())
            .collect()
    }

    /// Positions in `nodes` of the owners, best first.
    fn ranked(&self, digest: &Digest) -> Vec<usize> {
        let mut scored: Vec<(u64, usize)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.score(digest), i))
            .collect();
        // Highest score first; on a tie the smaller id (the smaller position).
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(self.copies());
        scored.into_iter().map(|(_, i)| i).collect()
    }
}

/// How a chunk's owners change from one membership to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Movement {
    /// New owners that need a copy, in the new preference order.
    pub gained: Vec<NodeId>,
    /// Old owners that no longer own it (they may drop it once the gained copies exist),
    /// in the old preference order.
    pub lost: Vec<NodeId>,
}

impl Movement {
    /// Whether the chunk's owner set changes (a change of order alone moves no data).
    pub fn moves(&self) -> bool {
        !self.gained.is_empty() || !self.lost.is_empty()
    }
}

/// How `digest`'s owners change from `old` to `new`: for rebalancing after a membership
/// change, and for repair (a gained node lacking the chunk needs a copy).
pub fn movement(old: &Membership, new: &Membership, digest: &Digest) -> Movement {
    let (before, after) = (old.owners(digest), new.owners(digest));
    Movement {
        gained: after
            .iter()
            .filter(|n| !before.contains(n))
            .cloned()
            .collect(),
        lost: before
            .iter()
            .filter(|n| !after.contains(n))
            .cloned()
            .collect(),
    }
}

/// Whether `digest`'s owner set differs between `old` and `new`.
pub fn moves(old: &Membership, new: &Membership, digest: &Digest) -> bool {
    movement(old, new, digest).moves()
}

#[cfg(test)]
mod tests;
