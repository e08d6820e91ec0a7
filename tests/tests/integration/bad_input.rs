//! Bad input gets a clear one-line error, and nothing committed earlier is lost.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use bora_tests::*;

const MIB: u64 = 1 << 20;

/// Backs up a small disk and returns (env, image, snapshot id).
fn one_snapshot() -> (Env, PathBuf, String) {
    let env = Env::new();
    let img = env.path("db.raw");
    raw_image(
        &img,
        16 * MIB,
        &[
            (0, noise(4 * MIB as usize, 5)),
            (8 * MIB, noise(MIB as usize, 6)),
        ],
    );
    let r = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "db"]);
    let id = r["snapshot"].as_str().unwrap().to_string();
    (env, img, id)
}

#[test]
fn missing_and_unreadable_images_are_clear_errors() {
    let env = Env::new();
    let err = env.fails(&["backup", "--image", "/nonexistent/disk.qcow2", "--vm", "x"]);
    assert!(
        err.contains("/nonexistent/disk.qcow2") && err.contains("No such file"),
        "{err}"
    );
    let dir = env.path("adir");
    std::fs::create_dir(&dir).unwrap();
    let err = env.fails(&["backup", "--image", dir.to_str().unwrap(), "--vm", "x"]);
    assert!(err.contains("adir"), "{err}");
}

#[test]
fn truncated_and_corrupt_qcow2_fail_and_keep_earlier_snapshots() {
    let (env, img, id) = one_snapshot();

    // A qcow2 cut short: its L1/refcount tables point past the end of the file.
    let raw = env.path("big.raw");
    raw_image(
        &raw,
        64 * MIB,
        &[
            (0, noise(8 * MIB as usize, 1)),
            (40 * MIB, noise(8 * MIB as usize, 2)),
        ],
    );
    let q = env.path("cut.qcow2");
    qcow2_from_raw(&raw, &q);
    let len = std::fs::metadata(&q).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let err = env.fails(&["backup", "--image", q.to_str().unwrap(), "--vm", "db"]);
    assert!(err.contains("cut.qcow2"), "{err}");

    // A qcow2 header with garbage after the magic.
    let bad = env.path("garbage.qcow2");
    let mut f = std::fs::File::create(&bad).unwrap();
    let mut header = b"QFI\xfb".to_vec();
    header.extend(noise(4096, 3));
    f.write_all(&header).unwrap();
    drop(f);
    let err = env.fails(&["backup", "--image", bad.to_str().unwrap(), "--vm", "db"]);
    assert!(err.contains("garbage.qcow2"), "{err}");

    // Nothing was committed by the failures; the earlier snapshot still restores.
    let list = env.json(&["snapshots", "--vm", "db"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = env.path("out.raw");
    env.ok(&[
        "restore",
        &id,
        "--vm",
        "db",
        "--disk",
        "db",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&img, &out));
}

#[test]
fn unknown_snapshot_vm_and_disk_are_named() {
    let (env, _img, id) = one_snapshot();
    let out = env.path("o.raw");
    let o = out.to_str().unwrap();
    let err = env.fails(&[
        "restore",
        "0123456789abcdef",
        "--vm",
        "db",
        "--disk",
        "db",
        "--to",
        o,
    ]);
    assert!(err.contains("0123456789abcdef"), "{err}");
    let err = env.fails(&[
        "restore", "latest", "--vm", "nosuchvm", "--disk", "db", "--to", o,
    ]);
    assert!(err.contains("nosuchvm"), "{err}");
    let err = env.fails(&["restore", &id, "--vm", "db", "--disk", "sdz", "--to", o]);
    assert!(err.contains("sdz") && err.contains("db"), "{err}");
    assert!(!out.exists());
    // An existing file is not overwritten without --force.
    std::fs::write(&out, b"keep me").unwrap();
    let err = env.fails(&["restore", &id, "--vm", "db", "--disk", "db", "--to", o]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    env.ok(&[
        "restore", &id, "--vm", "db", "--disk", "db", "--to", o, "--force",
    ]);
}

#[test]
fn locked_repository_names_the_holder() {
    let (env, img, _id) = one_snapshot();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.repo().join("lock"))
        .unwrap();
    lock.try_lock().expect("take the repository lock");
    lock.set_len(0).unwrap();
    (&lock).write_all(b"4242").unwrap();
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("locked by pid 4242"), "{err}");
    let err = env.fails(&["backup", "--image", img.to_str().unwrap(), "--vm", "db"]);
    assert!(err.contains("locked by pid 4242"), "{err}");
    drop(lock);
    env.ok(&["snapshots"]);
}

#[test]
fn corrupted_chunk_fails_restore_naming_chunk_and_offset() {
    let (env, _img, id) = one_snapshot();
    let packs = pack_files(&env.repo());
    assert!(!packs.is_empty(), "no pack files under the repository");
    // Flip one byte in the middle of every pack: some chunk's payload is now wrong.
    for p in &packs {
        let mut data = std::fs::read(p).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
        std::fs::write(p, data).unwrap();
    }
    let out = env.path("bad.raw");
    let err = env.fails(&[
        "restore",
        &id,
        "--vm",
        "db",
        "--disk",
        "db",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("chunk") && err.contains("offset"), "{err}");
    assert!(!out.exists(), "a failed restore left {}", out.display());
}

#[test]
fn a_closed_stdout_ends_quietly_like_sigpipe() {
    let (env, _img, _snap) = one_snapshot();
    // The reading end is gone before bora starts: its first write fails with EPIPE.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = std::process::Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .args(["snapshots", "--json"])
        .env_remove("BORA_LOG")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run bora");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
