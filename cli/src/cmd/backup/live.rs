//! The hypervisor side of a cluster coordinator's live-VM backups: the same QMP freeze as
//! the embedded `backup --vm` ([`super::vm::prepare`]), with the frozen disks handed to
//! the workers as NBD URLs instead of read in-process.

use std::path::PathBuf;

use async_trait::async_trait;

use bora_coordinator::live::{FrozenSource, FrozenVm, LiveVms, VmListing};
use bora_core::host::HostSpec;
use bora_core::snapshot::{SnapshotId, SnapshotMeta};
use bora_worker::qemu::freeze::Frozen;
use bora_worker::qemu::host::{connect, vm_disks, vm_sockets};

use super::Mode;
use super::vm::{Prepared, clean_up, prepare};
use crate::output;

/// Live VMs over QMP; fleecing scratch images go to the host's scratch directory or
/// `scratch`.
pub struct QemuLiveVms {
    pub scratch: PathBuf,
}

struct FrozenQemuVm {
    frozen: Frozen,
    sources: Vec<FrozenSource>,
}

#[async_trait]
impl FrozenVm for FrozenQemuVm {
    fn sources(&self) -> Vec<FrozenSource> {
        self.sources.clone()
    }

    async fn release(self: Box<Self>, committed: bool) -> Result<(), String> {
        match self.frozen.release(committed).await {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    }
}

#[async_trait]
impl LiveVms for QemuLiveVms {
    async fn vm_names(&self, host: &HostSpec) -> Result<Vec<String>, String> {
        let socks = vm_sockets(host).map_err(|e| e.to_string())?;
        Ok(socks.into_iter().map(|s| s.vm).collect())
    }

    async fn list(&self, host: &HostSpec) -> Result<Vec<VmListing>, String> {
        let mut out = Vec::new();
        for sock in vm_sockets(host).map_err(|e| e.to_string())? {
            // A stale socket (VM shut down) is reported with the VM, not fatal.
            let disks = match connect(&sock).await {
                Ok(qmp) => vm_disks(&qmp, &sock.vm).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let (disks, error) = match disks {
                Ok(d) => (d.into_iter().map(|d| (d.disk, d.size)).collect(), None),
                Err(e) => (Vec::new(), Some(e)),
            };
            out.push(VmListing {
                vm: sock.vm,
                host: host.name.clone(),
                disks,
                error,
            });
        }
        Ok(out)
    }

    async fn freeze(
        &self,
        host: &HostSpec,
        vm: &str,
        id: &SnapshotId,
        parent: Option<&SnapshotMeta>,
        full: bool,
        chunk_size: u32,
    ) -> Result<Box<dyn FrozenVm>, String> {
        let socks = vm_sockets(host).map_err(|e| e.to_string())?;
        let sock = socks
            .into_iter()
            .find(|s| s.vm == vm)
            .ok_or_else(|| format!("host {} has no vm {vm}", host.name))?;
        let Prepared { frozen, modes } =
            prepare(host, &sock, parent, full, chunk_size, id, &self.scratch)
                .await
                .map_err(|e| output::one_line(&e))?;
        let sources = frozen
            .disks
            .iter()
            .zip(modes)
            .map(|(fd, mode)| FrozenSource {
                disk: fd.disk.disk.clone(),
                source: frozen.nbd.url(&fd.export),
                size: fd.disk.size,
                bitmap: match &mode {
                    Mode::Incremental { base } => Some(base.clone()),
                    Mode::Full { .. } => None,
                },
                cbt: mode.cbt(Some(fd.new_bitmap.clone())),
            })
            .collect();
        Ok(Box::new(FrozenQemuVm { frozen, sources }))
    }

    async fn clean_up(
        &self,
        host: &HostSpec,
        vm: &str,
        latest: Option<&SnapshotMeta>,
    ) -> Result<Vec<String>, String> {
        let socks = vm_sockets(host).map_err(|e| e.to_string())?;
        let sock = socks
            .into_iter()
            .find(|s| s.vm == vm)
            .ok_or_else(|| format!("host {} has no vm {vm}", host.name))?;
        clean_up(host, &sock, latest, &self.scratch)
            .await
            .map_err(|e| output::one_line(&e))
    }
}
