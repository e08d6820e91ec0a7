//! Freezing a VM's disks at one point in time for backup, and letting go afterwards.
//!
//! Freeze (QEMU's image fleecing, as libvirt's pull-mode backup does it):
//! 1. per disk, a scratch qcow2 (`qemu-img create`) added as a node whose backing is the
//!    disk;
//! 2. one `transaction` over all disks: add the new persistent bitmap, disable the base
//!    bitmap (the one the parent snapshot left), start `blockdev-backup sync=none` into the
//!    scratch node — from here the guest keeps writing, and QEMU copies each old block into
//!    the scratch image before overwriting it, so the scratch node reads as the disk did at
//!    the transaction;
//! 3. per disk, a read-only NBD export of the scratch node exposing the base bitmap.
//!
//! Teardown, always in this order: delete the exports, cancel the backup jobs, delete the
//! scratch nodes and files. Then, after a committed snapshot, drop the base bitmap (the new
//! one carries on); after a failure, re-enable the base bitmap and merge the new one into
//! it before dropping the new one — so the next backup still reads every block written
//! since the last committed snapshot. Every step of a teardown is attempted even when an
//! earlier one fails.

use std::path::{Path, PathBuf};

use tokio::process::Command;
use tracing::{info, warn};

use super::QemuError;
use super::host::VmDisk;
use crate::nbd::NbdAddr;
use crate::qmp::{BackupSync, ExportRemoveMode, QmpClient, Transaction};

/// One disk to freeze.
#[derive(Clone, Debug)]
pub struct FreezeDisk {
    pub disk: VmDisk,
    /// The bitmap left by the parent snapshot, if it is on the node (recording).
    pub base_bitmap: Option<String>,
}

/// A disk frozen for backup.
#[derive(Clone, Debug)]
pub struct FrozenDisk {
    pub disk: VmDisk,
    pub base_bitmap: Option<String>,
    pub new_bitmap: String,
    /// The NBD export of the point-in-time view.
    pub export: String,
    export_id: String,
    job_id: String,
    node: String,
    file_node: String,
    file: PathBuf,
}

/// A VM whose disks are frozen: export them over NBD at [`Frozen::nbd`] until
/// [`Frozen::release`].
pub struct Frozen {
    qmp: QmpClient,
    vm: String,
    pub nbd: NbdAddr,
    pub disks: Vec<FrozenDisk>,
}

/// The name prefix of Bora's objects for the job `job` (a snapshot id).
pub fn job_tag(job: &str) -> String {
    job.chars().take(8).collect()
}

/// The scratch image of disk `n` of `vm` in the backup tagged `tag`, relative to the
/// scratch directory: each VM has a directory of its own (VM names are single path
/// components), so cleaning up one VM never touches another's files.
pub fn scratch_name(vm: &str, tag: &str, n: usize) -> PathBuf {
    Path::new(vm).join(format!("bora-fleece-{tag}-{n}.qcow2"))
}

/// Starts the VM's NBD server at `addr`, or accepts one already running.
async fn ensure_nbd_server(qmp: &QmpClient, vm: &str, addr: &NbdAddr) -> Result<(), QemuError> {
    let started = match addr {
        NbdAddr::Unix(path) => qmp.nbd_server_start_unix(path).await,
        NbdAddr::Tcp(hp) => {
            let (host, port) = hp
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    QemuError::other(vm, "starting the NBD server", format!("bad address {hp}"))
                })?;
            qmp.nbd_server_start_tcp(host, port).await
        }
    };
    match started {
        Ok(()) => Ok(()),
        // Someone (the VM's manager, or an earlier backup) runs one: it must be at `addr`,
        // which connecting to the export will tell.
        Err(e) if e.is_nbd_server_running_error() => Ok(()),
        Err(e) => Err(QemuError::qmp(
            vm,
            format!("starting the NBD server at {addr}"),
        )(e)),
    }
}

