//! The coordinator process's background replication: every [`CHECK_EVERY`], if this
//! coordinator leads, it looks for snapshots of the VMs each `--auto` remote of the
//! replicated catalog wants that were not replicated to it yet (since it began leading),
//! and replicates them, shortly after each backup commits. Only the leader replicates (each
//! coordinator process runs this loop); one that becomes leader first imports its data
//! dir's old `remotes.json` (once, see [`crate::remote_book`]) and then checks every
//! remote afresh. A failure is reported on stderr (the coordinator's log) and retried at
//! the next check; the remote's `HasSnapshots` keeps a new leader or a restarted
//! coordinator from sending anything twice.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, info_span};

use bora_core::snapshot::SnapshotId;
use bora_replica::book::RemoteBook;
use bora_replica::remotes_service::{LocalSite, replicate_named};
use bora_replica::send::Options;

use crate::remote_book::RaftRemoteBook;
use crate::replica_site::ClusterSite;

/// How often new snapshots are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Runs until aborted.
pub async fn run(data_dir: PathBuf, book: Arc<RaftRemoteBook>, site: Arc<ClusterSite>) {
    // Per remote: the snapshots it is known to hold.
    let mut replicated: HashMap<String, HashSet<SnapshotId>> = HashMap::new();
    let mut imported = false;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if !book.leads() {
            // Another coordinator replicates; if this one leads again it starts afresh.
            replicated.clear();
            continue;
        }
        if !imported {
            match book.import_file(&data_dir).await {
                Ok(_) => imported = true,
                Err(e) => eprintln!("importing remotes.json: {e}; retrying"),
            }
        }
        let remotes = match book.list().await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("auto replication: {e}");
                continue;
            }
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
            let span = info_span!("auto_replicate", remote = %remote.name);
            match replicate_named(book.as_ref(), &remote.name, local, &Options::default())
                .instrument(span)
                .await
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
