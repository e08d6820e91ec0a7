//! The coordinator process's background repair: every few seconds it checks which storage
//! nodes answer (and with which process id), and whenever one joins the ring, comes back or
//! restarted — even between two checks — (or the coordinator has just started), it runs
//! `repair`, copying every chunk onto each of its owners from a replica, while backups go
//! on. `bora repair` runs the same thing on demand.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;

use bora_core::placement::NodeId;
use bora_storage_node::placed::PlacedChunkStore;

/// How often the storage nodes are checked.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Runs until aborted; talks to the coordinator at `coordinator` like any client.
pub async fn run(coordinator: SocketAddr, cluster: String) {
    let url = format!("http://{coordinator}");
    // The nodes that answered at the last complete repair, with their process ids.
    let mut answered: BTreeMap<NodeId, u32> = BTreeMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let store = match crate::cluster::connect(&url).await {
            Ok(mut c) => match c.store().await {
                Ok(s) => s,
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        let now = reachable(&store, &cluster).await;
        tracing::debug!(answering = ?now, before = ?answered, "storage nodes checked");
        let joined: Vec<&NodeId> = now
            .iter()
            .filter(|(n, pid)| answered.get(*n) != Some(*pid))
            .map(|(n, _)| n)
            .collect();
        if !joined.is_empty() {
            let names: Vec<String> = joined.iter().map(|n| n.to_string()).collect();
            tracing::info!(nodes = %names.join(","), "storage nodes joined or came back; repairing");
            match bora_storage_node::repair::repair(&store).await {
                Ok(r) if r.is_complete() => eprintln!(
                    "repair after {} answered: {} chunks seen, {} copies made ({} bytes), {} unrecoverable",
                    names.join(", "),
                    r.digests_seen,
                    r.copies_made,
                    r.bytes_copied,
                    r.unrecoverable.len()
                ),
                Ok(r) => {
                    // A member is still unreachable: try again at the next check.
                    eprintln!(
                        "repair incomplete ({} copies made, {} failed, {} nodes unreachable); retrying",
                        r.copies_made,
                        r.copies_failed,
                        r.nodes_unreachable.len()
                    );
                    continue;
                }
                Err(e) => {
                    eprintln!("repair failed: {e}; retrying");
                    continue;
                }
            }
        }
        answered = now;
    }
}

/// The members of the ring that answer a `Stats` call as themselves, in `cluster`, with
/// their process ids.
async fn reachable(store: &PlacedChunkStore, cluster: &str) -> BTreeMap<NodeId, u32> {
    let nodes: Vec<NodeId> = store.membership().nodes().cloned().collect();
    let answers = join_all(nodes.iter().map(|n| async move {
        let node = store.node(n).ok()?;
        tokio::time::timeout(Duration::from_secs(1), node.stats())
            .await
            .ok()?
            .ok()
            // Another node answering at this address (a port reused) does not count.
            .filter(|s| s.node_id == n.to_string() && s.cluster == cluster)
            .map(|s| (n.clone(), s.pid))
    }))
    .await;
    answers.into_iter().flatten().collect()
}
