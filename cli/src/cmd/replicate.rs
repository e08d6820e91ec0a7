//! `bora replicate --to NAME`: sends the snapshots the remote lacks. Embedded, this
//! process reads the repository and sends; with `--cluster`, the cluster's coordinator
//! runs the replication (it holds the remote's token) and this waits for its report —
//! stopping this command stops it, and running it again resumes.

use std::sync::Arc;

use anyhow::{Context, Result};

use bora_proto::replica::ReplicateRequest;
use bora_replica::send::{Options, Report, replicate};

use crate::cli::ReplicateArgs;
use crate::output;
use crate::replica_source::RepoSource;
use crate::repo::Repo;
use crate::snapshot_disk::Location;

pub async fn run(loc: &Location<'_>, args: ReplicateArgs, json: bool) -> Result<()> {
    let report = match loc {
        Location::Repo(dir) => {
            let repo = Repo::open(dir, false, None)?;
            let remote = bora_replica::remote::find(&repo.dir, &args.to)?;
            let source = RepoSource(repo);
            let opts = Options {
                vms: args.vm,
                streams: args.streams,
                limit: args.limit.unwrap_or(0),
                ..Options::default()
            };
            let progress: bora_replica::send::OnProgress = Arc::new(|r: &Report| {
                tracing::info!(
                    chunks_sent = r.chunks_sent,
                    bytes_sent = r.bytes_sent,
                    chunks_skipped = r.chunks_skipped,
                    "replication progress"
                );
            });
            replicate(&source, &remote, &opts, Some(progress)).await?
        }
        Location::Cluster(urls) => {
            let request = ReplicateRequest {
                remote: args.to.clone(),
                vms: args.vm,
                streams: u32::try_from(args.streams).unwrap_or(u32::MAX),
                limit: args.limit.unwrap_or(0),
            };
            let what = format!("replicating to {}", args.to);
            let r = super::remote::on_leader(urls, &what, |mut c| {
                let request = request.clone();
                async move { c.replicate(request).await }
            })
            .await?;
            serde_json::from_str(&r.report_json)
                .context("the coordinator sent a report this bora cannot read")?
        }
    };
    print(&report, json)
}

/// Prints a report (the `--json` fields are CLI.md's).
pub fn print(r: &Report, json: bool) -> Result<()> {
    if json {
        return output::json(&serde_json::to_value(r)?);
    }
    println!(
        "replicated to {} ({}): {} snapshots sent ({} already there, {} older than its newest), {} chunks sent ({}, {}), {} already there, in {:.1} s",
        r.remote,
        r.remote_cluster,
        r.snapshots_sent,
        r.snapshots_present,
        r.snapshots_older,
        r.chunks_sent,
        output::bytes(r.bytes_sent),
        output::rate(r.bytes_sent, r.duration_s),
        r.chunks_skipped,
        r.duration_s
    );
    Ok(())
}

/// Embedded `--auto` remotes: after a backup, each remote that wants one of `vms` gets
/// what it lacks. A failure is a warning on stderr; the backup stands.
pub async fn after_backup(repo: Repo, vms: &[String]) {
    let remotes = match bora_replica::remote::load(&repo.dir) {
        Ok(r) => r,
        Err(e) => return eprintln!("warning: automatic replication: {e}"),
    };
    let auto: Vec<_> = remotes
        .into_iter()
        .filter(|r| r.auto && vms.iter().any(|vm| r.wants(vm)))
        .collect();
    if auto.is_empty() {
        return;
    }
    let source = RepoSource(repo);
    for remote in auto {
        match replicate(&source, &remote, &Options::default(), None).await {
            Ok(r) => eprintln!(
                "replicated to {}: {} snapshots, {} chunks ({}), {} already there",
                r.remote,
                r.snapshots_sent,
                r.chunks_sent,
                output::bytes(r.bytes_sent),
                r.chunks_skipped
            ),
            Err(e) => eprintln!(
                "warning: replication to {} failed (the backup is kept; `bora replicate --to {}` retries): {}",
                remote.name,
                remote.name,
                bora_replica::error::chain(&e)
            ),
        }
    }
}
