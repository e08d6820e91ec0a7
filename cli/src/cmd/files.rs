//! `bora files ls|get`: file systems read straight out of a snapshot.

use std::sync::Arc;

use anyhow::{Context, Result};

use bora_worker::files::{self, EntryKind};
use bora_worker::snapshot_reader::{SnapshotReader, default_cache_chunks};

use crate::cli::{FilesCommand, FilesTarget};
use crate::output;
use crate::snapshot_disk::{Location, Opened, open_at};

/// The snapshot's disk as a random-access reader, and a name for it in errors.
async fn open(loc: &Location<'_>, t: &FilesTarget) -> Result<(Arc<SnapshotReader>, String)> {
    let Opened { sd, store, .. } = open_at(loc, &t.snapshot, &t.vm, &t.disk).await?;
    let what = format!("snapshot {} disk {}", sd.meta.id, t.disk);
    let cache = default_cache_chunks(sd.index.chunk_size());
    let reader = SnapshotReader::new(store, Arc::new(sd.index), cache);
    Ok((Arc::new(reader), what))
}

pub async fn run(loc: &Location<'_>, cmd: FilesCommand, json: bool) -> Result<()> {
    files::quiet_guarded_panics();
    match cmd {
        FilesCommand::Ls { target, path } => {
            let (reader, what) = open(loc, &target).await?;
            let path = path.as_deref().unwrap_or("/");
            let listing = files::list(&reader, target.partition, path)
                .await
                .context(what)?;
            if json {
                return output::json(&serde_json::to_value(&listing.entries)?);
            }
            for e in &listing.entries {
                let t = match e.kind {
                    EntryKind::File => '-',
                    EntryKind::Dir => 'd',
                    EntryKind::Symlink => 'l',
                    EntryKind::Other => '?',
                };
                println!(
                    "{t} {:>12} {:<25} {}",
                    e.size,
                    e.mtime.as_deref().unwrap_or("-"),
                    e.name
                );
            }
            Ok(())
        }
        FilesCommand::Get { target, path, to } => {
            let (reader, what) = open(loc, &target).await?;
            let report = files::get(&reader, target.partition, &path, &to)
                .await
                .with_context(|| format!("{what}: get {path}"))?;
            let fetched = reader.bytes_fetched();
            if json {
                let mut v = serde_json::to_value(&report)?;
                v["bytes_fetched"] = fetched.into();
                return output::json(&v);
            }
            let mut parts = vec![format!(
                "{} file(s), {}",
                report.files,
                output::bytes(report.size)
            )];
            if report.dirs > 0 {
                parts.push(format!("{} dir(s)", report.dirs));
            }
            if report.symlinks > 0 {
                parts.push(format!("{} symlink(s)", report.symlinks));
            }
            if !report.skipped.is_empty() {
                parts.push(format!("{} special file(s) skipped", report.skipped.len()));
            }
            println!(
                "copied {} ({}) to {}; {} fetched from the snapshot",
                report.path,
                parts.join(", "),
                report.to.display(),
                output::bytes(fetched)
            );
            Ok(())
        }
    }
}
