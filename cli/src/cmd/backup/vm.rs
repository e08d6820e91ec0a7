//! `bora backup --vm NAME [--vm NAME...] [--full]`: live, agentless backup of VMs of
//! registered hosts. Each VM: contact over QMP, clean up after killed backups, decide per
//! disk between incremental and full, freeze all disks in one transaction, read the
//! point-in-time exports over NBD, commit, release (see bora_worker::qemu).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::Semaphore;
use tracing::warn;

use bora_core::host::HostSpec;
use bora_core::snapshot::{SnapshotId, SnapshotMeta};
use bora_worker::qemu::freeze::{FreezeDisk, Frozen};
use bora_worker::qemu::host::{VmDisk, VmSocket, connect, nbd_addr, vm_disks, vm_sockets};
use bora_worker::qemu::recover::recover;
use bora_worker::qmp::BlockNode;
use bora_worker::source::nbd::{CONNECTIONS, NbdSource};

use super::report::{collect_outcomes, unique_vms};
use super::{BackupReport, DiskInput, Mode, backup_disks};
use crate::output;
use crate::repo::Repo;

/// Finds the host and socket of `vm` among the registered hosts.
pub fn find_vm(repo: &Repo, vm: &str) -> Result<(HostSpec, VmSocket)> {
    let hosts = repo.inventory.list()?;
    if hosts.is_empty() {
        bail!("no hosts are registered: bora host add NAME --qmp unix:PATH | --qmp-dir DIR");
    }
    for h in hosts {
        match vm_sockets(&h) {
            Ok(socks) => {
                if let Some(s) = socks.into_iter().find(|s| s.vm == vm) {
                    return Ok((h, s));
                }
            }
            Err(e) => warn!(host = %h.name, error = %e, "cannot list VMs"),
        }
    }
    bail!("no registered host has a vm {vm:?} (see bora vm list)")
}

/// Incremental when the parent's bitmap for this disk is on the node, recording, and the
/// disk did not change size; otherwise full, and why.
fn decide(
    full: bool,
    parent: Option<&SnapshotMeta>,
    disk: &VmDisk,
    node: Option<&BlockNode>,
    chunk_size: u32,
) -> (Mode, Option<String>) {
    let base = parent
        .and_then(|p| p.disk(&disk.disk))
        .and_then(|d| d.cbt.as_ref())
        .and_then(|c| c.bitmap.clone());
    let present = base
        .as_deref()
        .and_then(|b| node.and_then(|n| n.bitmap(b)))
        .is_some_and(|b| b.recording);
    let base_on_node = base.clone().filter(|_| present);
    let full_because = |r: String| (Mode::Full { reason: r }, base_on_node.clone());
    if full {
        return full_because("--full given".into());
    }
    let Some(pd) = parent.and_then(|p| p.disk(&disk.disk)) else {
        return full_because("no parent snapshot of this disk".into());
    };
    let Some(base) = base else {
        return full_because("the parent snapshot was taken without a dirty bitmap".into());
    };
    if !present {
        return full_because(format!(
            "dirty bitmap {base} is missing or stopped recording (the VM was restarted without it, the disk was replaced, or someone removed it)"
        ));
    }
    if pd.size != disk.size {
        return full_because(format!(
            "the disk size changed from {} to {} bytes",
            pd.size, disk.size
        ));
    }
    if pd.index.chunk_size != chunk_size {
        return full_because("the parent snapshot uses another chunk size".into());
    }
    (Mode::Incremental { base: base.clone() }, Some(base))
}

/// A VM frozen for the backup `id`, with the mode each disk is read in.
pub struct Prepared {
    pub frozen: Frozen,
    pub modes: Vec<Mode>,
}

