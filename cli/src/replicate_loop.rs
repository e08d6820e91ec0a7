//! The coordinator process's background replication: every [`CHECK_EVERY`] it looks for
//! snapshots of the VMs each `--auto` remote wants that were not replicated to it yet
//! (since this process started), and replicates them, shortly after each backup commits.
//! A failure is reported on stderr (the coordinator's log) and retried at the next check;
//! the remote's `HasSnapshots` keeps a restarted coordinator from sending anything twice.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bora_core::snapshot::SnapshotId;
use bora_replica::remotes_service::{LocalSite, replicate_named};
use bora_replica::send::Options;

use crate::replica_site::ClusterSite;

/// How often new snapshots are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Runs until aborted.
pub async fn run(data_dir: PathBuf, site: Arc<ClusterSite>) {
    // Per remote: the snapshots it is known to hold.
    let mut replicated: HashMap<String, HashSet<SnapshotId>> = HashMap::new();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let dir = data_dir.clone();
        let remotes =
            match tokio::task::spawn_blocking(move || bora_replica::remote::load(&dir)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    eprintln!("auto replication: {e}");
                    continue;
                }
                Err(_) => continue,
            };
        let auto: Vec<_> = remotes.into_iter().filter(|r| r.auto).collect();
        if auto.is_empty() {
            continue;
        }
        let Ok(snaps) = site.list().await else {
            continue;
        };
        for remote in auto {
            let wanted: HashSet<SnapshotId> = snaps
                .iter()
                .filter(|m| remote.wants(&m.vm))
                .map(|m| m.id.clone())
                .collect();
            let known = replicated.entry(remote.name.clone()).or_default();
            if wanted.is_subset(known) {
                continue;
            }
            let local: &dyn LocalSite = site.as_ref();
            match replicate_named(data_dir.clone(), &remote.name, local, &Options::default()).await
            {
                Ok(r) => {
                    if r.snapshots_sent > 0 {
                        eprintln!(
                            "auto replication to {}: {} snapshots sent, {} chunks sent ({} bytes), {} skipped, {:.1} s",
                            remote.name,
                            r.snapshots_sent,
                            r.chunks_sent,
                            r.bytes_sent,
                            r.chunks_skipped,
                            r.duration_s
                        );
                    }
                    known.extend(wanted);
                }
                Err(e) => eprintln!(
                    "auto replication to {} failed: {}; retrying",
                    remote.name,
                    bora_replica::error::chain(&e)
                ),
            }
        }
    }
}
