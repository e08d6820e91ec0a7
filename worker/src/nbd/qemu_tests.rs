//! The client against a real `qemu-nbd` serving a qcow2 with known contents and a dirty
//! bitmap, made offline with qemu-img and qemu-io as the project's QEMU notes describe.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::join_all;
use tokio::process::{Child, Command};

use super::{BlockStatusExtent, NbdAddr, NbdClient, STATE_DIRTY, STATE_HOLE, STATE_ZERO};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

async fn run(program: &str, args: &[&str]) -> String {
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

/// A 1 GiB qcow2 with bitmap chk1 recording writes of 0xaa at [0, 1M) and 0xbb at
/// [100M, 100M+64K).
async fn make_disk(dir: &Path) -> PathBuf {
    let image = dir.join("disk.qcow2");
    let path = image.to_str().expect("utf-8 temp path");
    run("qemu-img", &["create", "-q", "-f", "qcow2", path, "1G"]).await;
    run("qemu-img", &["bitmap", "--add", path, "chk1"]).await;
    run(
        "qemu-io",
        &[
            "-t",
            "writeback",
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 0 1M",
            "-c",
            "write -P 0xbb 100M 64k",
            path,
        ],
    )
    .await;
    image
}

/// qemu-nbd serving `image` as export "disk" on a unix socket in `dir`; killed on drop.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    async fn start(dir: &Path, image: &Path, extra: &[&str]) -> QemuNbd {
        let sock = dir.join("nbd.sock");
        let mut child = Command::new("qemu-nbd")
            .args(["-t", "-f", "qcow2", "-x", "disk"])
            .args(extra)
            .arg("-k")
            .arg(&sock)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run qemu-nbd (install qemu-utils)");
        for _ in 0..500 {
            if sock.exists() {
                return QemuNbd { child, sock };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("qemu-nbd exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("qemu-nbd did not create {} within 10 s", sock.display());
    }

    fn addr(&self) -> NbdAddr {
        NbdAddr::Unix(self.sock.clone())
    }

    async fn stop(mut self) {
        self.child.kill().await.expect("kill qemu-nbd");
    }
}

fn ext(offset: u64, length: u64, flags: u32) -> BlockStatusExtent {
    BlockStatusExtent {
        offset,
        length,
        flags,
    }
}

#[tokio::test]
async fn qemu_nbd_read_only_export_with_dirty_bitmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = make_disk(dir.path()).await;
    let server = QemuNbd::start(dir.path(), &image, &["-e", "8", "-r", "-B", "chk1"]).await;
    let bitmap = "qemu:dirty-bitmap:chk1";
    let client = NbdClient::connect(&server.addr(), "disk", &["base:allocation", bitmap])
        .await
        .expect("connect");
    assert_eq!(client.size(), GIB);
    assert!(client.read_only());
    assert_eq!(client.max_block(), 32 << 20);

    let head = client.read(0, MIB as u32).await.expect("read");
    assert!(head.iter().all(|b| *b == 0xaa));
    let tail = client.read(100 * MIB, 64 * KIB as u32).await.expect("read");
    assert!(tail.iter().all(|b| *b == 0xbb));
    let hole = client
        .read(50 * MIB, MIB as u32)
        .await
        .expect("read a hole");
    assert!(hole.iter().all(|b| *b == 0));
    let edge = client
        .read(MIB - 4096, 8192)
        .await
        .expect("read across the edge");
    assert!(edge[..4096].iter().all(|b| *b == 0xaa) && edge[4096..].iter().all(|b| *b == 0));
    // Larger than the 32 MiB maximum block: split into several requests.
    let big = client.read(0, 40 << 20).await.expect("big read");
    assert_eq!(big.len(), 40 << 20);
    assert!(big[..MIB as usize].iter().all(|b| *b == 0xaa));
    assert!(big[MIB as usize..].iter().all(|b| *b == 0));

    let end = 100 * MIB + 64 * KIB;
    let alloc = client
        .block_status("base:allocation", 0, GIB)
        .await
        .expect("block status");
    let hz = STATE_HOLE | STATE_ZERO;
    let want = [
        ext(0, MIB, 0),
        ext(MIB, 99 * MIB, hz),
        ext(100 * MIB, 64 * KIB, 0),
        ext(end, GIB - end, hz),
    ];
    assert_eq!(alloc, want);
    let dirty = client
        .block_status(bitmap, 0, u64::MAX)
        .await
        .expect("dirty bitmap");
    let d = STATE_DIRTY;
    let want = [
        ext(0, MIB, d),
        ext(MIB, 99 * MIB, 0),
        ext(100 * MIB, 64 * KIB, d),
        ext(end, GIB - end, 0),
    ];
    assert_eq!(dirty, want);
    // An unaligned sub-range tiles exactly.
    let part = client
        .block_status("base:allocation", MIB / 2, 2 * MIB)
        .await
        .expect("part");
    assert_eq!(part, [ext(MIB / 2, MIB / 2, 0), ext(MIB, 3 * MIB / 2, hz)]);

    let reads = join_all((0..16u64).map(|i| client.read(i * 64 * KIB, 64 * KIB as u32))).await;
    for r in reads {
        assert!(r.expect("concurrent read").iter().all(|b| *b == 0xaa));
    }

    client.disconnect().await.expect("disconnect");
    server.stop().await;
}

#[tokio::test]
async fn qemu_nbd_writable_export_accepts_write_zeroes_and_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = make_disk(dir.path()).await;
    let server = QemuNbd::start(dir.path(), &image, &[]).await;
    let client = NbdClient::connect(&server.addr(), "disk", &[])
        .await
        .expect("connect");
    assert!(!client.read_only());

    client
        .write(5 * MIB, &vec![0xcc; 64 * KIB as usize])
        .await
        .expect("write");
    client.write_zeroes(0, 4096).await.expect("write zeroes");
    client.flush().await.expect("flush");
    let back = client
        .read(5 * MIB, 64 * KIB as u32)
        .await
        .expect("read back");
    assert!(back.iter().all(|b| *b == 0xcc));
    let head = client.read(0, 8192).await.expect("read back");
    assert!(head[..4096].iter().all(|b| *b == 0) && head[4096..].iter().all(|b| *b == 0xaa));
    client.disconnect().await.expect("disconnect");
    server.stop().await;

    // The image itself holds the writes once qemu-nbd is gone.
    let path = image.to_str().expect("utf-8 temp path");
    let out = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "qcow2",
            "-c",
            "read -P 0xcc 5M 64k",
            "-c",
            "read -P 0 0 4k",
            "-c",
            "read -P 0xaa 4k 4k",
            path,
        ],
    )
    .await;
    assert!(!out.contains("verification failed"), "{out}");
}
