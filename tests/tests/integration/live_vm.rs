//! `bora backup --vm`: live, agentless backups of VMs behind QMP, with
//! qemu-storage-daemon standing in for the hypervisor and `qemu-io` on its writable NBD
//! export playing the guest. Point-in-time consistency while the guest writes,
//! incremental backups from Bora's dirty bitmaps, and no change lost when a backup fails,
//! is killed, or the bitmap cannot be trusted.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bora_tests::qsd::*;
use bora_tests::*;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
/// The default chunk size of a repository `backup` creates.
const CS: u64 = 256 * KIB;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `host add NAME --qmp unix:QMP --nbd unix:NBD` for one daemon.
fn register(env: &Env, name: &str, q: &Qsd, replace: bool) {
    let qmp = format!("unix:{}", q.qmp.display());
    let nbd = format!("unix:{}", q.nbd.display());
    let mut args = vec!["host", "add", name, "--qmp", &qmp, "--nbd", &nbd];
    if replace {
        args.push("--replace");
    }
    env.ok(&args);
}

fn backup(env: &Env, vm: &str) -> Value {
    env.json(&["backup", "--vm", vm])
}

fn snap(report: &Value) -> &str {
    report["snapshot"].as_str().unwrap()
}

/// Restores `snapshot` of `vm`/`disk` and asserts it equals `expected`.
fn assert_restores(env: &Env, snapshot: &str, vm: &str, disk: &str, expected: &Path) {
    let out = env.path(&format!("restored-{vm}-{disk}-{snapshot}.raw"));
    let _ = std::fs::remove_file(&out);
    env.ok(&[
        "restore",
        snapshot,
        "--vm",
        vm,
        "--disk",
        disk,
        "--to",
        p(&out),
    ]);
    assert!(
        images_identical(expected, &out),
        "snapshot {snapshot} of {vm}/{disk} does not restore to {}",
        expected.display()
    );
    std::fs::remove_file(&out).unwrap();
}

/// A dense raw file of pseudo-random data (written in pieces to keep memory low).
fn dense_raw(path: &Path, size: u64, seed: u64) {
    let f = std::fs::File::create(path).unwrap();
    let piece = 32 * MIB;
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off);
        f.write_all_at(&noise(n as usize, seed * 1000 + off / piece), off)
            .unwrap();
        off += n;
    }
    f.sync_all().unwrap();
}

/// The chunks `[off, off+len)` touches.
fn chunks_touched(writes: &[(u64, u64)]) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    for &(off, len) in writes {
        for c in off / CS..=(off + len - 1) / CS {
            set.insert(c);
        }
    }
    set
}

/// An error message is one line.
fn one_line(err: &str) {
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

#[test]
fn full_then_incremental() {
    let env = Env::new();
    let image = env.path("disk0.qcow2");
    qcow2_with(
        &image,
        "256M",
        &[
            "write -P 0x5a 0 8M".into(),
            "write -P 0x3c 100M 4M".into(),
            "write -P 0x77 255M 1M".into(),
        ],
    );
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd.sock"), &image);
    let live = q.url("live");
    register(&env, "h1", &q, false);

    let vms = env.json(&["vm", "list"]);
    assert_eq!(
        vms,
        json!([{"vm": "vm1", "host": "h1",
                "disks": [{"disk": "disk0", "size": 256 * MIB, "node": "disk0"}]}]),
        "{vms}"
    );

    let first = backup(&env, "vm1");
    assert_eq!(first["vm"], "vm1");
    assert_eq!(first["parent"], Value::Null);
    let d = disk0(&first);
    assert_eq!(d["disk"], "disk0");
    assert_eq!(u(d, "size"), 256 * MIB);
    assert_eq!(d["mode"], "full", "{first}");
    assert_eq!(d["reason"], "no parent snapshot of this disk");
    assert_eq!(d["bitmap"], format!("bora-{}", snap(&first)));
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&first))]);
    let copy1 = env.path("copy1.raw");
    copy_export(&live, &copy1);

    // Ten 64 KiB guest writes, 25 MiB apart; the first five straddle a chunk boundary.
    let writes: Vec<(u64, u64)> = (0..10u64)
        .map(|i| (i * 25 * MIB + 1000 * KIB - i * 8 * KIB, 64 * KIB))
        .collect();
    let cmds: Vec<String> = writes
        .iter()
        .enumerate()
        .map(|(i, (off, len))| format!("write -P {} {off} {len}", 0x80 + i))
        .collect();
    guest(&live, &cmds);
    let touched = chunks_touched(&writes).len() as u64;
    assert_eq!(touched, 15);

    let second = backup(&env, "vm1");
    let copy2 = env.path("copy2.raw");
    copy_export(&live, &copy2);
    assert_eq!(second["parent"], first["snapshot"]);
    let d = disk0(&second);
    assert_eq!(d["mode"], "incremental", "{second}");
    assert_eq!(d["reason"], Value::Null);
    let read = u(d, "bytes_read");
    let written: u64 = writes.iter().map(|w| w.1).sum();
    assert!(
        read >= written && read <= touched * CS,
        "incremental read {read} bytes for {written} bytes written in {touched} chunks"
    );
    assert!(
        u(d, "chunks_clean") == 256 * MIB / CS - touched,
        "{touched} chunks touched: {second}"
    );
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&second))]);

    assert_restores(&env, "latest", "vm1", "disk0", &copy2);
    assert_restores(&env, snap(&first), "vm1", "disk0", &copy1);
    assert!(!images_identical(&copy1, &copy2));
}

