//! Second-site replication between two clusters on 127.0.0.1 (`bora up` twice, the
//! second with a replica listener): the second site restores bit-exact with the first
//! stopped; a small change sends about its new chunks only; a replication killed halfway
//! resumes without resending what arrived; `--auto` replicates new backups by itself; a
//! wrong token or certificate is refused and nothing is written.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Up;
use bora_tests::*;

const MIB: u64 = 1 << 20;
/// The chunk size of cluster backups.
const CHUNK: u64 = 256 << 10;

/// What `bora up --replica-listen` wrote for senders.
pub(crate) fn replica_info(site: &Up) -> Value {
    let text = std::fs::read_to_string(site.data.join("replica/remote.json")).expect("remote.json");
    serde_json::from_str(&text).expect("remote.json is JSON")
}

/// The second site: `bora up` in `site-b` with `nodes` storage nodes, one worker and a
/// replica listener (plaintext when `insecure`).
fn site_b(env: &Env, nodes: u32, insecure: bool) -> Up {
    let nodes = nodes.to_string();
    let mut args = vec![
        "--storage-nodes",
        nodes.as_str(),
        "--workers",
        "1",
        "--replica-listen",
        "127.0.0.1:0",
    ];
    if insecure {
        args.push("--replica-insecure");
    }
    Up::start_in(env, "site-b", &args)
}

pub(crate) fn s(v: &Value) -> &str {
    v.as_str().expect("a string")
}