/// Contacts the VM at `sock` on `host`, cleans up after killed backups, decides per disk
/// between an incremental on top of `parent` and a full read, and freezes every disk in
/// one transaction for the snapshot `id`, with scratch images in the host's scratch
/// directory or `scratch`. Shared by the embedded backup and the cluster coordinator.
pub async fn prepare(
    host: &HostSpec,
    sock: &VmSocket,
    parent: Option<&SnapshotMeta>,
    full: bool,
    chunk_size: u32,
    id: &SnapshotId,
    scratch: &std::path::Path,
) -> Result<Prepared> {
    let vm = sock.vm.as_str();
    let qmp = connect(sock).await?;
    let disks = vm_disks(&qmp, vm).await?;
    if disks.is_empty() {
        bail!("vm {vm} has no disks");
    }
    let scratch = host
        .scratch_dir
        .clone()
        .unwrap_or_else(|| scratch.to_path_buf());
    recover(&qmp, vm, &disks, &bases(&disks, parent), &scratch).await?;

    let nodes = qmp
        .query_named_block_nodes()
        .await
        .map_err(|e| anyhow!("vm {vm}: listing block nodes: {e}"))?;
    let mut modes = Vec::new();
    let mut freeze = Vec::new();
    for d in &disks {
        let node = nodes.iter().find(|n| n.node_name == d.node);
        let (mode, base) = decide(full, parent, d, node, chunk_size);
        modes.push(mode);
        freeze.push(FreezeDisk {
            disk: d.clone(),
            base_bitmap: base,
        });
    }
    let addr = nbd_addr(host, sock)?;
    let frozen = Frozen::freeze(&qmp, vm, id.as_str(), freeze, &scratch, addr).await?;
    Ok(Prepared { frozen, modes })
}

/// The dirty bitmap each disk's last committed snapshot (`parent`) left.
fn bases(disks: &[VmDisk], parent: Option<&SnapshotMeta>) -> HashMap<String, Option<String>> {
    disks
        .iter()
        .map(|d| {
            let b = parent
                .and_then(|p| p.disk(&d.disk))
                .and_then(|d| d.cbt.as_ref())
                .and_then(|c| c.bitmap.clone());
            (d.disk.clone(), b)
        })
        .collect()
}

/// Cleans up what a backup of the VM at `sock` left behind (exports, fleecing nodes,
/// scratch files, bitmaps), as [`prepare`] does first, without freezing anything:
/// `latest` is the VM's newest committed snapshot. Returns what was done.
pub async fn clean_up(
    host: &HostSpec,
    sock: &VmSocket,
    latest: Option<&SnapshotMeta>,
    scratch: &std::path::Path,
) -> Result<Vec<String>> {
    let vm = sock.vm.as_str();
    let qmp = connect(sock).await?;
    let disks = vm_disks(&qmp, vm).await?;
    let scratch = host
        .scratch_dir
        .clone()
        .unwrap_or_else(|| scratch.to_path_buf());
    Ok(recover(&qmp, vm, &disks, &bases(&disks, latest), &scratch).await?)
}

