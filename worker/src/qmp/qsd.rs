//! A live "hypervisor host" for tests: qemu-storage-daemon over a 64 MiB qcow2 in a temp
//! dir, started as the project's QEMU notes describe (QMP and NBD on unix sockets only,
//! a writable export `live` playing the guest); killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::QmpClient;

pub const MIB: u64 = 1 << 20;
pub const DISK_SIZE: u64 = 64 * MIB;

pub async fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program} (install qemu-utils): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

pub struct Qsd {
    /// Held so the daemon dies with the test (kill on drop).
    _child: Child,
    pub dir: TempDir,
    pub qmp: PathBuf,
    pub nbd: PathBuf,
}

impl Qsd {
    pub async fn start() -> Qsd {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("disk.qcow2");
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", path_str(&image), "64M"],
        )
        .await;
        let qmp = dir.path().join("qmp.sock");
        let nbd = dir.path().join("nbd.sock");
        let log = std::fs::File::create(dir.path().join("qsd.log")).expect("log file");
        let mut child = Command::new("qemu-storage-daemon")
            .arg("--chardev")
            .arg(format!(
                "socket,id=qmp0,path={},server=on,wait=off",
                path_str(&qmp)
            ))
            .args(["--monitor", "chardev=qmp0", "--blockdev"])
            .arg(format!(
                "driver=file,node-name=disk0-file,filename={}",
                path_str(&image)
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=disk0-file"])
            .arg("--nbd-server")
            .arg(format!(
                "addr.type=unix,addr.path={},max-connections=16",
                path_str(&nbd)
            ))
            .args([
                "--export",
                "type=nbd,id=live,node-name=disk0,name=live,writable=on",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run qemu-storage-daemon (install qemu-utils)");
        for _ in 0..500 {
            if qmp.exists() && nbd.exists() {
                return Qsd {
                    _child: child,
                    dir,
                    qmp,
                    nbd,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("qsd.log")).unwrap_or_default();
                panic!("qemu-storage-daemon exited with {status}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("qemu-storage-daemon did not create its sockets");
    }

    pub async fn connect(&self) -> QmpClient {
        QmpClient::connect_unix(&self.qmp)
            .await
            .expect("qmp connect")
    }

    /// A scratch path in the daemon's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
