//! `bora copy-back --overlay DIR --to TARGET [--format raw|qcow2] [--force]`: ends an
//! instant recovery. The snapshot disk the overlay was written over, with every block the
//! VM wrote while it ran from the backup, is written onto a real disk (file, block device
//! or NBD export); then the VM can be started from there and the overlay removed.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use bora_worker::restore::Patch;
use bora_worker::serve::SavedOverlay;

use crate::cli::CopyBackArgs;
use crate::cmd::restore::{parse_target, restore_from};
use crate::output;
use crate::snapshot_disk::{Location, open_at};

pub async fn run(loc: &Location<'_>, args: CopyBackArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let target = parse_target(&args.to, args.format.as_deref(), args.force)?;
    let overlay = SavedOverlay::open(&args.overlay)?;
    let h = overlay.header().clone();
    let overlay_bytes = overlay.bytes_written();
    let opened = open_at(loc, &h.snapshot, &h.vm, &h.disk).await?;
    let patch: Arc<dyn Patch> = Arc::new(overlay);
    let (stats, size, id) = restore_from(opened.store, opened.sd, Some(patch), &target, json)
        .await
        .with_context(|| format!("copy-back of overlay {}", args.overlay.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        output::json(&serde_json::json!({
            "snapshot": id,
            "vm": h.vm,
            "disk": h.disk,
            "overlay": args.overlay,
            "to": args.to,
            "size": size,
            "overlay_bytes": overlay_bytes,
            "bytes_written": stats.bytes_written,
            "duration_s": secs,
        }))
    } else {
        println!(
            "copied snapshot {id} disk {} with {} of overlay changes to {}: {} written in {secs:.1} s",
            h.disk,
            output::bytes(overlay_bytes),
            args.to,
            output::bytes(stats.bytes_written),
        );
        Ok(())
    }
}
