//! Live VMs through a cluster (`bora up`, separate processes on 127.0.0.1): hosts and VMs
//! registered with the coordinator, VMs frozen by it over QMP (qemu-storage-daemon stands
//! in for the hypervisor), their disks read by the workers over NBD — incrementally
//! through Bora's dirty bitmaps — and released when the job ends.

use std::path::{Path, PathBuf};

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

/// A dense qcow2 disk of `size` bytes nothing else shares, and a raw copy of its
/// contents: `(qcow2, raw)`.
fn dense(env: &Env, name: &str, size: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = env.path(&format!("{name}.raw"));
    raw_image(&raw, size, &[(0, noise(size as usize, seed))]);
    let qcow2 = env.path(&format!("{name}.qcow2"));
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", p(&raw), p(&qcow2)])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    (qcow2, raw)
}

#[test]
fn cluster_cancel_releases_a_live_vm_and_commits_nothing() {
    let env = Env::new();
    // 2 MiB/s per source and worker: a 16 MiB disk takes seconds, time enough to cancel.
    let up = Up::start(
        &env,
        &[
            "--workers",
            "2",
            "--storage-nodes",
            "2",
            "--read-limit",
            "2097152",
        ],
    );
    let (img, raw) = dense(&env, "vm1-disk0", 16 * MIB, 5);
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd1.sock"), &img);
    register(&env, &up, "h1", &q);

    let mut child = std::process::Command::new(bora_bin())
        .args(up.args(&["backup", "--vm", "vm1", "--json"]))
        .env_remove("BORA_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bora backup");
    super::cluster::wait_running(&env, &up, "vm1");
    let jobs = super::cluster::status(&env, &up)["jobs"].clone();
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["vm"] == "vm1" && j["state"] == "running")
        .unwrap_or_else(|| panic!("no running job: {jobs}"))["job"]
        .as_str()
        .unwrap()
        .to_string();
    let cancelled = env.json(&up.args(&["cancel", &job]));
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let out = child.wait().map(|_| ()).and_then(|()| {
        let mut s = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut s)
            .map(|_| s)
    });
    let err = out.expect("backup stderr");
    assert!(
        err.contains("was cancelled; nothing was committed"),
        "{err}"
    );
    assert!(
        env.json(&up.args(&["snapshots", "--vm", "vm1"]))
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The coordinator lets go of the VM: no export, job, scratch node or bitmap is left.
    super::cluster::wait_for(
        "the VM to be released",
        std::time::Duration::from_secs(20),
        || q.bora_leftovers().is_empty() && q.bora_bitmaps("disk0").is_empty(),
    );
    // Cancelling again says it had ended.
    let again = env.json(&up.args(&["cancel", &job]));
    assert_eq!(again["state"], "cancelled");

    // The next backup runs and restores bit-exact.
    let r = env.json(&up.args(&["backup", "--vm", "vm1"]));
    assert_eq!(disk0(&r)["mode"], "full");
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&r))]);
    restores(&env, &up, "latest", "vm1", &raw);
}

/// The most leases of `host` the coordinator's log shows held at once, and the most of
/// all hosts together (the log is written in the order the lease table changes).
fn max_concurrent_leases(log: &str, host: &str) -> (usize, usize) {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        let rest = &line[start..];
        let end = rest.find([' ', '}']).unwrap_or(rest.len());
        Some(rest[..end].to_string())
    };
    let mut active: std::collections::BTreeMap<String, String> = Default::default();
    let (mut most_host, mut most_all) = (0, 0);
    for line in log.lines().filter(|l| l.contains(" range{")) {
        let (Some(lease), Some(h)) = (field(line, "lease"), field(line, "host")) else {
            continue;
        };
        if line.contains("range leased") {
            active.insert(lease, h);
        } else {
            active.remove(&lease);
        }
        most_host = most_host.max(active.values().filter(|x| *x == host).count());
        most_all = most_all.max(active.len());
    }
    (most_host, most_all)
}

