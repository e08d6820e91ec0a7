//! Three coordinators (`bora up --coordinators 3`, the catalog replicated with Raft) as
//! separate processes on 127.0.0.1: the leader is killed by SIGKILL, another takes over
//! within seconds, every committed snapshot is still there and restores bit-exact, and a
//! new backup through `--cluster` with all three URLs succeeds.

use std::time::{Duration, Instant};

use bora_tests::*;

use super::cluster::{
    Up, backup_in_background, finished, image, kill9, member, restores_to, status, wait_for,
};

#[test]
fn cluster_of_three_coordinators_survives_a_killed_leader() {
    let env = Env::new();
    let up = Up::start(
        &env,
        &[
            "--coordinators",
            "3",
            "--storage-nodes",
            "3",
            "--workers",
            "2",
        ],
    );
    assert_eq!(up.url.split(',').count(), 3, "{}", up.url);
    let st = status(&env, &up);
    let leader = st["leader"].as_str().expect("a leader").to_string();
    assert!(leader.starts_with("coordinator-"), "{st}");
    let coordinators = st["coordinators"].as_array().expect("coordinators");
    assert_eq!(coordinators.len(), 3, "{st}");
    assert!(st["term"].as_u64().is_some_and(|t| t >= 1), "{st}");
    assert_eq!(
        coordinators.iter().filter(|c| c["leader"] == true).count(),
        1,
        "{st}"
    );

    let web = image(&env, "web", 1);
    let app = image(&env, "app", 2);
    finished(backup_in_background(&env, &up, &web, "web"));
    finished(backup_in_background(&env, &up, &app, "app"));

    let pid = member(&status(&env, &up), &leader)["pid"]
        .as_u64()
        .expect("leader pid");
    kill9(pid);
    let killed = Instant::now();
    let mut next = String::new();
    wait_for("a new leader", Duration::from_secs(10), || {
        let out = std::process::Command::new(bora_bin())
            .args(up.args(&["status", "--json"]))
            .env_remove("BORA_LOG")
            .output()
            .expect("bora status");
        let Ok(st) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        next = st["leader"].as_str().unwrap_or_default().to_string();
        !next.is_empty() && next != leader
    });
    eprintln!("{leader} killed; {next} leads after {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(10));

    let list = env.json(&up.args(&["snapshots"]));
    assert_eq!(list.as_array().expect("list").len(), 2, "{list}");
    restores_to(&env, &up, "web", "web", &web);
    restores_to(&env, &up, "app", "app", &app);

    // A new backup through every coordinator's URL: the CLI and the workers find the
    // new leader.
    let db = image(&env, "db", 3);
    let r = finished(backup_in_background(&env, &up, &db, "db"));
    assert_eq!(r["disks"][0]["size"], 48 << 20);
    restores_to(&env, &up, "db", "db", &db);
    let list = env.json(&up.args(&["snapshots"]));
    assert_eq!(list.as_array().expect("list").len(), 3, "{list}");
    // The two members left hold the whole log (the dead one's position stays behind).
    wait_for("the follower to catch up", Duration::from_secs(10), || {
        let st = status(&env, &up);
        let logs: Vec<Option<u64>> = st["coordinators"]
            .as_array()
            .expect("coordinators")
            .iter()
            .map(|c| c["log"].as_u64())
            .collect();
        let top = logs.iter().flatten().max().copied();
        logs.iter().filter(|l| **l == top && top.is_some()).count() >= 2
    });
}

/// The coordinators' view of member `raft_id` in a status document: its log position.
fn log_of(st: &serde_json::Value, raft_id: u64) -> Option<u64> {
    st["coordinators"]
        .as_array()
        .expect("coordinators")
        .iter()
        .find(|c| c["raft_id"] == raft_id)
        .and_then(|c| c["log"].as_u64())
}

/// The Raft id of coordinator member `coordinator-N`.
fn raft_id(member: &str) -> u64 {
    member
        .strip_prefix("coordinator-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{member} is not a coordinator"))
}

