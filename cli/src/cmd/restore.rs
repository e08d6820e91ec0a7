//! `bora restore SNAP --vm NAME --disk NAME --to TARGET [--format raw|qcow2]`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use bora_core::progress::Progress;
use bora_core::store::ChunkStore;
use bora_worker::restore::{Patch, RestoreStats, RestoreTarget, open_target, restore_disk};

use crate::cli::RestoreArgs;
use crate::output;
use crate::progress::Bar;
use crate::repo::Repo;
use crate::snapshot_disk::{Location, SnapshotDisk, open_at};

/// Restores one disk of a snapshot, with `patch` laid over it, to `target`.
pub async fn restore(
    repo: &Repo,
    snapshot: &str,
    vm: &str,
    disk: &str,
    patch: Option<Arc<dyn Patch>>,
    target: &RestoreTarget,
    quiet: bool,
) -> Result<(RestoreStats, u64, String)> {
    let sd = crate::snapshot_disk::open(repo, snapshot, vm, disk).await?;
    let store: Arc<dyn ChunkStore> = repo.store.clone();
    restore_from(store, sd, patch, target, quiet).await
}

/// Restores a loaded snapshot disk from `store`, with `patch` laid over it, to `target`.
pub async fn restore_from(
    store: Arc<dyn ChunkStore>,
    sd: SnapshotDisk,
    patch: Option<Arc<dyn Patch>>,
    target: &RestoreTarget,
    quiet: bool,
) -> Result<(RestoreStats, u64, String)> {
    let SnapshotDisk {
        meta,
        disk: d,
        index,
    } = sd;
    let (vm, disk) = (meta.vm.as_str(), d.disk.as_str());
    let writer = open_target(target, d.size).await?;
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(
        &format!("restore {vm}/{disk}"),
        d.size,
        progress.clone(),
        quiet,
    );
    let stats = restore_disk(store, &index, patch, writer, &progress)
        .await
        .with_context(|| format!("restore of snapshot {} disk {disk} failed", meta.id))?;
    bar.finish();
    Ok((stats, d.size, meta.id.to_string()))
}

/// `--to` and `--format` of a restore.
pub fn parse_target(to: &str, format: Option<&str>, force: bool) -> Result<RestoreTarget> {
    let format = format
        .map(str::parse)
        .transpose()
        .map_err(|e: String| anyhow!(e))?;
    RestoreTarget::parse(to, format, force).map_err(|e| anyhow!(e))
}

/// `restore`, from the local repository or a cluster.
pub async fn run(loc: &Location<'_>, args: RestoreArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let target = parse_target(&args.to, args.format.as_deref(), args.force)?;
    let opened = open_at(loc, &args.snapshot, &args.vm, &args.disk).await?;
    let (stats, size, id) = restore_from(opened.store, opened.sd, None, &target, json).await?;
    report(
        &args,
        &id,
        size,
        &stats,
        started.elapsed().as_secs_f64(),
        json,
    )
}

/// Prints what a restore did.
pub fn report(
    args: &RestoreArgs,
    id: &str,
    size: u64,
    stats: &RestoreStats,
    secs: f64,
    json: bool,
) -> Result<()> {
    if json {
        output::json(&serde_json::json!({
            "snapshot": id,
            "vm": args.vm,
            "disk": args.disk,
            "to": args.to,
            "size": size,
            "bytes_written": stats.bytes_written,
            "chunks_fetched": stats.chunks_fetched,
            "chunks_zero": stats.chunks_zero,
            "duration_s": secs,
        }))
    } else {
        println!(
            "restored snapshot {id} disk {} ({}) to {}: {} written in {secs:.1} s ({})",
            args.disk,
            output::bytes(size),
            args.to,
            output::bytes(stats.bytes_written),
            output::rate(size, secs)
        );
        Ok(())
    }
}
