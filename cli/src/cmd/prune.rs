//! `bora prune --vm NAME --keep-last N [--keep-daily N --keep-weekly N --keep-monthly N]
//! [--dry-run]`: forgets the VM's snapshots the policy does not keep
//! (`bora_core::retention`), in the local repository or a cluster's catalog. Their chunks
//! stay until garbage collection; no kept snapshot depends on a forgotten one (every
//! index is whole), and the newest is always kept, so the next incremental finds its
//! parent. Each site prunes by its own policy: replication never sends a second site a
//! snapshot older than the newest it has of that VM.

use anyhow::{Context, Result};

use bora_core::retention::{Policy, select};
use bora_core::snapshot::SnapshotId;
use bora_proto::coordinator::ForgetSnapshotsRequest;

use crate::cli::PruneArgs;
use crate::cluster::{connect, status_err};
use crate::output;
use crate::repo::Repo;
use crate::snapshot_disk::Location;

pub async fn run(loc: &Location<'_>, a: PruneArgs, json: bool) -> Result<()> {
    let policy = Policy {
        keep_last: a.keep_last,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
    };
    let vm = a.vm.as_str();
    let forgotten: Vec<SnapshotId>;
    let decision;
    match loc {
        Location::Repo(dir) => {
            let repo = Repo::open(dir, false, None)?;
            let snaps = repo.catalog.list(Some(vm))?;
            decision = select(&snaps, policy)?;
            forgotten = if a.dry_run {
                Vec::new()
            } else {
                repo.catalog.forget(vm, &decision.forget)?
            };
        }
        Location::Cluster(urls) => {
            let mut c = connect(urls).await?;
            let snaps = c.snapshots(Some(vm)).await?;
            decision = select(&snaps, policy)?;
            forgotten = if a.dry_run || decision.forget.is_empty() {
                Vec::new()
            } else {
                c.client
                    .forget_snapshots(ForgetSnapshotsRequest {
                        vm: vm.to_string(),
                        ids: decision.forget.iter().map(ToString::to_string).collect(),
                    })
                    .await
                    .map_err(|s| status_err(&format!("pruning vm {vm}"), s))?
                    .into_inner()
                    .forgotten
                    .iter()
                    .map(|i| i.parse::<SnapshotId>())
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)
                    .context("the coordinator answered with a bad snapshot id")?
            };
        }
    }
    let ids = |v: &[SnapshotId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    if json {
        return output::json(&serde_json::json!({
            "vm": vm,
            "keep": ids(&decision.keep),
            "forget": ids(&decision.forget),
            "forgotten": ids(&forgotten),
            "dry_run": a.dry_run,
        }));
    }
    let verb = if a.dry_run { "would forget" } else { "forgot" };
    let list = if a.dry_run {
        &decision.forget
    } else {
        &forgotten
    };
    println!(
        "vm {vm}: keeping {} snapshots, {verb} {}{}",
        decision.keep.len(),
        list.len(),
        if list.is_empty() {
            String::new()
        } else {
            format!(": {}", ids(list).join(" "))
        }
    );
    Ok(())
}
