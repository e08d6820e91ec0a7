//! Second-site replication with several coordinators on each side (`bora up
//! --coordinators 3`, real processes on 127.0.0.1): the remotes are in the source's
//! replicated catalog, so when its leader is killed the new leader still lists them and
//! replicates new backups by itself (`--auto`); on the receiving side the replica listener
//! is on coordinator-1, which does not lead, and its commits reach the leader.

use std::time::{Duration, Instant};

use serde_json::Value;

use bora_tests::*;

use super::cluster::{Up, kill9, member, status, wait_for};
use super::replicate::{replica_info, restore_identical, s, snapshot_ids};

const MIB: u64 = 1 << 20;

/// The leader named by `bora status --json`, or `None` while there is none (an election)
/// or the coordinators asked do not answer.
fn leader_of(up: &Up) -> Option<String> {
    let out = std::process::Command::new(bora_bin())
        .args(up.args(&["status", "--json"]))
        .env_remove("BORA_LOG")
        .output()
        .expect("bora status");
    let st: Value = serde_json::from_slice(&out.stdout).ok()?;
    st["leader"]
        .as_str()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// Kills the leader of `up` with SIGKILL and waits for another to lead; returns the new
/// leader.
fn kill_leader(env: &Env, up: &Up) -> (String, String) {
    let st = status(env, up);
    let leader = s(&st["leader"]).to_string();
    let pid = member(&st, &leader)["pid"].as_u64().expect("leader pid");
    kill9(pid);
    let mut next = String::new();
    wait_for("a new leader", Duration::from_secs(15), || {
        next = leader_of(up).unwrap_or_default();
        !next.is_empty() && next != leader
    });
    (leader, next)
}

fn wait_snapshots(env: &Env, site: &Up, n: usize, what: &str) {
    wait_for(what, Duration::from_secs(30), || {
        snapshot_ids(env, site).len() >= n
    });
}

#[test]
fn auto_replication_goes_on_under_a_new_leader_and_commits_through_the_receivers_leader() {
    let started = Instant::now();
    let env = Env::new();
    let a = Up::start_in(
        &env,
        "site-a",
        &[
            "--coordinators",
            "3",
            "--storage-nodes",
            "2",
            "--workers",
            "1",
        ],
    );
    let mut b = Up::start_in(
        &env,
        "site-b",
        &[
            "--coordinators",
            "3",
            "--storage-nodes",
            "1",
            "--workers",
            "1",
            "--replica-listen",
            "127.0.0.1:0",
            "--replica-insecure",
        ],
    );
    // The receiving site's listener is coordinator-1's: make sure another leads.
    if status(&env, &b)["leader"] == "coordinator-1" {
        let (old, next) = kill_leader(&env, &b);
        eprintln!("site-b: {old} killed, {next} leads");
        b.restart("coordinator", "coordinator-1");
    }
    let info = replica_info(&b);
    env.ok(&a.args(&[
        "remote",
        "add",
        "dr",
        s(&info["url"]),
        "--insecure",
        "--token-file",
        s(&info["token_file"]),
        "--auto",
    ]));

    let img = env.path("disk.raw");
    raw_image(&img, 16 * MIB, &[(0, noise(12 * MIB as usize, 7))]);
    let first = env.json(&a.args(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]));
    wait_snapshots(&env, &b, 1, "the first backup to be replicated");
    let v1 = env.path("v1.raw");
    std::fs::copy(&img, &v1).expect("copy v1");

    let (old, next) = kill_leader(&env, &a);
    eprintln!("site-a: {old} killed, {next} leads");
    let listed = env.json(&a.args(&["remote", "list"]));
    let remotes = listed["remotes"].as_array().expect("remotes");
    assert_eq!(remotes.len(), 1, "{listed}");
    assert_eq!(remotes[0]["name"], "dr", "{listed}");
    assert_eq!(remotes[0]["auto"], true, "{listed}");

    // A new backup under the new leader goes to the remote by itself.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, &noise(MIB as usize, 8), 4 * MIB).expect("write");
    drop(f);
    let second = env.json(&a.args(&["backup", "--image", &img.to_string_lossy(), "--vm", "vm1"]));
    wait_snapshots(&env, &b, 2, "the new leader to replicate the second backup");
    let ids = snapshot_ids(&env, &b);
    assert_eq!(
        ids,
        [s(&first["snapshot"]), s(&second["snapshot"])],
        "the remote has both, under their ids"
    );
    // Received by coordinator-1's listener, committed by the site's leader.
    assert_ne!(status(&env, &b)["leader"], "coordinator-1");
    restore_identical(&env, &b, &ids[0], "disk", &v1);
    restore_identical(&env, &b, &ids[1], "disk", &img);

    // A catalog export carries the remote (owner-only: its token is in it), as the
    // remotes.json a fresh coordinator imports.
    let export = env.path("catalog-export");
    env.ok(&a.args(&["catalog", "export", "--to", export.to_str().unwrap()]));
    let file = export.join("remotes.json");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("remotes.json")).unwrap();
    assert_eq!(doc["remotes"][0]["name"], "dr", "{doc}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "remotes.json is readable by others: {mode:o}"
    );

    // Removed through the cluster: gone for every coordinator.
    env.ok(&a.args(&["remote", "remove", "dr"]));
    let listed = env.json(&a.args(&["remote", "list"]));
    assert_eq!(
        listed["remotes"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    let e = env.fails(&a.args(&["remote", "remove", "dr"]));
    assert!(e.contains("no remote named dr"), "{e}");
    eprintln!("took {:?}", started.elapsed());
}
