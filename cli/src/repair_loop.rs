//! The coordinator process's background repair: every few seconds it checks which storage
//! nodes answer (and with which process id), and whenever one joins the ring, comes back or
//! restarted — even between two checks — (or the coordinator has just started), it runs
//! `repair`, copying every chunk onto each of its owners from a replica, while backups go
//! on. `bora repair` runs the same thing on demand. With several coordinators only the
//! leader's loop repairs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;

use bora_core::placement::NodeId;
use bora_storage_node::placed::PlacedChunkStore;

/// How often the storage nodes are checked.
const CHECK_EVERY: Duration = Duration::from_secs(3);
/// Longest wait before a repair whose copies failed is tried again (doubling from
/// [`CHECK_EVERY`]).
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Runs until aborted; talks to the coordinator at `coordinator` like any client.
pub async fn run(coordinator: SocketAddr, cluster: String) {
    let url = format!("http://{coordinator}");
    // The nodes that answered at the last check, with their process ids.
    let mut answered: BTreeMap<NodeId, u32> = BTreeMap::new();
    // A repair that failed on nodes that answer is tried again, less and less often.
    let mut retry_at: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        // With several coordinators only the leader repairs (the others would copy the
        // same chunks again); one that becomes leader starts with a full repair.
        if !crate::cluster::leads(&url).await {
            answered.clear();
            retry_at = None;
            continue;
        }
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
        let retry_due = retry_at.is_some_and(|(at, _)| tokio::time::Instant::now() >= at);
        if !joined.is_empty() || retry_due {
            let mut names: Vec<String> = joined.iter().map(|n| n.to_string()).collect();
            if names.is_empty() {
                names.push("the retry".into());
            }
            tracing::info!(nodes = %names.join(","), "storage nodes joined or came back; repairing");
            let done = match bora_storage_node::repair::repair(&store).await {
                Ok(r) if r.is_complete() => {
                    eprintln!(
                        "repair after {} answered: {} chunks seen, {} copies made ({} bytes), {} unrecoverable",
                        names.join(", "),
                        r.digests_seen,
                        r.copies_made,
                        r.bytes_copied,
                        r.unrecoverable.len()
                    );
                    true
                }
                Ok(r) if r.copies_failed == 0 => {
                    // Only members that are down kept it from completing: everything the
                    // answering nodes can do is done. Their return (a new answer) starts
                    // the next repair; listing every digest again each check would not.
                    eprintln!(
                        "repair done as far as the nodes that answer allow ({} copies made, {} nodes unreachable); it runs again when they come back",
                        r.copies_made,
                        r.nodes_unreachable.len()
                    );
                    true
                }
                Ok(r) => {
                    let wait = next_wait(&mut retry_at);
                    eprintln!(
                        "repair incomplete ({} copies made, {} failed, {} nodes unreachable); retrying in {} s",
                        r.copies_made,
                        r.copies_failed,
                        r.nodes_unreachable.len(),
                        wait.as_secs()
                    );
                    false
                }
                Err(e) => {
                    let wait = next_wait(&mut retry_at);
                    eprintln!("repair failed: {e}; retrying in {} s", wait.as_secs());
                    false
                }
            };
            if done {
                retry_at = None;
            }
        }
        // What changed is handled (or scheduled again by `retry_at`).
        answered = now;
    }
}

/// Schedules the next retry of a failed repair, doubling the wait; returns it.
fn next_wait(retry_at: &mut Option<(tokio::time::Instant, Duration)>) -> Duration {
    let wait = retry_at.map_or(CHECK_EVERY, |(_, w)| (w * 2).min(RETRY_MAX));
    *retry_at = Some((tokio::time::Instant::now() + wait, wait));
    wait
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