async fn create_scratch(vm: &str, file: &Path, size: u64) -> Result<(), QemuError> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(file)
        .arg(size.to_string())
        .output()
        .await
        .map_err(|e| QemuError::other(vm, "creating the fleecing image", e))?;
    if !out.status.success() {
        return Err(QemuError::other(
            vm,
            format!("creating the fleecing image {}", file.display()),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

impl Frozen {
    /// Freezes `disks` of `vm` in one transaction for the backup `job`, with scratch
    /// images in `scratch_dir` (a directory the VM's QEMU process can write).
    pub async fn freeze(
        qmp: &QmpClient,
        vm: &str,
        job: &str,
        disks: Vec<FreezeDisk>,
        scratch_dir: &Path,
        nbd: NbdAddr,
    ) -> Result<Frozen, QemuError> {
        let tag = job_tag(job);
        let mut frozen = Frozen {
            qmp: qmp.clone(),
            vm: vm.to_string(),
            nbd,
            disks: Vec::new(),
        };
        std::fs::create_dir_all(scratch_dir)
            .map_err(|e| QemuError::other(vm, format!("creating {}", scratch_dir.display()), e))?;
        let result = frozen.freeze_steps(&tag, job, disks, scratch_dir).await;
        match result {
            Ok(()) => Ok(frozen),
            Err(e) => {
                frozen.release(false).await;
                Err(e)
            }
        }
    }

    async fn freeze_steps(
        &mut self,
        tag: &str,
        job: &str,
        disks: Vec<FreezeDisk>,
        scratch_dir: &Path,
    ) -> Result<(), QemuError> {
        let vm = self.vm.clone();
        let qmp = self.qmp.clone();
        let new_bitmap = super::bitmap_name(job);
        // 1. scratch images and nodes
        let mut prepared = Vec::new();
        for (n, d) in disks.into_iter().enumerate() {
            let node = format!("bora-fl-{tag}-{n}");
            let file = scratch_dir.join(scratch_name(&vm, tag, n));
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| QemuError::other(&vm, format!("creating {}", dir.display()), e))?;
            }
            create_scratch(&vm, &file, d.disk.size).await?;
            let fd = FrozenDisk {
                base_bitmap: d.base_bitmap,
                new_bitmap: new_bitmap.clone(),
                export: format!("bora-{tag}-{}", d.disk.disk),
                export_id: format!("bora-ex-{tag}-{n}"),
                job_id: format!("bora-bk-{tag}-{n}"),
                file_node: format!("{node}-f"),
                node,
                file,
                disk: d.disk,
            };
            // Registered before the nodes exist so a failure below cleans up what exists.
            self.disks.push(fd.clone());
            qmp.blockdev_add(serde_json::json!({
                "driver": "file",
                "node-name": fd.file_node,
                "filename": fd.file.to_string_lossy(),
            }))
            .await
            .map_err(QemuError::qmp(&vm, "adding the fleecing file node"))?;
            qmp.blockdev_add(serde_json::json!({
                "driver": "qcow2",
                "node-name": fd.node,
                "file": fd.file_node,
                "backing": fd.disk.node,
            }))
            .await
            .map_err(QemuError::qmp(&vm, "adding the fleecing node"))?;
            prepared.push(fd);
        }
        // 2. one transaction: the point in time of every disk
        let mut tx = Transaction::new();
        for fd in &prepared {
            tx = tx.bitmap_add(&fd.disk.node, &fd.new_bitmap, fd.disk.persistent_bitmaps);
            if let Some(base) = &fd.base_bitmap {
                tx = tx.bitmap_disable(&fd.disk.node, base);
            }
            tx = tx.blockdev_backup(&fd.disk.node, &fd.node, &fd.job_id, BackupSync::None);
        }
        qmp.transaction(&tx)
            .await
            .map_err(QemuError::qmp(&vm, "freezing the disks (transaction)"))?;
        info!(vm = %vm, job = %job, disks = prepared.len(), "frozen");
        // 3. exports
        ensure_nbd_server(&qmp, &vm, &self.nbd).await?;
        for fd in &prepared {
            let bitmaps: Vec<&str> = fd.base_bitmap.iter().map(String::as_str).collect();
            qmp.block_export_add_nbd(&fd.export_id, &fd.node, &fd.export, false, &bitmaps)
                .await
                .map_err(QemuError::qmp(
                    &vm,
                    format!("exporting disk {}", fd.disk.disk),
                ))?;
        }
        Ok(())
    }

    /// Tears the freeze down (see the module docs). `committed`: the snapshot was
    /// committed, so the base bitmaps are dropped; otherwise they take the new bitmaps'
    /// changes back. Errors are logged, and the first is returned after every step ran.
    pub async fn release(self, committed: bool) -> Option<QemuError> {
        let mut first: Option<QemuError> = None;
        let mut note = |r: Result<(), QemuError>| {
            if let Err(e) = r {
                warn!(error = %e, "teardown step failed");
                first.get_or_insert(e);
            }
        };
        let (qmp, vm) = (&self.qmp, self.vm.as_str());
        let exports = qmp.query_block_exports().await.unwrap_or_default();
        for fd in &self.disks {
            if exports.iter().any(|e| e.id == fd.export_id) {
                note(
                    qmp.block_export_del_and_wait(&fd.export_id, ExportRemoveMode::Hard)
                        .await
                        .map_err(QemuError::qmp(vm, "deleting the export")),
                );
            }
        }
        for fd in &self.disks {
            note(
                qmp.block_job_cancel_and_wait(&fd.job_id)
                    .await
                    .map_err(QemuError::qmp(vm, "cancelling the backup job")),
            );
        }
        let nodes = qmp.query_named_block_nodes().await.unwrap_or_default();
        for fd in &self.disks {
            for node in [&fd.node, &fd.file_node] {
                if nodes.iter().any(|n| &n.node_name == node) {
                    note(
                        qmp.blockdev_del(node)
                            .await
                            .map_err(QemuError::qmp(vm, format!("deleting node {node}"))),
                    );
                }
            }
            let _ = std::fs::remove_file(&fd.file);
            // The VM's scratch directory goes too once empty.
            if let Some(dir) = fd.file.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        for fd in &self.disks {
            note(settle_bitmaps(qmp, vm, fd, committed, &nodes).await);
        }
        first
    }
}

/// After a freeze: keep exactly one recording Bora bitmap on the disk that covers every
/// write since the last committed snapshot.
async fn settle_bitmaps(
    qmp: &QmpClient,
    vm: &str,
    fd: &FrozenDisk,
    committed: bool,
    nodes: &[crate::qmp::BlockNode],
) -> Result<(), QemuError> {
    let node = &fd.disk.node;
    let has = |name: &str| {
        nodes
            .iter()
            .find(|n| &n.node_name == node)
            .is_some_and(|n| n.bitmap(name).is_some())
    };
    let step = |s: &str| QemuError::qmp(vm, format!("{s} on disk {}", fd.disk.disk));
    match (&fd.base_bitmap, committed) {
        (Some(base), true) if has(base) => qmp
            .bitmap_remove(node, base)
            .await
            .map_err(step("dropping the base bitmap")),
        (Some(base), false) if has(base) && has(&fd.new_bitmap) => {
            let tx = Transaction::new()
                .bitmap_enable(node, base)
                .bitmap_merge(node, base, &[&fd.new_bitmap])
                .bitmap_remove(node, &fd.new_bitmap);
            qmp.transaction(&tx)
                .await
                .map_err(step("merging the new bitmap back into the base"))
        }
        // No base: the next backup reads everything anyway; the new bitmap would only
        // mislead, since no snapshot was committed at its point in time.
        (None, false) if has(&fd.new_bitmap) => qmp
            .bitmap_remove(node, &fd.new_bitmap)
            .await
            .map_err(step("dropping the new bitmap")),
        _ => Ok(()),
    }
}