#[test]
fn backups_of_several_vms_survive_a_leader_killed_mid_way() {
    let env = Env::new();
    // 16 MiB/s per source and worker: the four backups take a few seconds, time to kill
    // the leader halfway. A Raft snapshot every 10 entries (keeping 5): the killed
    // leader's log is purged from the others by the time it comes back.
    let mut up = Up::start(
        &env,
        &[
            "--coordinators",
            "3",
            "--storage-nodes",
            "3",
            "--workers",
            "2",
            "--read-limit",
            "16777216",
            "--raft-snapshot-every",
            "10",
        ],
    );
    let vms: Vec<(String, std::path::PathBuf)> = ["web", "app", "db", "mail"]
        .iter()
        .zip(10..)
        .map(|(vm, seed)| (vm.to_string(), image(&env, vm, seed)))
        .collect();
    let leader = status(&env, &up)["leader"]
        .as_str()
        .expect("a leader")
        .to_string();
    let backups: Vec<_> = vms
        .iter()
        .map(|(vm, img)| backup_in_background(&env, &up, img, vm))
        .collect();
    // Kill the leader once every VM's job runs and some ranges are done.
    let mut before = serde_json::Value::Null;
    wait_for(
        "the backups to be under way",
        Duration::from_secs(30),
        || {
            before = status(&env, &up);
            let jobs = before["jobs"].as_array().expect("jobs");
            let done: u64 = jobs.iter().filter_map(|j| j["ranges_done"].as_u64()).sum();
            jobs.iter().filter(|j| j["state"] == "running").count() == vms.len() && done >= 3
        },
    );
    let log_at_kill = log_of(&before, raft_id(&leader)).expect("the leader's log");
    let pid = member(&before, &leader)["pid"]
        .as_u64()
        .expect("leader pid");
    kill9(pid);
    let killed = Instant::now();
    let mut next = String::new();
    wait_for("a new leader", Duration::from_secs(10), || {
        let out = std::process::Command::new(bora_bin())
            .args(up.args(&["status", "--json"]))
            .env_remove("BORA_LOG")
            .output()
            .expect("bora status");
        let Ok(st) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        next = st["leader"].as_str().unwrap_or_default().to_string();
        !next.is_empty() && next != leader
    });
    eprintln!(
        "{leader} killed mid-way; {next} leads after {:?}",
        killed.elapsed()
    );

    // Every backup succeeds: the CLIs and the workers follow the new leader, which took
    // the jobs over with the ranges done before.
    for ((vm, _), child) in vms.iter().zip(backups) {
        let r = finished(child);
        assert_eq!(r["vm"], vm.as_str(), "{r}");
    }
    eprintln!("all backups done {:?} after the kill", killed.elapsed());
    let list = env.json(&up.args(&["snapshots"]));
    assert_eq!(list.as_array().expect("list").len(), vms.len(), "{list}");
    for (vm, img) in &vms {
        restores_to(&env, &up, vm, vm, img);
    }

    // One more backup, then the old leader comes back: the log it had is purged on the
    // leader (only a snapshot can bring it up to date), and it catches up.
    let extra = image(&env, "extra", 20);
    finished(backup_in_background(&env, &up, &extra, "extra"));
    let mut st = serde_json::Value::Null;
    wait_for("the log to be compacted", Duration::from_secs(20), || {
        st = status(&env, &up);
        st["purged"].as_u64().is_some_and(|p| p > log_at_kill + 5)
    });
    eprintln!(
        "log purged up to {} on the leader; {leader} died at {log_at_kill}",
        st["purged"]
    );
    up.restart("coordinator", &leader);
    wait_for(
        "the old leader to catch up from a snapshot",
        Duration::from_secs(20),
        || {
            let st = status(&env, &up);
            let top = st["coordinators"]
                .as_array()
                .expect("coordinators")
                .iter()
                .filter_map(|c| c["log"].as_u64())
                .max();
            top.is_some() && log_of(&st, raft_id(&leader)) == top
        },
    );
    // The catalog is whole on every member: kill the current leader too, and the one
    // left with the old leader still serves every snapshot.
    let st = status(&env, &up);
    let current = st["leader"].as_str().expect("a leader").to_string();
    kill9(member(&st, &current)["pid"].as_u64().expect("pid"));
    wait_for("a third leader", Duration::from_secs(15), || {
        let out = std::process::Command::new(bora_bin())
            .args(up.args(&["status", "--json"]))
            .env_remove("BORA_LOG")
            .output()
            .expect("bora status");
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|st| st["leader"].as_str().is_some_and(|l| l != current))
    });
    let list = env.json(&up.args(&["snapshots"]));
    assert_eq!(
        list.as_array().expect("list").len(),
        vms.len() + 1,
        "{list}"
    );
    restores_to(&env, &up, "web", "web", &vms[0].1);
}
