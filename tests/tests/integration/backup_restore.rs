//! Backup → restore is bit-exact (judged by `qemu-img compare`), holes stay holes, and
//! sparse disks read only their allocated data.

use bora_tests::*;

const MIB: u64 = 1 << 20;

/// A 64 MiB disk with random, compressible and zero-filled-but-allocated regions.
fn mixed_writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, noise(3 * MIB as usize, 1)),
        (10 * MIB + 4096, b"log line\n".repeat(100_000)),
        (20 * MIB, vec![0u8; 2 * MIB as usize]), // allocated zeros
        (33 * MIB - 100, noise(200, 2)),         // straddles a chunk boundary
        (64 * MIB - 4096, noise(4096, 3)),       // the last block
    ]
}

#[test]
fn raw_backup_restores_bit_exact_and_sparse() {
    let env = Env::new();
    let img = env.path("vm1.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    let report = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "vm1"]);
    assert_eq!(report["vm"], "vm1");
    let d = disk0(&report);
    assert_eq!(d["disk"], "vm1", "disk defaults to the file stem");
    assert_eq!(u(d, "size"), 64 * MIB);
    assert!(u(d, "chunks_new") > 0);
    let id = report["snapshot"].as_str().unwrap().to_string();

    let out = env.path("restored.raw");
    env.ok(&[
        "restore",
        &id,
        "--vm",
        "vm1",
        "--disk",
        "vm1",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&img, &out));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 64 * MIB);
    // Holes stay holes: the 2 MiB of allocated zeros and the unwritten space are not written.
    assert!(
        allocated(&out) < 8 * MIB,
        "restored file allocates {} bytes",
        allocated(&out)
    );
}

#[test]
fn qcow2_backup_restores_bit_exact_as_qcow2_and_raw() {
    let env = Env::new();
    let raw = env.path("src.raw");
    raw_image(&raw, 64 * MIB, &mixed_writes());
    let img = env.path("disk.qcow2");
    qcow2_from_raw(&raw, &img);
    let report = env.json(&[
        "backup",
        "--image",
        img.to_str().unwrap(),
        "--vm",
        "vm2",
        "--disk",
        "sda",
    ]);
    assert_eq!(disk0(&report)["disk"], "sda");

    let out_q = env.path("out.qcow2");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "vm2",
        "--disk",
        "sda",
        "--to",
        out_q.to_str().unwrap(),
    ]);
    let info = tool(
        "qemu-img",
        &["info", "--output=json", out_q.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(images_identical(&img, &out_q));
    tool("qemu-img", &["check", out_q.to_str().unwrap()]);
    // Holes stay holes in qcow2 too: far less than the virtual size is allocated.
    assert!(
        allocated(&out_q) < 16 * MIB,
        "qcow2 allocates {}",
        allocated(&out_q)
    );

    let out_r = env.path("out.img");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "vm2",
        "--disk",
        "sda",
        "--to",
        out_r.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    assert!(images_identical(&raw, &out_r));
}

#[test]
fn sparse_disk_reads_only_allocated_data() {
    let env = Env::new();
    // 1 GiB raw with 3 MiB + 4 KiB of data.
    let img = env.path("sparse.raw");
    raw_image(
        &img,
        1024 * MIB,
        &[
            (100 * MIB, noise(3 * MIB as usize, 9)),
            (900 * MIB, noise(4096, 10)),
        ],
    );
    let report = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "sparse"]);
    let read = u(disk0(&report), "bytes_read");
    assert!(
        (3 * MIB + 4096..=3 * MIB + 64 * 1024).contains(&read),
        "raw read {read} bytes"
    );

    // The same through qcow2 (qemu-nbd block status): 1 GiB virtual, 2 MiB written.
    let q = env.path("sparse.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", q.to_str().unwrap(), "1G"],
    );
    tool(
        "qemu-io",
        &[
            "-t",
            "writeback",
            "-f",
            "qcow2",
            "-c",
            "write -P 0xaa 0 1M",
            "-c",
            "write -P 0xbb 500M 1M",
            q.to_str().unwrap(),
        ],
    );
    let report = env.json(&["backup", "--image", q.to_str().unwrap(), "--vm", "sparseq"]);
    let read = u(disk0(&report), "bytes_read");
    assert!(
        (2 * MIB..=2 * MIB + 256 * 1024).contains(&read),
        "qcow2 read {read} bytes"
    );
    let out = env.path("sparse-out.qcow2");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "sparseq",
        "--disk",
        "sparse",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&q, &out));
}

#[test]
fn snapshots_list_oldest_first_with_parents_and_latest() {
    let env = Env::new();
    let img = env.path("web.raw");
    raw_image(&img, 16 * MIB, &[(0, noise(MIB as usize, 1))]);
    let a = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "web"]);
    raw_image(&img, 16 * MIB, &[(0, noise(MIB as usize, 2))]);
    let b = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "web"]);
    env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "other"]);

    let list = env.json(&["snapshots", "--vm", "web"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], a["snapshot"]);
    assert_eq!(list[0]["parent"], serde_json::Value::Null);
    assert_eq!(list[1]["id"], b["snapshot"]);
    assert_eq!(list[1]["parent"], a["snapshot"]);
    assert_eq!(list[1]["disks"][0]["disk"], "web");
    assert_eq!(u(&list[1]["disks"][0], "size"), 16 * MIB);
    assert!(list[1]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(env.json(&["snapshots"]).as_array().unwrap().len(), 3);

    // Every point in time restores: the first snapshot has the first content.
    let out = env.path("first.raw");
    env.ok(&[
        "restore",
        a["snapshot"].as_str().unwrap(),
        "--vm",
        "web",
        "--disk",
        "web",
        "--to",
        out.to_str().unwrap(),
    ]);
    let first = std::fs::read(&out).unwrap();
    assert_eq!(&first[..MIB as usize], &noise(MIB as usize, 1)[..]);
}

#[test]
fn restore_into_a_writable_nbd_export_overwrites_old_data() {
    let env = Env::new();
    let img = env.path("src.raw");
    raw_image(&img, 64 * MIB, &mixed_writes());
    env.json(&[
        "backup",
        "--image",
        img.to_str().unwrap(),
        "--vm",
        "vm3",
        "--disk",
        "vda",
    ]);

    // The target disk on "another host" holds old data everywhere, so zeros must be written.
    let target = env.path("target.qcow2");
    let old = env.path("old.raw");
    raw_image(&old, 64 * MIB, &[(0, noise(64 * MIB as usize, 99))]);
    qcow2_from_raw(&old, &target);
    let sock = env.path("nbd.sock");
    let mut server = qemu_nbd_writable(&target, "target", &sock);
    let url = format!("nbd+unix:///target?socket={}", sock.display());
    let out = env.run(&[
        "restore", "latest", "--vm", "vm3", "--disk", "vda", "--to", &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-nbd (without -t) exits after its client disconnects, closing the image cleanly.
    let status = server.wait().unwrap();
    assert!(status.success());
    assert!(images_identical(&img, &target));

    // A target smaller than the disk is refused before anything is written.
    let small = env.path("small.qcow2");
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", small.to_str().unwrap(), "1M"],
    );
    let sock2 = env.path("nbd2.sock");
    let mut server = qemu_nbd_writable(&small, "small", &sock2);
    let url = format!("nbd+unix:///small?socket={}", sock2.display());
    let err = env.fails(&[
        "restore", "latest", "--vm", "vm3", "--disk", "vda", "--to", &url,
    ]);
    assert!(err.contains("bytes"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
}