/// Chunks held by the site's storage nodes (each counted once per copy).
fn chunks_on(env: &Env, site: &Up) -> u64 {
    let st = env.json(&site.args(&["status"]));
    st["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["role"] == "storage-node")
        .map(|m| m["chunks"].as_u64().unwrap_or(0))
        .sum()
}

pub(crate) fn snapshot_ids(env: &Env, site: &Up) -> Vec<String> {
    let v = env.json(&site.args(&["snapshots"]));
    v["snapshots"]
        .as_array()
        .or_else(|| v.as_array())
        .expect("snapshots")
        .iter()
        .map(|m| s(&m["id"]).to_string())
        .collect()
}

pub(crate) fn restore_identical(env: &Env, site: &Up, id: &str, disk: &str, want: &Path) {
    let out = env.path(&format!("restored-{id}.raw"));
    env.ok(&site.args(&[
        "restore",
        id,
        "--vm",
        "vm1",
        "--disk",
        disk,
        "--to",
        &out.to_string_lossy(),
        "--force",
    ]));
    assert!(
        images_identical(want, &out),
        "snapshot {id} restored from the second site differs"
    );
}

#[test]
fn the_second_site_restores_everything_alone_and_gets_only_new_chunks() {
    let env = Env::new();
    let a = Up::start_in(&env, "site-a", &["--storage-nodes", "2", "--workers", "1"]);
    let b = site_b(&env, 2, false);
    let img = env.path("disk.raw");
    raw_image(&img, 32 * MIB, &[(0, noise(20 * MIB as usize, 1))]);
    let v1 = env.path("v1.raw");
    std::fs::copy(&img, &v1).expect("copy v1");
    let img_s = img.to_string_lossy().to_string();
    let first = env.json(&a.args(&["backup", "--image", &img_s, "--vm", "vm1"]));
    let info = replica_info(&b);
    env.ok(&a.args(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--fingerprint",
        s(&info["fingerprint"]),
        "--token-file",
        s(&info["token_file"]),
    ]));
    let listed = env.json(&a.args(&["remote", "list"]));
    assert_eq!(listed["remotes"][0]["name"], "dr", "{listed}");
    assert!(
        !listed.to_string().contains(
            &std::fs::read_to_string(s(&info["token_file"]))
                .unwrap()
                .trim()
                .to_string()
        ),
        "the token is never listed"
    );

    let r1 = env.json(&a.args(&["replicate", "--to", "dr"]));
    assert_eq!(u(&r1, "snapshots_sent"), 1, "{r1}");
    assert_eq!(u(&r1, "chunks_skipped"), 0, "{r1}");
    // 80 data chunks of noise (stored raw) and one index piece.
    assert_eq!(u(&r1, "chunks_sent"), 81, "{r1}");
    assert!(u(&r1, "bytes_sent") >= 20 * MIB, "{r1}");
    for key in [
        "snapshots_sent",
        "chunks_sent",
        "chunks_skipped",
        "bytes_sent",
        "duration_s",
    ] {
        assert!(r1.get(key).is_some(), "{key} missing from {r1}");
    }

    // A 1 MiB change (4 chunks): only those and the changed index piece cross.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(MIB as usize, 2), 4 * MIB).expect("write");
    drop(f);
    env.json(&a.args(&["backup", "--image", &img_s, "--vm", "vm1"]));
    let r2 = env.json(&a.args(&["replicate", "--to", "dr"]));
    assert_eq!(
        (u(&r2, "snapshots_sent"), u(&r2, "snapshots_present")),
        (1, 1),
        "{r2}"
    );
    assert_eq!(u(&r2, "chunks_sent"), 5, "{r2}");
    assert!(u(&r2, "bytes_sent") <= MIB + 2 * CHUNK, "{r2}");
    assert_eq!(u(&r2, "chunks_skipped"), 76, "{r2}");
    let again = env.json(&a.args(&["replicate", "--to", "dr"]));
    assert_eq!(
        (u(&again, "snapshots_sent"), u(&again, "bytes_sent")),
        (0, 0),
        "{again}"
    );

    // A VM with a file system, for single files at the second site.
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "second-site\n").unwrap();
    std::fs::write(tree.join("etc/blob"), noise(300 << 10, 9)).unwrap();
    let fs_img = env.path("fs.raw");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&fs_img)
        .arg("16M")
        .status()
        .expect("mkfs.ext4");
    assert!(st.success());
    let fs_s = fs_img.to_string_lossy().into_owned();
    env.json(&a.args(&["backup", "--image", &fs_s, "--vm", "fsvm", "--disk", "fs"]));
    let r3 = env.json(&a.args(&["replicate", "--to", "dr", "--vm", "fsvm"]));
    assert_eq!(u(&r3, "snapshots_sent"), 1, "{r3}");

    // The first site goes away; the second restores both points in time by itself,
    // single files, and serves a snapshot over NBD.
    let first_id = s(&first["snapshot"]).to_string();
    drop(a);
    let ids = snapshot_ids(&env, &b);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[0], first_id);
    restore_identical(&env, &b, &ids[0], "disk", &v1);
    restore_identical(&env, &b, &ids[1], "disk", &img);

    let ls = env.json(&b.args(&[
        "files", "ls", "latest", "--vm", "fsvm", "--disk", "fs", "/etc",
    ]));
    let names: Vec<&str> = ls
        .as_array()
        .expect("listing")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"hostname") && names.contains(&"blob"),
        "{ls}"
    );
    let got = env.path("blob.out");
    env.ok(&b.args(&[
        "files",
        "get",
        "latest",
        "--vm",
        "fsvm",
        "--disk",
        "fs",
        "/etc/blob",
        "--to",
        &got.to_string_lossy(),
    ]));
    assert_eq!(std::fs::read(&got).unwrap(), noise(300 << 10, 9));

    let sock = env.path("b-serve.sock");
    let mut serve = Command::new(bora_bin())
        .args(b.args(&[
            "serve",
            &first_id,
            "--vm",
            "vm1",
            "--disk",
            "disk",
            "--listen",
            &format!("unix:{}", sock.display()),
        ]))
        .env_remove("BORA_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bora serve");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the url line");
    let url = line
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let same = raw_identical(&v1, &url);
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(same, "the second site serves the first snapshot bit-exact");
}