/// Marker blocks of the point-in-time test.
const MARKERS: u64 = 64;
const MARKER_DISK: u64 = 512 * MIB;

fn marker_offset(i: u64) -> u64 {
    i * (MARKER_DISK / MARKERS) + 3 * MIB + 4 * KIB
}

/// The byte written into every marker in round `g` (round 0: the initial contents).
fn pattern(g: u64) -> u8 {
    (g % 251) as u8 + 1
}

/// The markers after the writer's first `c` writes: marker i has been written in
/// ⌈(c − i) / N⌉ rounds.
fn markers_after(c: u64) -> Vec<u8> {
    (0..MARKERS)
        .map(|i| pattern((c + MARKERS - 1 - i) / MARKERS))
        .collect()
}

/// The guest: a long-running `qemu-io` fed over stdin, writing round g = 1, 2, ... into
/// marker 0, 1, ..., N−1 in order, one 4 KiB write at a time. `done` counts the writes
/// qemu-io reported complete (its "wrote" lines, flushed per command).
struct MarkerWriter {
    child: Child,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    feeder: Option<JoinHandle<u64>>,
    counter: Option<JoinHandle<()>>,
}

impl MarkerWriter {
    fn start(url: &str) -> MarkerWriter {
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-io");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let st = stop.clone();
        let feeder = std::thread::spawn(move || {
            let mut rounds = 0;
            'outer: while !st.load(Ordering::SeqCst) {
                let g = rounds + 1;
                for i in 0..MARKERS {
                    let line = format!("write -P {} {} 4k\n", pattern(g), marker_offset(i));
                    if stdin.write_all(line.as_bytes()).is_err() {
                        break 'outer;
                    }
                }
                rounds = g;
            }
            rounds // stdin is closed here: qemu-io runs what it got and exits
        });
        let d = done.clone();
        let counter = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("wrote ") {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        MarkerWriter {
            child,
            stop,
            done,
            feeder: Some(feeder),
            counter: Some(counter),
        }
    }

    fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` writes are complete.
    fn wait_for(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.done() < n {
            assert!(Instant::now() < deadline, "the guest writer is stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops after the current round; returns the number of complete rounds.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let rounds = self.feeder.take().unwrap().join().unwrap();
        let status = self.child.wait().unwrap();
        self.counter.take().unwrap().join().unwrap();
        assert!(status.success(), "qemu-io writer failed: {status}");
        assert_eq!(self.done(), rounds * MARKERS, "writes reported complete");
        rounds
    }
}

impl Drop for MarkerWriter {
    fn drop(&mut self) {
        // Only on a failed test: unblock the feeder and reap qemu-io.
        if self.feeder.is_some() {
            self.stop.store(true, Ordering::SeqCst);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn markers_in_file(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    (0..MARKERS)
        .map(|i| {
            let mut b = vec![0u8; 4096];
            f.read_exact_at(&mut b, marker_offset(i)).unwrap();
            assert!(
                b.iter().all(|&x| x == b[0]),
                "marker {i} is torn: {:?}",
                &b[..16]
            );
            b[0]
        })
        .collect()
}

/// Whether `m` is a view the writer passes through: [a]*k + [pred(a)]*(N−k).
fn is_point_in_time(m: &[u8]) -> bool {
    let a = m[0];
    let pred = if a == 1 { 251 } else { a - 1 };
    let k = m.iter().take_while(|&&x| x == a).count();
    m[k..].iter().all(|&x| x == pred)
}

/// The writer changes 64 markers spread over a 512 MiB disk in order, round after round,
/// so at any instant they read [g]*k + [g−1]*(N−k). A backup that read the disk as it
/// goes, without freezing it, would read marker 0 early and marker N−1 a second or so
/// later, dozens of rounds on: marker N−1 would hold a *later* generation than marker 0,
/// which no instant ever shows. Bora's backup must restore to one instant, one that lies
/// within the backup's run.
#[test]
fn point_in_time_consistency() {
    let env = Env::new();
    let raw = env.path("base.raw");
    dense_raw(&raw, MARKER_DISK, 7);
    {
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for i in 0..MARKERS {
            f.write_all_at(&[pattern(0); 4096], marker_offset(i))
                .unwrap();
        }
    }
    let image = env.path("vm1.qcow2");
    qcow2_from_raw(&raw, &image);
    std::fs::remove_file(&raw).unwrap();
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd.sock"), &image);
    let live = q.url("live");
    register(&env, "h1", &q, false);

    let writer = MarkerWriter::start(&live);
    writer.wait_for(2 * MARKERS);

    // Control: read the live disk without freezing it, marker 0 first and marker N−1 once
    // the writer has done a few more rounds — the view such a reader gets never existed.
    let m0 = read_export(&live, marker_offset(0), 4096);
    let seen = writer.done();
    writer.wait_for(seen + 3 * MARKERS);
    let mn = read_export(&live, marker_offset(MARKERS - 1), 4096);
    assert!(m0.iter().all(|&x| x == m0[0]) && mn.iter().all(|&x| x == mn[0]));
    let mut view = vec![m0[0]];
    view.extend(std::iter::repeat_n(mn[0], MARKERS as usize - 1));
    assert!(
        !is_point_in_time(&view),
        "a non-frozen read looked consistent: marker 0 {} and marker N-1 {}",
        m0[0],
        mn[0]
    );

    // A full backup while the guest keeps writing...
    let before = writer.done();
    let first = backup(&env, "vm1");
    std::thread::sleep(Duration::from_millis(200));
    let after = writer.done();
    assert_eq!(disk0(&first)["mode"], "full");
    assert!(
        after - before >= 2 * MARKERS,
        "the guest wrote only {} blocks during the backup; the check proves nothing",
        after - before
    );
    assert_one_instant(&env, snap(&first), before, after);

    // ...and an incremental one: the dirty blocks read from the frozen view, the rest
    // from the parent, must still make up one instant.
    let before = writer.done();
    let second = backup(&env, "vm1");
    std::thread::sleep(Duration::from_millis(200));
    let after = writer.done();
    assert_eq!(disk0(&second)["mode"], "incremental", "{second}");
    assert_one_instant(&env, snap(&second), before, after);
    let rounds = writer.stop();

    // After the writer stopped: every marker holds the last round, and an incremental
    // backup restores to the disk as it is (the writes during the backups were tracked).
    let third = backup(&env, "vm1");
    assert_eq!(disk0(&third)["mode"], "incremental", "{third}");
    let now = env.path("now.raw");
    copy_export(&live, &now);
    assert_eq!(markers_in_file(&now), markers_after(rounds * MARKERS));
    assert_restores(&env, snap(&third), "vm1", "disk0", &now);
    q.assert_clean();
}

/// Restores `snapshot` and asserts its markers show the disk after write c of the writer,
/// for some c in `before..=after` (the writes counted complete around the backup).
fn assert_one_instant(env: &Env, snapshot: &str, before: u64, after: u64) {
    let out = env.path("instant.raw");
    env.ok(&[
        "restore",
        snapshot,
        "--vm",
        "vm1",
        "--disk",
        "disk0",
        "--to",
        p(&out),
    ]);
    let restored = markers_in_file(&out);
    std::fs::remove_file(&out).unwrap();
    assert!(
        is_point_in_time(&restored),
        "snapshot {snapshot} is not one point in time: markers {restored:?}"
    );
    assert!(
        (before..=after).any(|c| markers_after(c) == restored),
        "the point in time of {snapshot} is not within its run (writes {before}..={after}): {restored:?}"
    );
}

/// Backs up and asserts the one disk `disk0` went `mode`; returns the report.
fn backup_mode(env: &Env, vm: &str, mode: &str) -> Value {
    let r = backup(env, vm);
    assert_eq!(disk0(&r)["mode"], mode, "{r}");
    r
}

#[test]
fn failed_backup_loses_no_change() {
    let env = Env::new();
    let image = env.path("disk0.qcow2");
    qcow2_with(&image, "64M", &["write -P 0x21 0 4M".into()]);
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd.sock"), &image);
    let live = q.url("live");
    register(&env, "h1", &q, false);

    let first = backup_mode(&env, "vm1", "full");
    let base = format!("bora-{}", snap(&first));
    assert_eq!(q.assert_clean(), vec![base.clone()]);

    // A: written before the failed attempt.
    guest(
        &live,
        &[
            "write -P 0xa1 10M 64k".into(),
            "write -P 0xa2 40M 8k".into(),
        ],
    );

    // The disks get frozen and exported, but the export cannot be read: the NBD server
    // is said to be somewhere it is not.
    env.ok(&[
        "host",
        "add",
        "h1",
        "--replace",
        "--qmp",
        &format!("unix:{}", q.qmp.display()),
        "--nbd",
        "unix:/nonexistent/x.sock",
    ]);
    let err = env.fails(&["backup", "--vm", "vm1"]);
    one_line(&err);
    assert!(err.contains("/nonexistent/x.sock"), "{err}");
    assert_eq!(
        env.json(&["snapshots", "--vm", "vm1"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "a failed backup committed a snapshot"
    );
    // The freeze was undone, and the base bitmap records again, holding A.
    assert_eq!(q.assert_clean(), vec![base]);
    let b = &q.bora_bitmaps("disk0")[0];
    assert!(u(b, "count") >= 64 * KIB + 8 * KIB, "{b}");
    assert!(
        std::fs::read_dir(env.repo().join("scratch"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "scratch images left behind"
    );

    register(&env, "h1", &q, true);
    // B: written after it.
    guest(&live, &["write -P 0xb1 20M 64k".into()]);
    let third = backup_mode(&env, "vm1", "incremental");
    assert_eq!(third["parent"], first["snapshot"]);
    assert!(
        u(disk0(&third), "bytes_read") >= 2 * 64 * KIB + 8 * KIB,
        "{third}"
    );
    let now = env.path("now.raw");
    copy_export(&live, &now);
    assert_restores(&env, snap(&third), "vm1", "disk0", &now);
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&third))]);
}

#[test]
fn killed_backup_loses_no_change() {
    let env = Env::new();
    let image = env.path("disk0.qcow2");
    qcow2_with(&image, "512M", &["write -P 0x31 0 16M".into()]);
    let q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd.sock"), &image);
    let live = q.url("live");
    register(&env, "h1", &q, false);
    let first = backup_mode(&env, "vm1", "full");

    // A: 448 MiB of new data, so that the next backup reads for a while.
    let a = env.path("a.raw");
    dense_raw(&a, 448 * MIB, 11);
    guest(&live, &[format!("write -s {} 32M 448M", p(&a))]);
    std::fs::remove_file(&a).unwrap();

    let packs_before = pack_files(&env.repo()).len();
    let mut child = Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .args(["backup", "--vm", "vm1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once it stored some chunks (packs are uploaded two at a time), i.e. while
    // the disk is frozen and exported.
    kill_after_packs(
        &mut child,
        &env.repo(),
        packs_before,
        3,
        Duration::from_secs(60),
    );

    // What the killed backup left: its export, job and fleecing nodes, and two bitmaps.
    let left = q.bora_leftovers();
    assert!(
        left.iter().any(|l| l.starts_with("export "))
            && left.iter().any(|l| l.starts_with("job "))
            && left.iter().any(|l| l.starts_with("node ")),
        "{left:?}"
    );
    assert_eq!(q.bora_bitmaps("disk0").len(), 2);
    assert_eq!(
        env.json(&["snapshots", "--vm", "vm1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // B: written while the leftovers are still there.
    guest(
        &live,
        &[
            "write -P 0xb2 500M 64k".into(),
            "write -P 0xb3 8M 4k".into(),
        ],
    );
    let third = backup_mode(&env, "vm1", "incremental");
    assert_eq!(third["parent"], first["snapshot"]);
    // A, which the killed backup read but did not commit, is read again.
    assert!(u(disk0(&third), "bytes_read") >= 448 * MIB, "{third}");
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&third))]);
    let scratch: Vec<_> = std::fs::read_dir(env.repo().join("scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "scratch images left: {scratch:?}");
    let now = env.path("now.raw");
    copy_export(&live, &now);
    assert_restores(&env, snap(&third), "vm1", "disk0", &now);
}

#[test]
fn missing_or_untrusted_bitmap_forces_full() {
    let env = Env::new();
    let image = env.path("disk0.qcow2");
    qcow2_with(&image, "64M", &["write -P 0x41 0 2M".into()]);
    let mut q = Qsd::one_disk(&env.path("vm1.qmp"), &env.path("nbd.sock"), &image);
    let live = q.url("live");
    register(&env, "h1", &q, false);
    let mut snaps: Vec<(String, std::path::PathBuf)> = Vec::new();
    let mut keep = |r: &Value, q: &Qsd| {
        let copy = env.path(&format!("copy{}.raw", snaps.len() + 1));
        copy_export(&q.url("live"), &copy);
        snaps.push((snap(r).to_string(), copy));
    };

    let s1 = backup_mode(&env, "vm1", "full");
    keep(&s1, &q);

    // Someone removes Bora's bitmap.
    let b1 = format!("bora-{}", snap(&s1));
    q.qmp_ok(
        "block-dirty-bitmap-remove",
        json!({"node": "disk0", "name": b1}),
    );
    guest(&live, &["write -P 0x42 4M 64k".into()]);
    let s2 = backup_mode(&env, "vm1", "full");
    let reason = disk0(&s2)["reason"].as_str().unwrap();
    assert!(
        reason.contains("bitmap") && reason.contains(&b1),
        "{reason}"
    );
    keep(&s2, &q);

    // A clean restart keeps the persistent bitmap, and the writes it recorded.
    guest(&live, &["write -P 0x43 6M 64k".into()]);
    q.quit();
    q.restart();
    assert_eq!(q.assert_clean(), [format!("bora-{}", snap(&s2))]);
    let s3 = backup_mode(&env, "vm1", "incremental");
    let read = u(disk0(&s3), "bytes_read");
    assert!((64 * KIB..=MIB).contains(&read), "{s3}");
    keep(&s3, &q);

    // A crash before the bitmap was ever saved: it is gone.
    guest(&live, &["write -P 0x44 8M 64k".into()]);
    q.kill();
    q.restart();
    assert!(
        q.bora_bitmaps("disk0").is_empty(),
        "{:?}",
        q.bitmaps("disk0")
    );
    let s4 = backup_mode(&env, "vm1", "full");
    let reason = disk0(&s4)["reason"].as_str().unwrap();
    assert!(reason.contains("bitmap"), "{reason}");
    keep(&s4, &q);

    // A crash while a saved bitmap was loaded: QEMU finds it marked in use and flags it
    // inconsistent — it may have missed writes.
    q.quit();
    q.restart();
    guest(&live, &["write -P 0x45 10M 64k".into()]);
    q.kill();
    q.restart();
    let b4 = format!("bora-{}", snap(&s4));
    let bitmaps = q.bitmaps("disk0");
    assert!(
        bitmaps
            .iter()
            .any(|b| b["name"] == b4.as_str() && b["inconsistent"] == true),
        "{bitmaps:?}"
    );
    let s5 = backup_mode(&env, "vm1", "full");
    let reason = disk0(&s5)["reason"].as_str().unwrap();
    assert!(
        reason.contains("bitmap") && reason.contains(&b4),
        "{reason}"
    );
    keep(&s5, &q);
    q.assert_clean();

    for (id, copy) in &snaps {
        assert_restores(&env, id, "vm1", "disk0", copy);
    }
}

#[test]
fn two_disks_one_transaction() {
    let env = Env::new();
    let img0 = env.path("d0.qcow2");
    let img1 = env.path("d1.qcow2");
    qcow2_with(&img0, "64M", &["write -P 0x51 0 3M".into()]);
    qcow2_with(&img1, "32M", &["write -P 0x52 1M 2M".into()]);
    let q = Qsd::start(
        &env.path("vm1.qmp"),
        &env.path("nbd.sock"),
        &[
            QsdDisk::new("disk0", &img0, Some("live0")),
            QsdDisk::new("disk1", &img1, Some("live1")),
        ],
    );
    register(&env, "h1", &q, false);

    let vms = env.json(&["vm", "list"]);
    let disks = vms[0]["disks"].as_array().unwrap();
    let size = |name: &str| {
        disks
            .iter()
            .find(|d| d["disk"] == name)
            .map(|d| u(d, "size"))
            .unwrap_or_else(|| panic!("no disk {name} in {vms}"))
    };
    assert_eq!(disks.len(), 2, "{vms}");
    assert_eq!(size("disk0"), 64 * MIB);
    assert_eq!(size("disk1"), 32 * MIB);

    let disk_of = |r: &Value, name: &str| -> Value {
        r["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["disk"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no disk {name} in {r}"))
    };
    let mut all = Vec::new();
    for (round, mode) in [(0, "full"), (1, "incremental")] {
        if round == 1 {
            guest(&q.url("live0"), &["write -P 0x61 50M 64k".into()]);
            guest(&q.url("live1"), &["write -P 0x62 30M 64k".into()]);
        }
        let r = backup(&env, "vm1");
        assert_eq!(r["disks"].as_array().unwrap().len(), 2, "{r}");
        let bitmap = format!("bora-{}", snap(&r));
        for name in ["disk0", "disk1"] {
            let d = disk_of(&r, name);
            assert_eq!(d["mode"], mode, "{r}");
            assert_eq!(d["bitmap"], bitmap.as_str());
        }
        // One freeze for both disks: one bitmap name on both.
        assert_eq!(q.assert_clean(), [bitmap.clone(), bitmap.clone()]);
        let c0 = env.path(&format!("c0-{round}.raw"));
        let c1 = env.path(&format!("c1-{round}.raw"));
        copy_export(&q.url("live0"), &c0);
        copy_export(&q.url("live1"), &c1);
        all.push((snap(&r).to_string(), c0, c1));
    }
    for (id, c0, c1) in &all {
        assert_restores(&env, id, "vm1", "disk0", c0);
        assert_restores(&env, id, "vm1", "disk1", c1);
    }
}

#[test]
fn two_vms_concurrently() {
    let env = Env::new();
    let dir = env.path("qmp");
    std::fs::create_dir(&dir).unwrap();
    let mut qs = Vec::new();
    for (vm, pat) in [("vmA", 0x71), ("vmB", 0x72)] {
        let image = env.path(&format!("{vm}.qcow2"));
        qcow2_with(&image, "64M", &[format!("write -P {pat} 0 6M")]);
        qs.push(Qsd::one_disk(
            &dir.join(format!("{vm}.qmp")),
            &dir.join(format!("{vm}.nbd")),
            &image,
        ));
    }
    let nbd = format!("unix:{}/{{vm}}.nbd", dir.display());
    env.ok(&["host", "add", "h1", "--qmp-dir", p(&dir), "--nbd", &nbd]);
    let vms = env.json(&["vm", "list"]);
    let names: BTreeSet<&str> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vm"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["vmA", "vmB"]), "{vms}");

    for (round, mode) in [(0, "full"), (1, "incremental")] {
        if round == 1 {
            for q in &qs {
                guest(&q.url("live"), &["write -P 0x7f 33M 64k".into()]);
            }
        }
        let reports = env.json(&["backup", "--vm", "vmA", "--vm", "vmB"]);
        let reports = reports.as_array().expect("an array of reports");
        assert_eq!(reports.len(), 2, "{reports:?}");
        for q in &qs {
            let vm = q.vm();
            let r = reports
                .iter()
                .find(|r| r["vm"] == vm.as_str())
                .unwrap_or_else(|| panic!("no report for {vm}: {reports:?}"));
            assert_eq!(disk0(r)["mode"], mode, "{r}");
            assert_eq!(q.assert_clean(), [format!("bora-{}", snap(r))]);
            let copy = env.path(&format!("{vm}-{round}.raw"));
            copy_export(&q.url("live"), &copy);
            assert_restores(&env, snap(r), &vm, "disk0", &copy);
        }
    }
}

/// A TCP server on 127.0.0.1 that treats each connection with `behave` (in a thread of
/// its own), until dropped.
struct HostileServer {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const REPLYMAGIC: u64 = 0x0003_e889_0455_65a9;

impl HostileServer {
    fn start(behave: fn(&mut TcpStream)) -> HostileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                // A client may hold several connections at once.
                std::thread::spawn(move || behave(&mut c));
            }
        });
        HostileServer {
            port,
            stop,
            handle: Some(handle),
        }
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/x", self.port)
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn read_some(c: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).ok().map(|_| b)
}

fn greeting(c: &mut TcpStream) {
    let mut g = Vec::new();
    g.extend_from_slice(&NBDMAGIC.to_be_bytes());
    g.extend_from_slice(&IHAVEOPT.to_be_bytes());
    g.extend_from_slice(&3u16.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    let _ = c.write_all(&g);
}

#[test]
fn hostile_nbd_server() {
    let env = Env::new();
    let img = env.path("d.raw");
    raw_image(&img, 4 * MIB, &[(0, noise(MIB as usize, 5))]);
    let earlier = env.json(&["backup", "--image", p(&img), "--vm", "v", "--disk", "d"]);

    let garbage = HostileServer::start(|c| {
        let mut junk = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
        junk.extend(noise(200, 9));
        let _ = c.write_all(&junk);
        let _ = read_some(c, 4);
    });
    let hangs_up = HostileServer::start(|c| {
        greeting(c);
    });
    let huge_reply = HostileServer::start(|c| {
        greeting(c);
        let _ = read_some(c, 4); // client flags
        // The first option: answer with an absurdly long reply.
        let Some(h) = read_some(c, 16) else { return };
        let len = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let _ = read_some(c, len as usize);
        let mut r = Vec::new();
        r.extend_from_slice(&REPLYMAGIC.to_be_bytes());
        r.extend_from_slice(&h[8..12]);
        r.extend_from_slice(&1u32.to_be_bytes()); // ACK
        r.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
        r.extend(noise(4096, 3));
        let _ = c.write_all(&r);
    });
    for server in [&garbage, &hangs_up, &huge_reply] {
        let url = server.url();
        let err = env.fails(&["backup", "--nbd", &url, "--vm", "v", "--disk", "d"]);
        one_line(&err);
        assert!(
            err.contains(&format!("127.0.0.1:{}", server.port)),
            "the error does not say which server: {err}"
        );
    }
    let list = env.json(&["snapshots", "--vm", "v"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], earlier["snapshot"]);
    assert_restores(&env, "latest", "v", "d", &img);
}

/// Answers a client's options as a well-behaved server of one `size`-byte read-only
/// export would (structured replies, every meta context asked for with ids 1..=n, GO);
/// returns n, or None if the client went away first.
fn handshake_ok(c: &mut TcpStream, size: u64) -> Option<u32> {
    let reply = |c: &mut TcpStream, opt: &[u8], kind: u32, data: &[u8]| {
        let mut r = REPLYMAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(opt);
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&(data.len() as u32).to_be_bytes());
        r.extend_from_slice(data);
        c.write_all(&r).is_ok()
    };
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    greeting(c);
    read_some(c, 4)?;
    let mut contexts = 0;
    loop {
        let h = read_some(c, 16)?;
        let (opt, len) = (&h[8..12], be32(&h, 12) as usize);
        let data = read_some(c, len)?;
        match be32(&h, 8) {
            8 => {
                reply(c, opt, 1, &[]);
            }
            10 => {
                let mut at = 4 + be32(&data, 0) as usize;
                let count = be32(&data, at);
                contexts = count;
                at += 4;
                for id in 1..=count {
                    let ql = be32(&data, at) as usize;
                    let mut m = id.to_be_bytes().to_vec();
                    m.extend_from_slice(&data[at + 4..at + 4 + ql]);
                    at += 4 + ql;
                    reply(c, opt, 4, &m);
                }
                reply(c, opt, 1, &[]);
            }
            7 => {
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&size.to_be_bytes());
                info.extend_from_slice(&3u16.to_be_bytes()); // HAS_FLAGS | READ_ONLY
                reply(c, opt, 3, &info);
                return reply(c, opt, 1, &[]).then_some(contexts);
            }
            _ => {
                reply(c, opt, 0x8000_0001, &[]); // ERR_UNSUP
            }
        }
    }
}

#[test]
fn hostile_nbd_server_mid_transfer() {
    let env = Env::new();
    let img = env.path("d.raw");
    raw_image(&img, 4 * MIB, &[(0, noise(MIB as usize, 5))]);
    env.json(&["backup", "--image", p(&img), "--vm", "v", "--disk", "d"]);

    // A proper handshake and block status, then a data chunk of almost 4 GiB.
    let huge_chunk = HostileServer::start(|c| {
        let Some(contexts) = handshake_ok(c, 64 * MIB) else {
            return;
        };
        let header = |cookie: &[u8], kind: u16, len: u32| {
            let mut r = 0x668e_33efu32.to_be_bytes().to_vec(); // structured reply
            r.extend_from_slice(&1u16.to_be_bytes()); // DONE
            r.extend_from_slice(&kind.to_be_bytes());
            r.extend_from_slice(cookie);
            r.extend_from_slice(&len.to_be_bytes());
            r
        };
        while let Some(req) = read_some(c, 28) {
            let cookie = &req[8..16];
            let len = u32::from_be_bytes(req[24..28].try_into().unwrap());
            match u16::from_be_bytes([req[6], req[7]]) {
                7 => {
                    // Block status: all data, one chunk per context.
                    for id in 1..=contexts {
                        let mut r = header(cookie, 5, 12);
                        r[4..6].copy_from_slice(&u16::from(id == contexts).to_be_bytes());
                        r.extend_from_slice(&id.to_be_bytes());
                        r.extend_from_slice(&len.to_be_bytes());
                        r.extend_from_slice(&0u32.to_be_bytes());
                        let _ = c.write_all(&r);
                    }
                }
                0 => {
                    // A read: a data chunk that claims almost 4 GiB.
                    let mut r = header(cookie, 1, 0xffff_fff0);
                    r.extend(noise(4096, 4));
                    let _ = c.write_all(&r);
                    return;
                }
                _ => return,
            }
        }
    });
    let err = env.fails(&[
        "backup",
        "--nbd",
        &huge_chunk.url(),
        "--vm",
        "v",
        "--disk",
        "d",
    ]);
    one_line(&err);
    assert!(err.contains(&huge_chunk.url()), "{err}");
    assert_eq!(
        env.json(&["snapshots", "--vm", "v"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_restores(&env, "latest", "v", "d", &img);
}

/// A VM whose disk is a raw image (LVM volumes, raw files: common) is backed up too, even
/// though QEMU cannot keep a persistent dirty bitmap in a raw image.
#[test]
fn raw_format_disk_is_backed_up() {
    let env = Env::new();
    let image = env.path("disk0.raw");
    raw_image(&image, 64 * MIB, &[(MIB, noise(2 * MIB as usize, 6))]);
    let qmp_sock = env.path("vm1.qmp");
    let nbd = env.path("nbd.sock");
    // Qsd opens its disks as qcow2: this one is raw, so set the daemon up by hand.
    let mut child = Command::new("qemu-storage-daemon")
        .arg("--chardev")
        .arg(format!(
            "socket,id=qmp0,path={},server=on,wait=off",
            p(&qmp_sock)
        ))
        .args(["--monitor", "chardev=qmp0", "--blockdev"])
        .arg(format!(
            "driver=file,node-name=disk0-file,filename={}",
            p(&image)
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=disk0-file"])
        .arg("--nbd-server")
        .arg(format!(
            "addr.type=unix,addr.path={},max-connections=16",
            p(&nbd)
        ))
        .args([
            "--export",
            "type=nbd,id=live,node-name=disk0,name=live,writable=on",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _reap = Reap(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(nbd.exists() && std::os::unix::net::UnixStream::connect(&qmp_sock).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let live = format!("nbd+unix:///live?socket={}", p(&nbd));
    env.ok(&[
        "host",
        "add",
        "h1",
        "--qmp",
        &format!("unix:{}", p(&qmp_sock)),
        "--nbd",
        &format!("unix:{}", p(&nbd)),
    ]);

    for round in 0..2 {
        if round == 1 {
            guest(&live, &["write -P 0x99 20M 64k".into()]);
        }
        let r = backup(&env, "vm1");
        let copy = env.path(&format!("copy{round}.raw"));
        copy_export(&live, &copy);
        assert_restores(&env, snap(&r), "vm1", "disk0", &copy);
        let left = qmp(&qmp_sock, "query-jobs", Value::Null).unwrap();
        assert_eq!(left, json!([]));
    }
}

/// Restore into another host: a running qemu-storage-daemon's writable export over a qcow2
/// disk full of other data. The export ends up equal to the snapshot (old data zeroed where
/// the snapshot has holes), for the latest and for an older snapshot.
#[test]
fn restore_into_a_qemu_storage_daemon_export_on_another_host() {
    let env = Env::new();
    let src = env.path("src.raw");
    raw_image(
        &src,
        48 * MIB,
        &[
            (0, noise(3 * MIB as usize, 1)),
            (30 * MIB, noise(MIB as usize, 2)),
        ],
    );
    let first = env.json(&["backup", "--image", p(&src), "--vm", "vm9", "--disk", "d"]);
    let first_copy = env.path("first.raw");
    std::fs::copy(&src, &first_copy).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    f.write_all_at(&noise(2 * MIB as usize, 3), 40 * MIB)
        .unwrap();
    f.write_all_at(&[0u8; 4096], 0).unwrap();
    drop(f);
    env.json(&["backup", "--image", p(&src), "--vm", "vm9", "--disk", "d"]);

    let disk = env.path("other-host.qcow2");
    qcow2_with(&disk, "48M", &["write -P 0x77 0 48M".to_string()]);
    let q = Qsd::one_disk(&env.path("host2.qmp"), &env.path("host2.nbd"), &disk);
    let url = q.url("live");
    env.ok(&[
        "restore", "latest", "--vm", "vm9", "--disk", "d", "--to", &url,
    ]);
    let now = env.path("now.raw");
    copy_export(&url, &now);
    assert!(
        images_identical(&src, &now),
        "latest restored into qsd differs"
    );

    let older = first["snapshot"].as_str().unwrap();
    env.ok(&["restore", older, "--vm", "vm9", "--disk", "d", "--to", &url]);
    let then = env.path("then.raw");
    copy_export(&url, &then);
    assert!(
        images_identical(&first_copy, &then),
        "older snapshot restored into qsd differs"
    );
    assert!(!images_identical(&now, &then));
}
