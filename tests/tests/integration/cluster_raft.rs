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
