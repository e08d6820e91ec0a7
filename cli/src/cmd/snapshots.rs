//! `bora snapshots [--vm NAME]`.

use std::path::Path;

use anyhow::Result;

use bora_core::snapshot::SnapshotMeta;

use crate::cli::SnapshotsArgs;
use crate::output;
use crate::repo::Repo;

pub fn run(repo_dir: &Path, args: SnapshotsArgs, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, false, None)?;
    let list = repo.catalog.list(args.vm.as_deref())?;
    print(&list, json)
}

/// Prints snapshot records, oldest first.
pub fn print(list: &[SnapshotMeta], json: bool) -> Result<()> {
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "vm": m.vm,
                    "time": m.time,
                    "parent": m.parent,
                    "disks": m.disks.iter().map(|d| serde_json::json!({
                        "disk": d.disk, "size": d.size,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        return output::json(&serde_json::Value::Array(v));
    }
    if list.is_empty() {
        println!("no snapshots");
        return Ok(());
    }
    println!("{:<18} {:<20} {:<22} disks", "ID", "VM", "TIME");
    for m in list {
        let disks: Vec<String> = m
            .disks
            .iter()
            .map(|d| format!("{} ({})", d.disk, output::bytes(d.size)))
            .collect();
        println!(
            "{:<18} {:<20} {:<22} {}",
            m.id,
            m.vm,
            m.time,
            disks.join(", ")
        );
    }
    Ok(())
}
