//! Hypervisor hosts as the operator registers them (`bora host add`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const HOST_FORMAT_VERSION: u32 = 1;

/// Where a host's QMP sockets are: one socket is one VM (a QEMU process or a
/// qemu-storage-daemon).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum QmpTarget {
    /// One VM, named by the socket's file stem.
    Socket(PathBuf),
    /// Every `*.qmp` socket in the directory is a VM named by its file stem (the Proxmox VE
    /// layout, `/var/run/qemu-server/<vmid>.qmp`).
    Dir(PathBuf),
}

/// A registered host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostSpec {
    /// Format version of this record.
    pub format: u32,
    pub name: String,
    pub qmp: QmpTarget,
    /// Where the host's NBD server listens (`unix:PATH` or `HOST:PORT`); Bora starts one
    /// there through QMP if none is running. Default: a socket Bora picks next to the QMP
    /// socket.
    #[serde(default)]
    pub nbd: Option<String>,
    /// VMs of this host backed up at once.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
    /// Where fleecing scratch images are created during a backup: a directory the VMs'
    /// QEMU processes can write. Default: `scratch/` in the repository.
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
}

fn default_max_concurrent() -> u32 {
    2
}

impl HostSpec {
    pub fn new(name: String, qmp: QmpTarget, nbd: Option<String>) -> HostSpec {
        HostSpec {
            format: HOST_FORMAT_VERSION,
            name,
            qmp,
            nbd,
            max_concurrent: default_max_concurrent(),
            scratch_dir: None,
        }
    }
}
