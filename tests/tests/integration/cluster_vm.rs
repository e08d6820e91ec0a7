//! Live VMs through a cluster (`bora up`, separate processes on 127.0.0.1): hosts and VMs
//! registered with the coordinator, VMs frozen by it over QMP (qemu-storage-daemon stands
//! in for the hypervisor), their disks read by the workers over NBD — incrementally
//! through Bora's dirty bitmaps — and released when the job ends.

use std::path::Path;

use serde_json::{Value, json};

use bora_tests::qsd::*;
use bora_tests::*;

use super::cluster::Up;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const CS: u64 = 256 * KIB;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn register(env: &Env, up: &Up, name: &str, q: &Qsd) {
    let qmp = format!("unix:{}", q.qmp.display());
    let nbd = format!("unix:{}", q.nbd.display());
    env.ok(&up.args(&["host", "add", name, "--qmp", &qmp, "--nbd", &nbd]));
}

fn snap(report: &Value) -> &str {
    report["snapshot"].as_str().unwrap()
}

fn restores(env: &Env, up: &Up, snapshot: &str, vm: &str, expected: &Path) {
    let out = env.path(&format!("restored-{vm}-{snapshot}.raw"));
    let _ = std::fs::remove_file(&out);
    env.ok(&up.args(&[
        "restore",
        snapshot,
        "--vm",
        vm,
        "--disk",
        "disk0",
        "--to",
        p(&out),
    ]));
    assert!(
        images_identical(expected, &out),
        "snapshot {snapshot} of {vm} does not restore to {}",
        expected.display()
    );
}

#[test]
fn cluster_backs_up_live_vms_incrementally_and_releases_them() {
    let env = Env::new();
    let up = Up::start(&env, &["--workers", "2", "--storage-nodes", "2"]);

    let img1 = env.path("vm1-disk0.qcow2");
    qcow2_with(
        &img1,
        "64M",
        &["write -P 0x5a 0 8M".into(), "write -P 0x3c 40M 4M".into()],
    );
    let img2 = env.path("vm2-disk0.qcow2");
    qcow2_with(&img2, "32M", &["write -P 0x11 1M 3M".into()]);
    let q1 = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd1.sock"), &img1);
    let q2 = Qsd::one_disk(&env.path("vm2.qmp"), &env.path("nbd2.sock"), &img2);
    register(&env, &up, "h1", &q1);
    register(&env, &up, "h2", &q2);

    let hosts = env.json(&up.args(&["host", "list"]));
    assert_eq!(hosts.as_array().unwrap().len(), 2, "{hosts}");
    let vms = env.json(&up.args(&["vm", "list"]));
    assert_eq!(
        vms,
        json!([
            {"vm": "vm1", "host": "h1", "disks": [{"disk": "disk0", "size": 64 * MIB, "node": null}]},
            {"vm": "vm2", "host": "h2", "disks": [{"disk": "disk0", "size": 32 * MIB, "node": null}]},
        ]),
        "{vms}"
    );

    // Two VMs at once: each frozen by the coordinator, read by the workers, released.
    let both = env.json(&up.args(&["backup", "--vm", "vm1", "--vm", "vm2"]));
    let both = both.as_array().expect("one report per VM");
    assert_eq!(both.len(), 2);
    for (r, q) in both.iter().zip([&q1, &q2]) {
        let d = disk0(r);
        assert_eq!(d["mode"], "full", "{r}");
        assert_eq!(d["reason"], "no parent snapshot of this disk");
        assert_eq!(d["bitmap"], format!("bora-{}", snap(r)));
        assert_eq!(q.assert_clean(), [format!("bora-{}", snap(r))]);
    }
    let first = both.iter().find(|r| r["vm"] == "vm1").unwrap().clone();
    let live = q1.url("live");
    let copy1 = env.path("copy1.raw");
    copy_export(&live, &copy1);

    // Four 64 KiB guest writes in four chunks: the next backup reads only those.
    let writes: Vec<(u64, u64)> = (0..4u64)
        .map(|i| (i * 15 * MIB + 8 * KIB, 64 * KIB))
        .collect();
    let cmds: Vec<String> = writes
        .iter()
        .enumerate()
        .map(|(i, (off, len))| format!("write -P {} {off} {len}", 0x80 + i))
        .collect();
    guest(&live, &cmds);
    let second = env.json(&up.args(&["backup", "--vm", "vm1"]));
    assert_eq!(second["parent"], first["snapshot"]);
    let d = disk0(&second);
    assert_eq!(d["mode"], "incremental", "{second}");
    let read = u(d, "bytes_read");
    assert!(
        (4 * 64 * KIB..=4 * CS).contains(&read),
        "the incremental read {read} bytes for 4 writes of 64 KiB: {second}"
    );
    assert_eq!(q1.assert_clean(), [format!("bora-{}", snap(&second))]);
    let copy2 = env.path("copy2.raw");
    copy_export(&live, &copy2);

    restores(&env, &up, "latest", "vm1", &copy2);
    restores(&env, &up, snap(&first), "vm1", &copy1);
    assert!(!images_identical(&copy1, &copy2));

    // --full reads everything again and keeps the bitmap chain going.
    let third = env.json(&up.args(&["backup", "--vm", "vm1", "--full"]));
    assert_eq!(disk0(&third)["mode"], "full");
    assert_eq!(disk0(&third)["reason"], "--full given");
    assert_eq!(q1.assert_clean(), [format!("bora-{}", snap(&third))]);
    restores(&env, &up, "latest", "vm1", &copy2);

    // An unknown VM: one clear line, nothing frozen.
    let err = env.fails(&up.args(&["backup", "--vm", "nope"]));
    assert!(err.contains("no registered host has a vm"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
