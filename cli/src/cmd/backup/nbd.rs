//! `bora backup --nbd URL --vm NAME --disk NAME [--bitmap NAME] [--full]`: an NBD export
//! someone else froze (a hypervisor's backup export). With `--bitmap`, the export's dirty
//! bitmap NAME must record every write since the parent snapshot's point in time; Bora
//! reads incrementally only when the parent was taken with the same bitmap name from an
//! export of the same size, and says why not otherwise.

use std::sync::Arc;

use anyhow::{Result, anyhow};

use bora_core::snapshot::{DiskSnapshot, SnapshotId};
use bora_worker::nbd::parse_nbd_url;
use bora_worker::source::BlockSource;
use bora_worker::source::nbd::{CONNECTIONS, NbdSource};

use super::{BackupReport, DiskInput, Mode, backup_disks};
use crate::cli::BackupArgs;
use crate::repo::Repo;

/// Whether an external bitmap can be trusted for an incremental on top of `parent`.
pub fn mode(
    full: bool,
    bitmap: Option<&str>,
    parent: Option<&DiskSnapshot>,
    size: u64,
    chunk_size: u32,
) -> Mode {
    let full_because = |reason: &str| Mode::Full {
        reason: reason.to_string(),
    };
    let Some(bitmap) = bitmap else {
        return full_because("no --bitmap given");
    };
    if full {
        return full_because("--full given");
    }
    let Some(parent) = parent else {
        return full_because("no parent snapshot of this disk");
    };
    if parent.index.chunk_size != chunk_size {
        return full_because("the parent snapshot uses another chunk size");
    }
    if parent.size != size {
        return full_because("the disk size changed since the parent snapshot");
    }
    match parent.cbt.as_ref().and_then(|c| c.bitmap.as_deref()) {
        Some(b) if b == bitmap => Mode::Incremental {
            base: bitmap.to_string(),
        },
        Some(b) => Mode::Full {
            reason: format!("the parent snapshot was taken with bitmap {b}, not {bitmap}"),
        },
        None => full_because("the parent snapshot was taken without a dirty bitmap"),
    }
}

pub async fn run(
    repo: &Repo,
    args: &BackupArgs,
    vm: &str,
    url: &str,
    quiet: bool,
) -> Result<BackupReport> {
    let disk = args
        .disk
        .clone()
        .ok_or_else(|| anyhow!("--nbd needs --disk NAME"))?;
    let (addr, export) = parse_nbd_url(url).map_err(|e| anyhow!(e))?;
    let bitmap = args.bitmap.as_deref();
    let source = NbdSource::connect(&addr, &export, bitmap, CONNECTIONS, url.to_string()).await?;
    let parent = repo.catalog.latest(vm)?;
    let mode = mode(
        args.full,
        bitmap,
        parent.as_ref().and_then(|p| p.disk(&disk)),
        source.size(),
        repo.config.chunk_size,
    );
    let input = DiskInput {
        disk,
        source: Arc::new(source),
        source_desc: url.to_string(),
        mode,
        next_bitmap: bitmap.map(str::to_string),
    };
    backup_disks(
        repo,
        vm,
        SnapshotId::random(),
        parent.as_ref(),
        vec![input],
        quiet,
    )
    .await
}
