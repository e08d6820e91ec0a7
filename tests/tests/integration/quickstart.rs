//! `bora quickstart`, the README's main command, end to end: a real ext4 disk made with
//! `mkfs.ext4 -d`, changed with `debugfs`, two backups, two restores judged by
//! `qemu-img compare`.

use bora_tests::*;

#[test]
fn quickstart_proves_both_snapshots_bit_exact() {
    let env = Env::new();
    let work = env.path("work");
    let r = env.json(&[
        "quickstart",
        "--size-mib",
        "96",
        "--workdir",
        work.to_str().unwrap(),
    ]);
    assert_eq!(r["identical"], true);
    let snaps = r["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[1]["parent"], snaps[0]["snapshot"]);
    let (first, second) = (disk0(&snaps[0]), disk0(&snaps[1]));
    // The sample disk is mostly free space: far less than its size is read.
    assert!(u(first, "bytes_read") < u(first, "size") / 2, "{r}");
    // The second backup stores only what changed.
    assert!(u(second, "chunks_reused") > 0, "{r}");
    assert!(
        u(second, "bytes_uploaded") < u(first, "bytes_uploaded"),
        "{r}"
    );
    // What quickstart restored is really there and equals what it backed up.
    assert!(images_identical(
        &work.join("disk-v2.qcow2"),
        &work.join("restored-v2.qcow2")
    ));
    let list = env.json(&["snapshots", "--vm", "quickstart"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
}
