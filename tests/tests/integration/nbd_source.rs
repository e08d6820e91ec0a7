//! `bora backup --nbd URL --bitmap NAME`: a full read the first time, then incremental
//! from QEMU's own persistent dirty bitmap, served by real `qemu-nbd`.

use std::path::Path;
use std::process::{Child, Command};

use bora_tests::*;

const MIB: u64 = 1 << 20;

/// Serves `image` read-only with its dirty bitmap `bitmap` exposed, as export `disk`.
fn serve(image: &Path, bitmap: &str, sock: &Path) -> Child {
    let _ = std::fs::remove_file(sock);
    let child = Command::new("qemu-nbd")
        .args([
            "-t", "-e", "8", "-r", "-f", "qcow2", "-B", bitmap, "-x", "disk", "-k",
        ])
        .arg(sock)
        .arg(image)
        .spawn()
        .expect("qemu-nbd");
    for _ in 0..400 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    child
}

fn stop(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn nbd_export_with_dirty_bitmap_backs_up_incrementally() {
    let env = Env::new();
    let raw = env.path("base.raw");
    raw_image(
        &raw,
        256 * MIB,
        &[
            (0, noise(64 * MIB as usize, 1)),
            (200 * MIB, noise(8 * MIB as usize, 2)),
        ],
    );
    let disk = env.path("vm.qcow2");
    qcow2_from_raw(&raw, &disk);
    tool(
        "qemu-img",
        &["bitmap", "--add", disk.to_str().unwrap(), "b1"],
    );
    let sock = env.path("nbd.sock");
    let url = format!("nbd+unix:///disk?socket={}", sock.display());

    let server = serve(&disk, "b1", &sock);
    let first = env.json(&[
        "backup", "--nbd", &url, "--vm", "web", "--disk", "vda", "--bitmap", "b1",
    ]);
    stop(server);
    let d = disk0(&first);
    assert_eq!(d["mode"], "full");
    assert_eq!(d["reason"], "no parent snapshot of this disk");
    assert_eq!(u(d, "bytes_read"), 72 * MIB);

    // The guest writes 64 KiB in 10 places; the persistent bitmap b1 records them.
    let offsets: Vec<u64> = (0..10).map(|i| i * 23 * MIB + 4096 * (i + 1)).collect();
    let mut args = vec![
        "-t".to_string(),
        "writeback".into(),
        "-f".into(),
        "qcow2".into(),
    ];
    for (i, off) in offsets.iter().enumerate() {
        args.push("-c".into());
        args.push(format!("write -P {} {off} 64k", 0x30 + i));
    }
    args.push(disk.to_str().unwrap().into());
    tool(
        "qemu-io",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    let server = serve(&disk, "b1", &sock);
    let second = env.json(&[
        "backup", "--nbd", &url, "--vm", "web", "--disk", "vda", "--bitmap", "b1",
    ]);
    // A backup that names a bitmap the export does not have fails clearly.
    let err = env.fails(&[
        "backup", "--nbd", &url, "--vm", "web", "--disk", "vda", "--bitmap", "nosuch",
    ]);
    assert!(err.contains("nosuch"), "{err}");
    // Without --bitmap: a full read, and the reason says so.
    let third = env.json(&["backup", "--nbd", &url, "--vm", "web", "--disk", "vda"]);
    stop(server);

    let d = disk0(&second);
    assert_eq!(d["mode"], "incremental", "{second}");
    let read = u(d, "bytes_read");
    // Ten 64 KiB writes touch at most twenty 256 KiB chunks (their allocated parts).
    assert!(
        read > 0 && read <= 20 * 256 * 1024,
        "incremental read {read} bytes"
    );
    assert!(u(d, "chunks_clean") >= 1024 - 20, "{second}");
    assert_eq!(disk0(&third)["mode"], "full");
    assert_eq!(disk0(&third)["reason"], "no --bitmap given");

    // The incremental is a complete snapshot: it restores to the disk as it is now.
    let out = env.path("restored.qcow2");
    let id = second["snapshot"].as_str().unwrap();
    env.ok(&[
        "restore",
        id,
        "--vm",
        "web",
        "--disk",
        "vda",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&disk, &out));
    // And the full one still restores to the disk as it was.
    let out1 = env.path("restored1.raw");
    let id1 = first["snapshot"].as_str().unwrap();
    env.ok(&[
        "restore",
        id1,
        "--vm",
        "web",
        "--disk",
        "vda",
        "--to",
        out1.to_str().unwrap(),
    ]);
    assert!(images_identical(&raw, &out1));
}
