//! Asking each storage node whether it answers (its `Stats` RPC, 1 s), for `status`: the
//! coordinator otherwise never talks to storage nodes.

use std::time::Duration;

use futures::future::join_all;
use tonic::transport::Endpoint;

use bora_proto::storage::StatsRequest;
use bora_proto::storage::storage_client::StorageClient;

use super::workers::MemberView;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `(pid, chunks)` of storage node `id` of `cluster` at `addr`, or `None` when it does not
/// answer (or another node answers there: a port reused after a crash).
async fn probe(cluster: &str, id: &str, addr: &str) -> Option<(u32, u64)> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let channel = tokio::time::timeout(PROBE_TIMEOUT, endpoint.connect())
        .await
        .ok()?
        .ok()?;
    let r = StorageClient::new(channel)
        .stats(StatsRequest {})
        .await
        .ok()?
        .into_inner();
    (r.node_id == id && r.cluster == cluster).then_some((r.pid, r.chunks))
}

/// Fills in the state and pid of every storage node of `cluster` among `members`.
pub(super) async fn storage_nodes(cluster: &str, members: &mut [MemberView]) {
    let nodes: Vec<&mut MemberView> = members
        .iter_mut()
        .filter(|m| m.role == "storage-node")
        .collect();
    let answers = join_all(nodes.iter().map(|m| probe(cluster, &m.id, &m.addr))).await;
    for (m, a) in nodes.into_iter().zip(answers) {
        match a {
            Some((pid, chunks)) => {
                m.state = "up";
                m.pid = pid;
                m.chunks = chunks;
            }
            None => m.state = "down",
        }
    }
}
