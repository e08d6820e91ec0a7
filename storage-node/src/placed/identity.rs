//! Node identity: a member is only trusted once the process answering at its address has
//! said (`Stats`) that it is that member — the same node id, and the store's cluster when
//! the store was given one. Checked once per connection: a channel that reconnected may
//! reach another process at the same address (a node restarted, or its port reused by
//! another node), so the check is made again then.

use std::future::Future;
use std::sync::atomic::Ordering;

use bora_core::placement::NodeId;
use bora_core::store::StoreError;

use super::PlacedChunkStore;
use crate::grpc::client::GrpcChunkStore;
use crate::node_store::NodeStats;

/// Another process than the member answers at the member's address.
#[derive(Debug, thiserror::Error)]
#[error("storage node at {addr} answers as {answered}, expected {expected}")]
pub struct WrongNode {
    /// The member's address.
    pub addr: String,
    /// Who answered: `node ID of cluster NAME`.
    pub answered: String,
    /// Who should have: `node ID` (`of cluster NAME` when the store names its cluster).
    pub expected: String,
}

impl From<WrongNode> for StoreError {
    /// A node failure: the member is not reachable at its address.
    fn from(e: WrongNode) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

fn node_of_cluster(id: &str, cluster: &str) -> String {
    let id = match id {
        "" => "(no id)",
        id => id,
    };
    match cluster {
        "" => format!("node {id} of no cluster"),
        c => format!("node {id} of cluster {c}"),
    }
}

/// Whether `stats`, answered at `addr`, come from `id` (in `cluster`, if one is expected).
pub(super) fn check(
    addr: &str,
    id: &NodeId,
    cluster: Option<&str>,
    stats: &NodeStats,
) -> Result<(), WrongNode> {
    let same_id = stats.node_id == id.0;
    let same_cluster = cluster.is_none_or(|c| stats.cluster == c);
    if same_id && same_cluster {
        return Ok(());
    }
    Err(WrongNode {
        addr: addr.to_string(),
        answered: node_of_cluster(&stats.node_id, &stats.cluster),
        expected: match cluster {
            None => format!("node {id}"),
            Some(c) => node_of_cluster(&id.0, c),
        },
    })
}

impl PlacedChunkStore {
    /// The client for member `id`, once the node answering at its address has said it is
    /// `id` (in the store's cluster, if it has one) over the channel's current connection;
    /// a node failure ([`WrongNode`]) if it is another node.
    pub async fn verified(&self, id: &NodeId) -> Result<GrpcChunkStore, StoreError> {
        Ok(self.verify(id).await?.0)
    }

    /// The verified client for `id` and the connection count it was verified at.
    async fn verify(&self, id: &NodeId) -> Result<(GrpcChunkStore, u64), StoreError> {
        let client = self.node(id)?;
        let member = self
            .members
            .get(id)
            .ok_or_else(|| StoreError::Invalid(format!("{id} is not a storage node member")))?;
        // 0: never verified (a verified connection is the first or a later one).
        let current = |c: &GrpcChunkStore| {
            let at = member.verified_at.load(Ordering::Relaxed);
            (at != 0 && at == c.connections()).then_some(at)
        };
        if let Some(at) = current(&client) {
            return Ok((client, at));
        }
        // One check at a time per member; those waiting use its result.
        let _checking = member.checking.lock().await;
        if let Some(at) = current(&client) {
            return Ok((client, at));
        }
        let stats = client.stats().await?;
        // The connection `Stats` went over (connections are counted as they are made, before
        // a request is sent on them).
        let at = client.connections();
        let addr = member.url.as_deref().unwrap_or_default();
        check(addr, id, self.cluster.as_deref(), &stats)?;
        member.verified_at.store(at, Ordering::Relaxed);
        tracing::debug!(node = %id, connection = at, "storage node identity verified");
        Ok((client, at))
    }

    /// `op` on member `id`'s verified client. If the channel reconnected while `op` ran,
    /// the request may have reached another process: the node is checked again, and if it
    /// is not `id` its answer is dropped for that node failure.
    pub(crate) async fn ask<T, F, Fut>(&self, id: &NodeId, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(GrpcChunkStore) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let (client, at) = self.verify(id).await?;
        let answer = op(client.clone()).await;
        if client.connections() != at {
            self.verify(id).await?;
        }
        answer
    }
}
