//! Hedged reads: a chunk is asked of one replica at a time, but a replica that has not
//! answered within the hedge delay no longer holds the read up — the next replica is asked
//! too, and the first copy that verifies wins; the requests still running are dropped
//! (cancelled). A replica that answers without a good copy (not found, corrupt, node
//! failure) hands over to the next at once.
//!
//! The hedge delay adapts to the cluster: [`HEDGE_FACTOR`] times a running mean of how
//! long reads took to be answered by the replica that won, kept within
//! [`HEDGE_MIN`]..=[`HEDGE_MAX`]. Fast nodes hedge early; when every read is slow
//! (big chunks, a busy cluster) the delay grows, so hedging does not double the load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bora_core::digest::Digest;
use bora_core::placement::NodeId;
use bora_core::store::{ChunkStore, StoreError};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::{PlacedChunkStore, is_node_failure, names, on_node};

/// The shortest hedge delay.
pub const HEDGE_MIN: Duration = Duration::from_millis(20);
/// The longest hedge delay: the most a hung replica delays a read while others are live.
pub const HEDGE_MAX: Duration = Duration::from_millis(500);
/// The hedge delay in mean read latencies.
pub const HEDGE_FACTOR: u32 = 3;

/// A running mean of read latency (weight 1/8 per new read), in microseconds; 0 before
/// the first read.
#[derive(Debug, Default)]
pub(super) struct ReadLatency(AtomicU64);

impl ReadLatency {
    pub(super) fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mean = self.0.load(Ordering::Relaxed);
        let next = match mean {
            0 => took,
            m => m - m / 8 + took / 8,
        };
        // Concurrent reads may overwrite each other's update: it stays a mean of reads.
        self.0.store(next.max(1), Ordering::Relaxed);
    }

    /// How long a read waits for a replica before also asking the next.
    pub(super) fn hedge_delay(&self) -> Duration {
        let mean = Duration::from_micros(self.0.load(Ordering::Relaxed));
        (mean * HEDGE_FACTOR).clamp(HEDGE_MIN, HEDGE_MAX)
    }
}

impl PlacedChunkStore {
    /// The hedge delay reads use now; see the module docs of `placed::read`.
    pub fn hedge_delay(&self) -> Duration {
        self.read_latency.hedge_delay()
    }

    /// Asks `node` for `digest`: the node, how long it took, and its answer.
    async fn read_from(
        &self,
        node: NodeId,
        digest: &Digest,
    ) -> (NodeId, Duration, Result<Bytes, StoreError>) {
        let start = Instant::now();
        let r = self
            .ask(&node, |c| async move { c.read(digest).await })
            .await;
        (node, start.elapsed(), r)
    }

    pub(super) async fn read_placed(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        // The ranking's live nodes, then those marked down (they may be back).
        let (live, down): (Vec<NodeId>, Vec<NodeId>) = self
            .membership
            .ranking(digest)
            .into_iter()
            .partition(|n| self.is_live(n));
        let mut queue = live.into_iter().chain(down).peekable();
        let delay = self.hedge_delay();
        let mut asking = FuturesUnordered::new();
        let mut tried: Vec<(NodeId, StoreError)> = Vec::new();
        if let Some(node) = queue.next() {
            asking.push(self.read_from(node, digest));
        }
        // Invariant: while nodes are queued, one is being asked.
        loop {
            let more = queue.peek().is_some();
            let answer = tokio::select! {
                answer = asking.next() => answer,
                () = tokio::time::sleep(delay), if more => {
                    if let Some(node) = queue.next() {
                        tracing::debug!(chunk = %digest, %node, ?delay, "no answer yet; also asking the next replica");
                        asking.push(self.read_from(node, digest));
                    }
                    continue;
                }
            };
            let Some((node, took, r)) = answer else { break };
            match r {
                Ok(data) => {
                    self.mark_up(&node);
                    self.read_latency.record(took);
                    if !tried.is_empty() {
                        tracing::info!(chunk = %digest, %node, "read from a later replica");
                    }
                    // Dropping `asking` cancels the requests still running.
                    return Ok(data);
                }
                Err(e @ StoreError::Invalid(_)) => return Err(on_node(&node, e)),
                Err(e) => {
                    if is_node_failure(&e) {
                        self.mark_down(&node, &e);
                    } else if matches!(e, StoreError::Corrupt { .. }) {
                        tracing::warn!(chunk = %digest, %node, error = %e, "corrupt replica; trying the next");
                    }
                    tried.push((node, e));
                    if let Some(node) = queue.next() {
                        asking.push(self.read_from(node, digest));
                    }
                }
            }
        }
        Err(all_failed(digest, tried))
    }
}

/// The error of a read every node failed: `NotFound` when every node answered that it
/// does not have the chunk, otherwise every node and what it said.
fn all_failed(digest: &Digest, tried: Vec<(NodeId, StoreError)>) -> StoreError {
    if tried.is_empty() {
        return StoreError::Backend(format!(
            "cannot read chunk {digest}: there are no storage nodes"
        ));
    }
    if tried
        .iter()
        .all(|(_, e)| matches!(e, StoreError::NotFound(_)))
    {
        tracing::debug!(chunk = %digest, nodes = %names(tried.iter().map(|(n, _)| n)), "no node has the chunk");
        return StoreError::NotFound(*digest);
    }
    let said: Vec<String> = tried.iter().map(|(n, e)| format!("{n}: {e}")).collect();
    let said = said.join("; ");
    let corrupt = tried.into_iter().find_map(|(_, e)| match e {
        StoreError::Corrupt { source, .. } => Some(source),
        _ => None,
    });
    match corrupt {
        Some(source) => StoreError::Corrupt {
            digest: *digest,
            location: format!("no storage node has a good copy: {said}"),
            source,
        },
        None => StoreError::Backend(format!(
            "chunk {digest} could not be read from any storage node: {said}"
        )),
    }
}