/// Backs up one VM, found at `sock` on `host` (see [`find_vm`]).
pub async fn backup_vm(
    repo: &Repo,
    host: &HostSpec,
    sock: &VmSocket,
    full: bool,
    quiet: bool,
) -> Result<BackupReport> {
    let vm = sock.vm.as_str();
    let parent = repo.catalog.latest(vm)?;
    let id = SnapshotId::random();
    let Prepared { frozen, modes } = prepare(
        host,
        sock,
        parent.as_ref(),
        full,
        repo.config.chunk_size,
        &id,
        &repo.dir.join("scratch"),
    )
    .await?;

    let result = async {
        let mut inputs = Vec::new();
        for (fd, mode) in frozen.disks.iter().zip(modes) {
            let bitmap = match &mode {
                Mode::Incremental { base } => Some(base.as_str()),
                Mode::Full { .. } => None,
            };
            let name = format!("vm {vm} disk {}", fd.disk.disk);
            let source = NbdSource::connect(&frozen.nbd, &fd.export, bitmap, CONNECTIONS, name)
                .await
                .with_context(|| {
                    format!(
                        "reading the frozen disk from the VM's NBD server at {} (if it runs elsewhere, register the host with --nbd)",
                        frozen.nbd
                    )
                })?;
            inputs.push(DiskInput {
                disk: fd.disk.disk.clone(),
                source: Arc::new(source),
                source_desc: format!("vm {vm} disk {} (node {})", fd.disk.disk, fd.disk.node),
                mode,
                next_bitmap: Some(fd.new_bitmap.clone()),
            });
        }
        tokio::select! {
            r = backup_disks(repo, vm, id.clone(), parent.as_ref(), inputs, quiet) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    }
    .await;
    let committed = result.is_ok();
    match (result, frozen.release(committed).await) {
        (r, None) => r,
        (Ok(r), Some(e)) => {
            eprintln!(
                "warning: vm {vm}: snapshot {} committed, but releasing the VM's disks failed ({e}); the next backup cleans up",
                r.meta.id
            );
            Ok(r)
        }
        (Err(e), Some(rel)) => Err(anyhow!(
            "{}; releasing the VM's disks also failed ({rel}); the next backup cleans up",
            output::one_line(&e)
        )),
    }
}

/// Backs up `vms` concurrently, at most `max_concurrent` per host.
pub async fn run(
    repo: &Repo,
    vms: &[String],
    full: bool,
    quiet: bool,
) -> Result<Vec<BackupReport>> {
    let mut limits: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut jobs = Vec::new();
    let unique = unique_vms(vms);
    for vm in unique.iter().copied() {
        let (host, sock) = find_vm(repo, vm)?;
        let sem = limits
            .entry(host.name.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(host.max_concurrent.max(1) as usize)))
            .clone();
        // Progress bars would interleave: only a single VM gets one.
        let quiet = quiet || unique.len() > 1;
        jobs.push(async move {
            let _permit = sem.acquire().await;
            (vm.clone(), backup_vm(repo, &host, &sock, full, quiet).await)
        });
    }
    collect_outcomes(futures::future::join_all(jobs).await, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::index::IndexRef;
    use bora_core::snapshot::{CbtRecord, DiskSnapshot, SNAPSHOT_FORMAT_VERSION};
    use bora_worker::qmp::BitmapInfo;

    const CS: u32 = 1 << 20;

    fn parent(bitmap: Option<&str>, size: u64) -> SnapshotMeta {
        SnapshotMeta {
            format: SNAPSHOT_FORMAT_VERSION,
            id: "p1".parse().unwrap(),
            vm: "vm1".into(),
            time: "2026-11-28T00:00:00Z".into(),
            parent: None,
            disks: vec![DiskSnapshot {
                disk: "vda".into(),
                size,
                index: IndexRef {
                    format: 1,
                    disk_size: size,
                    chunk_size: CS,
                    pieces: vec![],
                },
                source: String::new(),
                stats: Default::default(),
                cbt: Some(CbtRecord {
                    mode: "full".into(),
                    reason: None,
                    base: None,
                    bitmap: bitmap.map(str::to_string),
                }),
            }],
        }
    }

    fn node(bitmap: Option<(&str, bool)>) -> BlockNode {
        BlockNode {
            node_name: "n".into(),
            drv: "qcow2".into(),
            virtual_size: 64 << 20,
            read_only: false,
            dirty_bitmaps: bitmap
                .into_iter()
                .map(|(name, recording)| BitmapInfo {
                    name: name.into(),
                    recording,
                    persistent: true,
                    busy: false,
                    granularity: 65536,
                    count: 0,
                })
                .collect(),
        }
    }

    fn disk() -> VmDisk {
        VmDisk {
            disk: "vda".into(),
            node: "n".into(),
            size: 64 << 20,
            persistent_bitmaps: true,
        }
    }

    fn reason(m: (Mode, Option<String>)) -> String {
        match m.0 {
            Mode::Full { reason } => reason,
            Mode::Incremental { .. } => "incremental".into(),
        }
    }

    #[test]
    fn incremental_only_when_the_parents_bitmap_is_there_and_recording() {
        let p = parent(Some("bora-p1"), 64 << 20);
        let n = node(Some(("bora-p1", true)));
        let (mode, base) = decide(false, Some(&p), &disk(), Some(&n), CS);
        assert_eq!(
            mode,
            Mode::Incremental {
                base: "bora-p1".into()
            }
        );
        assert_eq!(base.as_deref(), Some("bora-p1"));

        assert_eq!(
            reason(decide(true, Some(&p), &disk(), Some(&n), CS)),
            "--full given"
        );
        assert!(reason(decide(false, None, &disk(), Some(&n), CS)).contains("no parent"));
        let stopped = node(Some(("bora-p1", false)));
        assert!(reason(decide(false, Some(&p), &disk(), Some(&stopped), CS)).contains("missing"));
        let other = node(Some(("bora-zz", true)));
        assert!(reason(decide(false, Some(&p), &disk(), Some(&other), CS)).contains("bora-p1"));
        let resized = parent(Some("bora-p1"), 32 << 20);
        assert!(reason(decide(false, Some(&resized), &disk(), Some(&n), CS)).contains("size"));
        let untracked = parent(None, 64 << 20);
        assert!(reason(decide(false, Some(&untracked), &disk(), Some(&n), CS)).contains("without"));
        assert!(reason(decide(false, Some(&p), &disk(), Some(&n), CS * 2)).contains("chunk size"));
    }
}
