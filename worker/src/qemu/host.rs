//! A host's VMs: which QMP sockets there are, and which disks each VM has.

use std::path::{Path, PathBuf};

use bora_core::host::{HostSpec, QmpTarget};

use super::QemuError;
use crate::nbd::NbdAddr;
use crate::qmp::{QmpClient, QmpError};

/// One VM: its name and QMP socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSocket {
    pub vm: String,
    pub socket: PathBuf,
}

/// One disk of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDisk {
    /// The device id (QEMU) or node name (qemu-storage-daemon).
    pub disk: String,
    /// The block node to freeze and export.
    pub node: String,
    pub size: u64,
    /// Whether the node's format can store persistent dirty bitmaps (qcow2). On others
    /// (raw: LVM volumes, raw files) Bora's bitmaps live only while the VM runs, so a
    /// restarted VM gets a full backup.
    pub persistent_bitmaps: bool,
}

fn stem(path: &Path) -> Option<String> {
    path.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// The VMs of `host`: its one socket, or every `*.qmp` in its directory, by name.
pub fn vm_sockets(host: &HostSpec) -> Result<Vec<VmSocket>, QemuError> {
    let err = |reason: String| QemuError::Host {
        host: host.name.clone(),
        reason,
    };
    let mut out = Vec::new();
    match &host.qmp {
        QmpTarget::Socket(path) => {
            let vm = stem(path).ok_or_else(|| err(format!("{}: no file name", path.display())))?;
            out.push(VmSocket {
                vm,
                socket: path.clone(),
            });
        }
        QmpTarget::Dir(dir) => {
            let rd = std::fs::read_dir(dir)
                .map_err(|e| err(format!("QMP directory {}: {e}", dir.display())))?;
            for e in rd.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "qmp")
                    && let Some(vm) = stem(&path)
                {
                    out.push(VmSocket { vm, socket: path });
                }
            }
        }
    }
    out.sort_by(|a, b| a.vm.cmp(&b.vm));
    Ok(out)
}

/// Where the NBD server of `vm` on `host` listens: the host's `--nbd` address (`{vm}` in
/// it is replaced by the VM's name), else `<QMP socket dir>/<vm>.bora-nbd.sock`.
pub fn nbd_addr(host: &HostSpec, vm: &VmSocket) -> Result<NbdAddr, QemuError> {
    match &host.nbd {
        Some(a) => {
            let a = a.replace("{vm}", &vm.vm);
            match a.strip_prefix("unix:") {
                Some(p) => Ok(NbdAddr::Unix(PathBuf::from(p))),
                None if a.contains(':') => Ok(NbdAddr::Tcp(a)),
                None => Err(QemuError::Host {
                    host: host.name.clone(),
                    reason: format!("NBD address {a:?}: expected unix:PATH or HOST:PORT"),
                }),
            }
        }
        None => {
            let dir = vm.socket.parent().unwrap_or(Path::new("."));
            Ok(NbdAddr::Unix(dir.join(format!("{}.bora-nbd.sock", vm.vm))))
        }
    }
}

/// The disks of the VM behind `qmp`, in QEMU's order.
pub async fn vm_disks(qmp: &QmpClient, vm: &str) -> Result<Vec<VmDisk>, QemuError> {
    let disks = qmp
        .top_level_nodes()
        .await
        .map_err(QemuError::qmp(vm, "listing disks"))?;
    Ok(disks
        .into_iter()
        .map(|d| VmDisk {
            disk: d.name,
            node: d.node.node_name,
            size: d.node.virtual_size,
            persistent_bitmaps: d.node.drv == "qcow2",
        })
        .collect())
}

/// Connects to a VM's QMP socket.
pub async fn connect(vm: &VmSocket) -> Result<QmpClient, QemuError> {
    QmpClient::connect_unix(&vm.socket)
        .await
        .map_err(|e: QmpError| {
            QemuError::other(
                &vm.vm,
                format!("connecting to QMP socket {}", vm.socket.display()),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_nbd_addresses() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["101.qmp", "100.qmp", "100.pid", "x.sock"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let host = HostSpec::new("pve1".into(), QmpTarget::Dir(dir.path().into()), None);
        let vms = vm_sockets(&host).unwrap();
        let names: Vec<_> = vms.iter().map(|v| v.vm.as_str()).collect();
        assert_eq!(names, ["100", "101"]);
        assert_eq!(
            nbd_addr(&host, &vms[0]).unwrap(),
            NbdAddr::Unix(dir.path().join("100.bora-nbd.sock"))
        );
        let mut host = host;
        host.nbd = Some("unix:/run/bora/{vm}.nbd".into());
        assert_eq!(
            nbd_addr(&host, &vms[1]).unwrap(),
            NbdAddr::Unix("/run/bora/101.nbd".into())
        );
        host.nbd = Some("127.0.0.1:10809".into());
        assert_eq!(
            nbd_addr(&host, &vms[1]).unwrap(),
            NbdAddr::Tcp("127.0.0.1:10809".into())
        );
        host.nbd = Some("nonsense".into());
        assert!(nbd_addr(&host, &vms[1]).is_err());
        let missing = HostSpec::new("x".into(), QmpTarget::Dir("/nonexistent".into()), None);
        assert!(vm_sockets(&missing).is_err());
    }
}
