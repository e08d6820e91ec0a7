//! Live VMs: what the coordinator needs from the hypervisor side to back up a registered
//! VM agentlessly, as a trait. The coordinator decides when (a `BackupVm` request) and
//! keeps the catalog; the implementation (`bora`'s, over QMP and NBD) finds the VM on its
//! host, freezes its disks at one point in time, says where workers read them and
//! whether the parent's dirty bitmap allows an incremental, and releases them when the
//! job ends. The coordinator crate stays free of QEMU.

use async_trait::async_trait;

use bora_core::host::HostSpec;
use bora_core::snapshot::{CbtRecord, SnapshotId, SnapshotMeta};

/// A VM of a host and its disks, as `vm list` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmListing {
    pub vm: String,
    pub host: String,
    /// `(disk, size in bytes)`.
    pub disks: Vec<(String, u64)>,
    /// Why the disks could not be listed.
    pub error: Option<String>,
}

/// One frozen disk as the workers read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenSource {
    pub disk: String,
    /// The NBD URL of the point-in-time export.
    pub source: String,
    pub size: u64,
    /// The export's dirty bitmap to read only changed blocks through (an incremental on
    /// top of the parent's disk); `None`: a full read.
    pub bitmap: Option<String>,
    /// Stored with the disk in the snapshot: the mode, why a full read, and the bitmap
    /// the next backup starts from.
    pub cbt: CbtRecord,
}

/// A VM whose disks stay frozen until [`FrozenVm::release`].
#[async_trait]
pub trait FrozenVm: Send + Sync {
    fn sources(&self) -> Vec<FrozenSource>;
    /// Lets go of the frozen disks: after a commit the parent's bitmap goes, after a
    /// failure the changes are kept for the next backup. An error is for the log: the
    /// next backup of the VM cleans up what is left.
    async fn release(self: Box<Self>, committed: bool) -> Result<(), String>;
}

/// The hypervisor side of live backups.
#[async_trait]
pub trait LiveVms: Send + Sync {
    /// The names of the VMs on `host` (cheap: no VM is contacted).
    async fn vm_names(&self, host: &HostSpec) -> Result<Vec<String>, String>;
    /// The VMs on `host` with their disks.
    async fn list(&self, host: &HostSpec) -> Result<Vec<VmListing>, String>;
    /// Freezes every disk of `vm` on `host` for the snapshot `id`, deciding per disk
    /// between an incremental on top of `parent` and a full read (`full` forces one).
    async fn freeze(
        &self,
        host: &HostSpec,
        vm: &str,
        id: &SnapshotId,
        parent: Option<&SnapshotMeta>,
        full: bool,
        chunk_size: u32,
    ) -> Result<Box<dyn FrozenVm>, String>;
    /// Cleans up what a backup of `vm` left frozen on `host` when the coordinator that
    /// froze it is gone (a leader change): as the VM's next backup would, with `latest`,
    /// the VM's newest committed snapshot, saying which dirty bitmap to keep. Returns what
    /// was done, for the log.
    async fn clean_up(
        &self,
        host: &HostSpec,
        vm: &str,
        latest: Option<&SnapshotMeta>,
    ) -> Result<Vec<String>, String>;
}
