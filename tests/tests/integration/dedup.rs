//! Deduplication is global: an unchanged disk uploads nothing, and a clone with a few
//! changed blocks, backed up as another VM, uploads only about its changed share.

use std::os::unix::fs::FileExt;

use bora_tests::*;

const MIB: u64 = 1 << 20;

#[test]
fn second_backup_of_unchanged_image_uploads_nothing() {
    let env = Env::new();
    let img = env.path("app.raw");
    raw_image(
        &img,
        32 * MIB,
        &[
            (0, noise(12 * MIB as usize, 1)),
            (20 * MIB, b"abc\n".repeat(500_000)),
        ],
    );
    let first = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "app"]);
    assert!(u(disk0(&first), "bytes_uploaded") > 0);
    let second = env.json(&["backup", "--image", img.to_str().unwrap(), "--vm", "app"]);
    let d = disk0(&second);
    assert_eq!(u(d, "bytes_uploaded"), 0, "{second}");
    assert_eq!(u(d, "chunks_new"), 0);
    assert_eq!(
        u(d, "chunks_reused"),
        u(disk0(&first), "chunks_new") + u(disk0(&first), "chunks_reused")
    );
    assert_eq!(second["parent"], first["snapshot"]);
}

#[test]
fn clone_with_two_percent_changed_uploads_only_its_changed_share() {
    let env = Env::new();
    let chunk = u(&env.json(&["init"]), "chunk_size");
    let chunks = 100u64;
    let size = chunks * chunk;
    let base = env.path("golden.raw");
    raw_image(&base, size, &[(0, noise(size as usize, 77))]);
    env.json(&[
        "backup",
        "--image",
        base.to_str().unwrap(),
        "--vm",
        "golden",
    ]);

    // The clone: 2 of 100 chunks get a changed 4 KiB block (a guest writing a file).
    let clone = env.path("clone.raw");
    std::fs::copy(&base, &clone).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&clone)
        .unwrap();
    for c in [17u64, 63] {
        f.write_all_at(&noise(4096, 1000 + c), c * chunk + 12_288)
            .unwrap();
    }
    f.sync_all().unwrap();
    let r = env.json(&[
        "backup",
        "--image",
        clone.to_str().unwrap(),
        "--vm",
        "clone",
    ]);
    let d = disk0(&r);
    assert_eq!(u(d, "chunks_new"), 2, "{r}");
    assert_eq!(u(d, "chunks_reused"), chunks - 2);
    let uploaded = u(d, "bytes_uploaded");
    assert!(
        uploaded <= 2 * chunk + 4096,
        "uploaded {uploaded} bytes for 2 changed chunks"
    );
    assert_eq!(
        u(d, "bytes_read"),
        size,
        "image files have no changed-block map: all is read"
    );

    let out = env.path("clone-out.raw");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "clone",
        "--disk",
        "clone",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&clone, &out));
}
