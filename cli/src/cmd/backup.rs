//! `bora backup --image PATH --vm NAME [--disk NAME]`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use bora_coordinator::backup::{DiskJob, backup_disk};
use bora_core::progress::Progress;
use bora_core::snapshot::{
    SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta, check_name, now_rfc3339,
};
use bora_core::store::ChunkStore;
use bora_worker::pipeline::{PipelineOptions, SeenDigests, SourceWorker};
use bora_worker::source::image::open_image;

use crate::cli::BackupArgs;
use crate::output;
use crate::progress::Bar;
use crate::repo::Repo;

/// A committed backup, for reporting.
pub struct BackupReport {
    pub meta: SnapshotMeta,
    pub duration_s: f64,
}

impl BackupReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "snapshot": self.meta.id,
            "vm": self.meta.vm,
            "parent": self.meta.parent,
            "time": self.meta.time,
            "disks": self.meta.disks.iter().map(|d| serde_json::json!({
                "disk": d.disk,
                "size": d.size,
                "bytes_read": d.stats.bytes_read,
                "bytes_uploaded": d.stats.bytes_uploaded,
                "chunks_new": d.stats.chunks_new,
                "chunks_reused": d.stats.chunks_reused,
                "chunks_zero": d.stats.chunks_zero,
            })).collect::<Vec<_>>(),
            "duration_s": self.duration_s,
        })
    }

    pub fn print_human(&self) {
        println!("snapshot {} of vm {}", self.meta.id, self.meta.vm);
        for d in &self.meta.disks {
            println!(
                "  disk {}: {} size, {} read, {} uploaded ({} new chunks, {} reused, {} zero) in {:.1} s ({})",
                d.disk,
                output::bytes(d.size),
                output::bytes(d.stats.bytes_read),
                output::bytes(d.stats.bytes_uploaded),
                d.stats.chunks_new,
                d.stats.chunks_reused,
                d.stats.chunks_zero,
                self.duration_s,
                output::rate(d.stats.bytes_read, self.duration_s),
            );
        }
    }
}

/// Backs up one image file as disk `disk` of `vm` and commits the snapshot. `quiet`: no
/// progress bar.
pub async fn backup_image(
    repo: &Repo,
    image: &Path,
    vm: &str,
    disk: Option<&str>,
    quiet: bool,
) -> Result<BackupReport> {
    let started = Instant::now();
    check_name("vm", vm).map_err(|e| anyhow!(e))?;
    let disk = match disk {
        Some(d) => d.to_string(),
        None => image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| {
                anyhow!(
                    "cannot derive a disk name from {}; pass --disk",
                    image.display()
                )
            })?,
    };
    check_name("disk", &disk).map_err(|e| anyhow!(e))?;
    let source = open_image(image).await?;
    let parent = repo.catalog.latest(vm)?;
    let store: Arc<dyn ChunkStore> = repo.store.clone();
    let progress = Arc::new(Progress::default());
    let worker = SourceWorker {
        source: source.clone(),
        store: store.clone(),
        seen: SeenDigests::default(),
        opts: PipelineOptions::default(),
        progress: progress.clone(),
    };
    let bar = Bar::start(
        &format!("backup {vm}/{disk}"),
        source.size(),
        progress,
        quiet,
    );
    let id = SnapshotId::random();
    let disk_snapshot = backup_disk(
        store.as_ref(),
        &worker,
        DiskJob {
            job: id.to_string(),
            vm: vm.to_string(),
            disk: disk.clone(),
            size: source.size(),
            chunk_size: repo.config.chunk_size,
            source: image.display().to_string(),
            parent: parent.as_ref().and_then(|p| p.disk(&disk)),
            concurrency: 2,
        },
    )
    .await
    .with_context(|| {
        format!(
            "backup of {} failed; earlier snapshots are unaffected",
            image.display()
        )
    })?;
    bar.finish();
    let meta = SnapshotMeta {
        format: SNAPSHOT_FORMAT_VERSION,
        id,
        vm: vm.to_string(),
        time: now_rfc3339(),
        parent: parent.map(|p| p.id),
        disks: vec![disk_snapshot],
    };
    repo.catalog.commit(&meta)?;
    Ok(BackupReport {
        meta,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

pub async fn run(repo_dir: &Path, args: BackupArgs, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, true, None)?;
    // Image files carry no changed-block information: every backup reads all allocated
    // data, so --full changes nothing here (it matters for --vm and --nbd sources).
    let _ = args.full;
    let report = backup_image(&repo, &args.image, &args.vm, args.disk.as_deref(), json).await?;
    if json {
        output::json(&report.to_json())
    } else {
        report.print_human();
        Ok(())
    }
}