#[test]
fn a_killed_replication_resumes_without_resending_and_auto_follows_backups() {
    let env = Env::new();
    let a = Up::start_in(&env, "site-a", &["--storage-nodes", "1", "--workers", "1"]);
    let b = site_b(&env, 1, true);
    let img = env.path("disk.raw");
    raw_image(&img, 24 * MIB, &[(0, noise(24 * MIB as usize, 3))]);
    env.json(&a.args(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]));
    let info = replica_info(&b);
    env.ok(&a.args(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--insecure",
        "--token-file",
        s(&info["token_file"]),
    ]));
    // 4 MB/s: the 24 MiB take about 6 s; kill the CLI once a few MiB arrived.
    let mut child = Command::new(bora_bin())
        .args(a.args(&[
            "replicate",
            "--to",
            "dr",
            "--streams",
            "1",
            "--limit",
            "4000000",
        ]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("replicate");
    let started = Instant::now();
    while chunks_on(&env, &b) < 12 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing arrived"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // The coordinator stops with its caller: nothing more arrives.
    std::thread::sleep(Duration::from_millis(1500));
    let arrived = chunks_on(&env, &b);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        chunks_on(&env, &b),
        arrived,
        "the replication went on after its caller died"
    );
    assert!(arrived < 97, "killed too late: {arrived} chunks arrived");
    assert!(
        snapshot_ids(&env, &b).is_empty(),
        "an incomplete snapshot is visible"
    );

    let r = env.json(&a.args(&["replicate", "--to", "dr", "--streams", "1"]));
    assert_eq!(u(&r, "snapshots_sent"), 1, "{r}");
    assert_eq!(
        u(&r, "chunks_skipped"),
        arrived,
        "everything that arrived is skipped: {r}"
    );
    assert_eq!(u(&r, "chunks_sent") + arrived, 97, "{r}");

    // With --auto the first site's coordinator replicates each new backup by itself.
    env.ok(&a.args(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--insecure",
        "--token-file",
        s(&info["token_file"]),
        "--vm",
        "vm1",
        "--auto",
        "--replace",
    ]));
    let v1 = env.path("v1.raw");
    std::fs::copy(&img, &v1).expect("copy v1");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(MIB as usize, 5), 0).expect("write");
    drop(f);
    let second = env.json(&a.args(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]));
    let started = Instant::now();
    while snapshot_ids(&env, &b).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no automatic replication"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(a);
    let ids = snapshot_ids(&env, &b);
    assert_eq!(ids[1], s(&second["snapshot"]));
    restore_identical(&env, &b, &ids[0], "disk", &v1);
    restore_identical(&env, &b, &ids[1], "disk", &img);
}

#[test]
fn a_wrong_token_or_certificate_is_refused_and_nothing_is_written() {
    let env = Env::new();
    let b = site_b(&env, 1, false);
    let info = replica_info(&b);
    // The sender is an embedded repository this time.
    let img = env.path("disk.raw");
    raw_image(&img, 8 * MIB, &[(0, noise(8 * MIB as usize, 4))]);
    env.json(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]);
    let wrong_token = env.path("wrong-token");
    std::fs::write(&wrong_token, "not-the-token-of-site-b\n").unwrap();
    env.ok(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--fingerprint",
        s(&info["fingerprint"]),
        "--token-file",
        &wrong_token.to_string_lossy(),
    ]);
    let e = env.fails(&["replicate", "--to", "dr"]);
    assert!(e.contains("does not accept the token"), "{e}");

    env.ok(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--fingerprint",
        &"ab".repeat(32),
        "--token-file",
        s(&info["token_file"]),
        "--replace",
    ]);
    let e = env.fails(&["replicate", "--to", "dr"]);
    assert!(e.contains("not the pinned sha256:abab"), "{e}");

    let e = env.fails(&[
        "remote",
        "add",
        "x",
        "http://dr.example.net:7300",
        "--insecure",
    ]);
    assert!(e.contains("loopback tests only"), "{e}");
    let e = env.fails(&["remote", "add", "x", "https://127.0.0.1:7300"]);
    assert!(e.contains("--ca") || e.contains("required"), "{e}");

    assert_eq!(chunks_on(&env, &b), 0, "nothing was written");
    assert!(snapshot_ids(&env, &b).is_empty());

    // With the CA and the right token it goes through.
    env.ok(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--ca",
        s(&info["ca"]),
        "--token-file",
        s(&info["token_file"]),
        "--replace",
    ]);
    let r = env.json(&["replicate", "--to", "dr"]);
    assert_eq!(
        (u(&r, "snapshots_sent"), u(&r, "chunks_sent")),
        (1, 33),
        "{r}"
    );
    let ids = snapshot_ids(&env, &b);
    restore_identical(&env, &b, &ids[0], "disk", &img);

    // Embedded --auto: a backup replicates to each auto remote; one that refuses does
    // not fail the backup.
    env.ok(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--ca",
        s(&info["ca"]),
        "--token-file",
        s(&info["token_file"]),
        "--auto",
        "--replace",
    ]);
    env.ok(&[
        "remote",
        "add",
        "refusing",
        s(&info["url"]),
        "--ca",
        s(&info["ca"]),
        "--token-file",
        &wrong_token.to_string_lossy(),
        "--auto",
    ]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(MIB as usize, 6), 0).expect("write");
    drop(f);
    let out = env.run(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("replicated to dr: 1 snapshots"), "{stderr}");
    assert!(
        stderr.contains("warning: replication to refusing failed"),
        "{stderr}"
    );
    let ids = snapshot_ids(&env, &b);
    assert_eq!(ids.len(), 2);
    restore_identical(&env, &b, &ids[1], "disk", &img);
}

