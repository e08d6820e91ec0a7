//! A backup killed with SIGKILL halfway commits nothing, leaves no qemu-nbd behind, and
//! leaves the repository usable with every earlier snapshot restorable.

use std::process::Command;
use std::time::{Duration, Instant};

use bora_tests::*;

const MIB: u64 = 1 << 20;

#[test]
fn killed_backup_commits_nothing_and_the_repository_stays_usable() {
    let env = Env::new();
    let small = env.path("small.raw");
    raw_image(&small, 8 * MIB, &[(0, noise(2 * MIB as usize, 1))]);
    let a = env.json(&[
        "backup",
        "--image",
        small.to_str().unwrap(),
        "--vm",
        "db",
        "--disk",
        "d",
    ]);

    let raw = env.path("big.raw");
    raw_image(&raw, 512 * MIB, &[(0, noise(384 * MIB as usize, 2))]);
    let big = env.path("big.qcow2");
    qcow2_from_raw(&raw, &big);
    std::fs::remove_file(&raw).unwrap();

    let packs_before = pack_files(&env.repo()).len();
    let mut child = Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .args([
            "backup",
            "--image",
            big.to_str().unwrap(),
            "--vm",
            "db",
            "--disk",
            "d",
        ])
        .spawn()
        .unwrap();
    // Kill it once it has stored some chunks, before it can commit. Two packs are
    // uploaded at a time, so when the third appears the first is indexed.
    kill_after_packs(
        &mut child,
        &env.repo(),
        packs_before,
        3,
        Duration::from_secs(30),
    );

    // qemu-nbd notices its client is gone and exits by itself.
    let big_name = big.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(big_name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd still serves {big_name} after bora was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Nothing committed; the earlier snapshot restores; the lock was released.
    let list = env.json(&["snapshots", "--vm", "db"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = env.path("a.raw");
    env.ok(&[
        "restore",
        a["snapshot"].as_str().unwrap(),
        "--vm",
        "db",
        "--disk",
        "d",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&small, &out));

    // The same backup run again completes (chunks stored before the kill are reused) and
    // restores bit-exact.
    let b = env.json(&[
        "backup",
        "--image",
        big.to_str().unwrap(),
        "--vm",
        "db",
        "--disk",
        "d",
    ]);
    assert!(u(disk0(&b), "chunks_reused") > 0, "{b}");
    let out = env.path("b.qcow2");
    env.ok(&[
        "restore",
        "latest",
        "--vm",
        "db",
        "--disk",
        "d",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(images_identical(&big, &out));
}