#[test]
fn cluster_reads_at_most_per_host_limit_ranges_of_one_host() {
    let env = Env::new();
    // Two workers of two ranges each could read four ranges of one host at once; the
    // limit allows one. Slow sources keep ranges open long enough to overlap.
    let up = Up::start_logging(
        &env,
        "cluster",
        &[
            "--workers",
            "2",
            "--storage-nodes",
            "1",
            "--per-host-limit",
            "1",
            "--read-limit",
            "16777216",
        ],
        Some("info"),
    );
    let dir = env.path("h1");
    std::fs::create_dir_all(&dir).unwrap();
    let mut qsds = Vec::new();
    for (i, vm) in ["vm1", "vm2"].iter().enumerate() {
        let (img, raw) = dense(&env, vm, 24 * MIB, 10 + i as u64);
        let q = Qsd::one_disk(
            &dir.join(format!("{vm}.qmp")),
            &dir.join(format!("{vm}.nbd.sock")),
            &img,
        );
        qsds.push((vm.to_string(), q, raw));
    }
    let nbd = format!("unix:{}/{{vm}}.nbd.sock", dir.display());
    env.ok(&up.args(&["host", "add", "h1", "--qmp-dir", p(&dir), "--nbd", &nbd]));
    let (img3, raw3) = dense(&env, "vm3", 24 * MIB, 12);
    let q3 = Qsd::one_disk(&env.path("vm3.qmp"), &env.path("nbd3.sock"), &img3);
    register(&env, &up, "h2", &q3);
    qsds.push(("vm3".into(), q3, raw3));

    let reports = env.json(&up.args(&["backup", "--vm", "vm1", "--vm", "vm2", "--vm", "vm3"]));
    assert_eq!(reports.as_array().unwrap().len(), 3, "{reports}");
    for (vm, q, img) in &qsds {
        let r = reports
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["vm"] == vm.as_str())
            .unwrap();
        assert_eq!(q.assert_clean(), [format!("bora-{}", snap(r))]);
        restores(&env, &up, "latest", vm, img);
    }
    let log = std::fs::read_to_string(up.config("coordinator-1").with_file_name("log")).unwrap();
    let leased = log.lines().filter(|l| l.contains("range leased")).count();
    assert_eq!(leased, 9, "three 24 MiB disks in 8 MiB ranges: {log}");
    let (h1, all) = max_concurrent_leases(&log, "h1");
    assert_eq!(
        h1, 1,
        "host h1 had {h1} ranges read at once; the limit is 1"
    );
    assert!(
        all >= 2,
        "h2's ranges should run beside h1's: at most {all} leases at once"
    );
}

#[test]
fn a_live_vm_backup_survives_a_killed_leader_and_the_vm_is_cleaned_up() {
    let env = Env::new();
    // 4 MiB/s per source and worker: a 32 MiB disk takes seconds, time to kill the leader.
    let up = Up::start(
        &env,
        &[
            "--coordinators",
            "3",
            "--workers",
            "2",
            "--storage-nodes",
            "2",
            "--read-limit",
            "4194304",
        ],
    );
    let (img, raw) = dense(&env, "vm1-disk0", 32 * MIB, 7);
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd1.sock"), &img);
    register(&env, &up, "h1", &q);

    let child = std::process::Command::new(bora_bin())
        .args(up.args(&["backup", "--vm", "vm1", "--json"]))
        .env_remove("BORA_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bora backup");
    super::cluster::wait_running(&env, &up, "vm1");
    // The leader froze the VM; it dies with the job halfway.
    let st = super::cluster::status(&env, &up);
    let leader = st["leader"].as_str().expect("a leader").to_string();
    super::cluster::kill9(
        super::cluster::member(&st, &leader)["pid"]
            .as_u64()
            .expect("pid"),
    );
    // The new leader takes the job over; the workers keep reading the frozen export.
    let r = super::cluster::finished(child);
    assert_eq!(disk0(&r)["mode"], "full", "{r}");
    restores(&env, &up, "latest", "vm1", &raw);
    // When the job ends the new leader cleans the VM up: no export, job or scratch node
    // is left, and one recording bitmap, the snapshot's.
    super::cluster::wait_for(
        "the VM to be cleaned up",
        std::time::Duration::from_secs(20),
        || q.bora_leftovers().is_empty(),
    );
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&r))]);

    // The bitmap chain goes on: the next backup is incremental and reads the one write.
    guest(&q.url("live"), &["write -P 0x77 5M 64K".into()]);
    let copy = env.path("after.raw");
    copy_export(&q.url("live"), &copy);
    let next = env.json(&up.args(&["backup", "--vm", "vm1"]));
    assert_eq!(next["parent"], r["snapshot"]);
    let d = disk0(&next);
    assert_eq!(d["mode"], "incremental", "{next}");
    assert!(u(d, "bytes_read") <= CS, "{next}");
    restores(&env, &up, "latest", "vm1", &copy);
}