/// `bora prune` on each site by its own policy: the second site keeps less than the
/// first, and replication does not send back what it pruned.
#[test]
fn each_site_prunes_by_its_own_policy() {
    let env = Env::new();
    let b = site_b(&env, 1, true);
    let info = replica_info(&b);
    let img = env.path("disk.raw");
    let mut versions = Vec::new();
    for v in 0..3u64 {
        raw_image(&img, 4 * MIB, &[(v * MIB, noise(MIB as usize, 40 + v))]);
        env.json(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]);
        let copy = env.path(&format!("v{v}.raw"));
        std::fs::copy(&img, &copy).expect("copy");
        versions.push(copy);
    }
    // The first site is the embedded repository.
    env.ok(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--insecure",
        "--token-file",
        s(&info["token_file"]),
    ]);
    let r = env.json(&["replicate", "--to", "dr"]);
    assert_eq!(u(&r, "snapshots_sent"), 3, "{r}");

    // The second site keeps only the newest; a dry run first changes nothing.
    let dry = env.json(&b.args(&["prune", "--vm", "vm1", "--keep-last", "1", "--dry-run"]));
    assert_eq!(dry["forget"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(snapshot_ids(&env, &b).len(), 3);
    let p = env.json(&b.args(&["prune", "--vm", "vm1", "--keep-last", "1"]));
    assert_eq!(p["forgotten"].as_array().unwrap().len(), 2, "{p}");
    let kept = snapshot_ids(&env, &b);
    assert_eq!(kept.len(), 1);
    restore_identical(&env, &b, &kept[0], "disk", &versions[2]);

    // Replication does not send the pruned ones back; a new backup still goes.
    let again = env.json(&["replicate", "--to", "dr"]);
    assert_eq!(
        (u(&again, "snapshots_sent"), u(&again, "snapshots_older")),
        (0, 2),
        "{again}"
    );
    raw_image(&img, 4 * MIB, &[(3 * MIB, noise(MIB as usize, 50))]);
    env.json(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]);
    let next = env.json(&["replicate", "--to", "dr"]);
    assert_eq!(u(&next, "snapshots_sent"), 1, "{next}");
    assert_eq!(snapshot_ids(&env, &b).len(), 2);

    // The first site keeps all four, and prunes by its own policy.
    let mine = env.json(&["snapshots", "--vm", "vm1"]);
    assert_eq!(mine.as_array().unwrap().len(), 4);
    let p = env.json(&["prune", "--vm", "vm1", "--keep-last", "3"]);
    assert_eq!(p["forgotten"].as_array().unwrap().len(), 1, "{p}");
    let oldest_left = env.json(&["snapshots", "--vm", "vm1"])[0]["id"].clone();
    env.ok(&[
        "restore",
        s(&oldest_left),
        "--vm",
        "vm1",
        "--disk",
        "disk",
        "--to",
        &env.path("a-v1.raw").to_string_lossy(),
    ]);
    assert!(images_identical(&versions[1], &env.path("a-v1.raw")));
    let e = env.fails(&["prune", "--vm", "vm1"]);
    assert!(e.contains("--keep-"), "{e}");
}
