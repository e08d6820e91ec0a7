//! On contact with a VM, before a backup: remove what a killed backup left behind, and put
//! the dirty bitmaps in order so that changed-block tracking can be trusted.
//!
//! A backup killed at any point leaves some of: Bora's NBD exports, backup jobs, fleecing
//! nodes and scratch files, and on each disk the base bitmap disabled next to a new
//! recording one. The writes since the last committed snapshot are then split between the
//! two bitmaps; merging the new one into the base (and re-enabling it) restores a base
//! that covers them all. A base that was left disabled with no companion has missed writes:
//! it is dropped, and the next backup reads everything.

use std::collections::HashMap;
use std::path::Path;

use tracing::info;

use super::QemuError;
use super::host::VmDisk;
use super::is_bora_bitmap;
use crate::qmp::{BORA_NODE_PREFIX, ExportRemoveMode, QmpClient, Transaction};

/// Cleans up after killed backups of `vm`. `bases` maps each disk to the bitmap its last
/// committed snapshot left (None: no snapshot or none recorded). Returns what was done,
/// for the log.
pub async fn recover(
    qmp: &QmpClient,
    vm: &str,
    disks: &[VmDisk],
    bases: &HashMap<String, Option<String>>,
    scratch_dir: &Path,
) -> Result<Vec<String>, QemuError> {
    let mut done = Vec::new();
    for e in qmp
        .query_block_exports()
        .await
        .map_err(QemuError::qmp(vm, "listing exports"))?
    {
        if e.id.starts_with(BORA_NODE_PREFIX) {
            qmp.block_export_del_and_wait(&e.id, ExportRemoveMode::Hard)
                .await
                .map_err(QemuError::qmp(
                    vm,
                    format!("deleting leftover export {}", e.id),
                ))?;
            done.push(format!("deleted leftover export {}", e.id));
        }
    }
    for j in qmp
        .query_jobs()
        .await
        .map_err(QemuError::qmp(vm, "listing jobs"))?
    {
        if j.id.starts_with(BORA_NODE_PREFIX) {
            qmp.block_job_cancel_and_wait(&j.id)
                .await
                .map_err(QemuError::qmp(
                    vm,
                    format!("cancelling leftover job {}", j.id),
                ))?;
            done.push(format!("cancelled leftover job {}", j.id));
        }
    }
    // Format nodes before the file nodes under them.
    let nodes = qmp
        .query_named_block_nodes()
        .await
        .map_err(QemuError::qmp(vm, "listing block nodes"))?;
    let mut ours: Vec<&str> = nodes
        .iter()
        .map(|n| n.node_name.as_str())
        .filter(|n| n.starts_with("bora-fl-"))
        .collect();
    ours.sort_by_key(|n| n.ends_with("-f"));
    for n in ours {
        qmp.blockdev_del(n)
            .await
            .map_err(QemuError::qmp(vm, format!("deleting leftover node {n}")))?;
        done.push(format!("deleted leftover node {n}"));
    }
    if let Ok(rd) = std::fs::read_dir(scratch_dir.join(vm)) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("bora-fleece-") {
                let _ = std::fs::remove_file(e.path());
                done.push(format!("removed scratch file {}", e.path().display()));
            }
        }
    }
    let _ = std::fs::remove_dir(scratch_dir.join(vm));
    for d in disks {
        let Some(node) = nodes.iter().find(|n| n.node_name == d.node) else {
            continue;
        };
        let base = bases.get(&d.disk).cloned().flatten();
        let ours: Vec<_> = node
            .dirty_bitmaps
            .iter()
            .filter(|b| is_bora_bitmap(&b.name))
            .collect();
        let base_info = base
            .as_deref()
            .and_then(|b| ours.iter().find(|x| x.name == b));
        let others: Vec<&str> = ours
            .iter()
            .map(|b| b.name.as_str())
            .filter(|n| Some(*n) != base.as_deref())
            .collect();
        let mut tx = Transaction::new();
        match base_info {
            Some(b) if !others.is_empty() => {
                if !b.recording {
                    tx = tx.bitmap_enable(&d.node, &b.name);
                }
                tx = tx.bitmap_merge(&d.node, &b.name, &others);
                for o in &others {
                    tx = tx.bitmap_remove(&d.node, o);
                }
                done.push(format!(
                    "disk {}: merged {} into {}",
                    d.disk,
                    others.join(", "),
                    b.name
                ));
            }
            Some(b) if !b.recording => {
                tx = tx.bitmap_remove(&d.node, &b.name);
                done.push(format!(
                    "disk {}: dropped {}, which stopped recording with no successor",
                    d.disk, b.name
                ));
            }
            Some(_) => {}
            None => {
                for o in &others {
                    tx = tx.bitmap_remove(&d.node, o);
                }
                if !others.is_empty() {
                    done.push(format!(
                        "disk {}: dropped {} (no committed snapshot matches)",
                        d.disk,
                        others.join(", ")
                    ));
                }
            }
        }
        if !tx.is_empty() {
            qmp.transaction(&tx).await.map_err(QemuError::qmp(
                vm,
                format!("repairing bitmaps of disk {}", d.disk),
            ))?;
        }
    }
    for line in &done {
        info!(vm = %vm, "{line}");
    }
    Ok(done)
}
