//! The cluster as separate processes on 127.0.0.1 (`bora up`: a coordinator, workers and
//! storage nodes, each its own process), with members killed by SIGKILL in the middle of
//! backups: a dead worker's ranges are leased again, a dead storage node's chunks live on
//! their other replica and come back by `repair`, a disconnected CLI does not cancel its
//! job, and a restarted coordinator keeps every committed snapshot.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use bora_tests::*;

const MIB: u64 = 1 << 20;

/// A running `bora up`; SIGTERM on drop, and every extra member the test started is killed.
pub(crate) struct Up {
    child: Child,
    pub(crate) url: String,
    pub(crate) data: PathBuf,
    extra: Vec<Child>,
}

impl Up {
    /// `bora up` with 8 MiB ranges, 1.5 s leases and `args`.
    pub(crate) fn start(env: &Env, args: &[&str]) -> Up {
        Up::start_logging(env, "cluster", args, None)
    }

    /// [`Up::start`] with its data in `env`'s `dir` (several clusters in one test).
    pub(crate) fn start_in(env: &Env, dir: &str, args: &[&str]) -> Up {
        Up::start_logging(env, dir, args, None)
    }

    /// [`Up::start_in`] with the members logging at `level` into `DIR/MEMBER/log`
    /// (`None`: BORA_TEST_MEMBER_LOG's level, if set).
    pub(crate) fn start_logging(env: &Env, dir: &str, args: &[&str], level: Option<&str>) -> Up {
        let data = env.path(dir);
        let mut cmd = Command::new(bora_bin());
        cmd.args(["up", "--data"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--lease-ms", "1500"])
            .args(["--range-bytes", &(8 * MIB).to_string()])
            .args(args);
        // BORA_TEST_MEMBER_LOG=info: the members log at that level into cluster/*/log.
        match level
            .map(str::to_string)
            .or(std::env::var("BORA_TEST_MEMBER_LOG").ok())
        {
            Some(level) => cmd.env("BORA_LOG", level),
            None => cmd.env_remove("BORA_LOG"),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run bora up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let url = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("bora up said {line:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        Up {
            child,
            url,
            data,
            extra: Vec::new(),
        }
    }

    pub(crate) fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--cluster", self.url.as_str()];
        a.extend_from_slice(args);
        a
    }

    /// The config file `bora up` wrote for `member`.
    pub(crate) fn config(&self, member: &str) -> PathBuf {
        self.data.join(member).join("config.toml")
    }

    /// Starts `bora ROLE --config` for a member again (by hand, as an operator would).
    pub(crate) fn restart(&mut self, role: &str, member: &str) {
        self.start_member(role, &self.config(member));
    }

    /// Starts `bora ROLE --config CONFIG` (a member the test wrote a config for) and
    /// waits for its `started` line; it is killed when the `Up` is dropped.
    pub(crate) fn start_member(&mut self, role: &str, config: &Path) {
        let member = config.display().to_string();
        let mut child = Command::new(bora_bin())
            .arg(role)
            .arg("--config")
            .arg(config)
            .env_remove("BORA_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("restart member");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("started line");
        assert!(line.starts_with("started "), "{member} said {line:?}");
        self.extra.push(child);
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes in the coordinator's log so far.
fn log_len(up: &Up) -> usize {
    std::fs::read(up.data.join("coordinator-1/log")).map_or(0, |t| t.len())
}

/// Waits for the coordinator's own repair after `node` answered (logged after byte `since`
/// of its log); `(chunks seen, copies)`.
fn auto_repair(up: &Up, node: &str, since: usize) -> (u64, u64) {
    let log = up.data.join("coordinator-1/log");
    // "repair after storage-1, storage-2 answered: ..." (every node that joined since the
    // last complete repair).
    let needle = " answered: ";
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .get(since..)
            .unwrap_or_default()
            .lines()
            .rev()
            .filter(|l| l.starts_with("repair after ") && l.contains(node))
            .find_map(|l| l.split_once(needle).map(|(_, r)| r.to_string()));
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not repair {node} (after byte {since} of its log); its log ends:\n{}",
            text.get(text.len().saturating_sub(6000)..).unwrap_or(&text)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // "N chunks seen, M copies made (B bytes), U unrecoverable"
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.get(3), Some(&0), "unrecoverable chunks: {line}");
    (nums[0], nums[1])
}

pub(crate) fn status(env: &Env, up: &Up) -> Value {
    env.json(&up.args(&["status"]))
}

/// The member `id` of a status document.
pub(crate) fn member<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no member {id} in {status}"))
}

pub(crate) fn kill9(pid: u64) {
    let st = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// [`kill9`], then waits until the process is gone (reaped or a zombie: its files, the
/// data directory's lock among them, are closed), so it can be started again at once.
pub(crate) fn kill9_and_wait(pid: u64) {
    kill9(pid);
    wait_for(
        &format!("process {pid} to end"),
        Duration::from_secs(10),
        || {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                // The state follows the command's closing parenthesis.
                Ok(stat) => stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            }
        },
    );
}

/// Waits until `f` holds (checked every 50 ms), or panics after `limit`.
pub(crate) fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the backup job of `vm` runs with ranges still to do.
pub(crate) fn wait_running(env: &Env, up: &Up, vm: &str) {
    wait_for(
        &format!("the backup of {vm} to be under way"),
        Duration::from_secs(30),
        || {
            status(env, up)["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["vm"] == vm && j["state"] == "running")
        },
    );
}

/// `bora --cluster URL backup --image IMG --vm VM --json` in the background.
pub(crate) fn backup_in_background(env: &Env, up: &Up, img: &Path, vm: &str) -> Child {
    Command::new(bora_bin())
        .arg("--repo")
        .arg(env.repo())
        .args(up.args(&[
            "backup",
            "--image",
            img.to_str().unwrap(),
            "--vm",
            vm,
            "--json",
        ]))
        .env_remove("BORA_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bora backup")
}

pub(crate) fn finished(child: Child) -> Value {
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("backup JSON")
}

pub(crate) fn restores_to(env: &Env, up: &Up, vm: &str, disk: &str, expected: &Path) {
    let out = env.path(&format!("restored-{vm}.raw"));
    let _ = std::fs::remove_file(&out);
    env.ok(&up.args(&[
        "restore",
        "latest",
        "--vm",
        vm,
        "--disk",
        disk,
        "--to",
        out.to_str().unwrap(),
    ]));
    assert!(
        images_identical(expected, &out),
        "{vm} does not restore bit-exact"
    );
}

/// A 48 MiB image: six 8 MiB ranges of data nothing else shares.
pub(crate) fn image(env: &Env, name: &str, seed: u64) -> PathBuf {
    let img = env.path(&format!("{name}.raw"));
    raw_image(&img, 48 * MIB, &[(0, noise(48 * MIB as usize, seed))]);
    img
}

#[test]
fn cluster_backs_up_through_separate_processes_and_survives_a_dead_worker() {
    let env = Env::new();
    // 12 MiB/s per source and worker: six ranges take a few seconds, time to kill a worker.
    let up = Up::start(
        &env,
        &[
            "--workers",
            "2",
            "--storage-nodes",
            "3",
            "--read-limit",
            "12582912",
        ],
    );
    // Workers register with their first lease request, just after they start.
    wait_for("both workers to register", Duration::from_secs(20), || {
        let st = status(&env, &up);
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "worker")
            .count()
            == 2
    });
    let st = status(&env, &up);
    assert_eq!(st["leader"], "coordinator-1");
    let roles: Vec<&str> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "storage-node").count(),
        3,
        "{st}"
    );
    assert_eq!(roles.iter().filter(|r| **r == "worker").count(), 2, "{st}");
    assert_eq!(roles.iter().filter(|r| **r == "coordinator").count(), 1);
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "up"),
        "{st}"
    );
    assert_eq!(st["ring"]["copies"], 2);

    let img = image(&env, "web", 1);
    let backup = backup_in_background(&env, &up, &img, "web");
    // Once worker-1 holds a lease, it dies.
    let mut victim = 0;
    wait_for("worker-1 to hold a range", Duration::from_secs(30), || {
        let st = status(&env, &up);
        let w = member(&st, "worker-1");
        victim = w["pid"].as_u64().unwrap_or(0);
        w["leases"].as_u64().unwrap_or(0) > 0
    });
    kill9(victim);
    let r = finished(backup);
    assert_eq!(r["disks"][0]["size"], 48 * MIB);
    wait_for("worker-1 to show as down", Duration::from_secs(10), || {
        member(&status(&env, &up), "worker-1")["state"] == "down"
    });
    restores_to(&env, &up, "web", "web", &img);
    let list = env.json(&up.args(&["snapshots", "--vm", "web"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // The snapshot served over NBD straight from the storage nodes: QEMU sees the image.
    let sock = env.path("serve.sock");
    let listen = format!("unix:{}", sock.display());
    let mut serve = Command::new(bora_bin())
        .args(up.args(&[
            "serve", "latest", "--vm", "web", "--disk", "web", "--listen", &listen,
        ]))
        .env_remove("BORA_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bora serve");
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("serving ")
        .expect("serving line")
        .to_string();
    assert!(raw_identical(&img, &url), "served snapshot differs");
    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[test]
fn cluster_survives_a_dead_storage_node_and_repairs_it() {
    let env = Env::new();
    let mut up = Up::start(
        &env,
        &[
            "--workers",
            "2",
            "--storage-nodes",
            "3",
            "--read-limit",
            "12582912",
        ],
    );
    let first = image(&env, "first", 2);
    finished(backup_in_background(&env, &up, &first, "first"));

    // storage-2 dies in the middle of the next backup: its chunks go to the next node.
    let img = image(&env, "db", 3);
    let backup = backup_in_background(&env, &up, &img, "db");
    let pid = member(&status(&env, &up), "storage-2")["pid"]
        .as_u64()
        .unwrap();
    wait_running(&env, &up, "db");
    kill9(pid);
    finished(backup);
    wait_for("storage-2 to show as down", Duration::from_secs(10), || {
        member(&status(&env, &up), "storage-2")["state"] == "down"
    });
    // Both snapshots restore with storage-2 still down.
    restores_to(&env, &up, "db", "db", &img);
    restores_to(&env, &up, "first", "first", &first);
    // Repair cannot finish while a member is down, and says so.
    let err = env.fails(&up.args(&["repair"]));
    assert!(err.contains("incomplete"), "{err}");

    // storage-2 comes back (same config, same port); the coordinator notices and repairs
    // by itself: storage-2 gets the chunks it owns that were written while it was down.
    let since = log_len(&up);
    up.restart("storage-node", "storage-2");
    let (seen, made) = auto_repair(&up, "storage-2", since);
    assert!(made > 0 && made < seen, "{made} copies of {seen} chunks");
    let again = env.json(&up.args(&["repair"]));
    assert_eq!(again["copies_made"], 0, "nothing left to repair: {again}");
    assert_eq!(
        again["unrecoverable"].as_array().unwrap().len(),
        0,
        "{again}"
    );

    // Scaling out: a fourth node joins the ring; repair copies it only what it now owns.
    // It belongs to this cluster: the `cluster = ...` line of the coordinator's config.
    let coordinator_config = std::fs::read_to_string(up.config("coordinator-1")).unwrap();
    let cluster = coordinator_config
        .lines()
        .find(|l| l.starts_with("cluster = "))
        .expect("bora up names its cluster")
        .to_string();
    let dir = env.path("cluster/storage-4");
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        dir.join("config.toml"),
        format!("id = \"storage-4\"\n{cluster}\nlisten = \"{addr}\"\ndata-dir = \"data\"\n"),
    )
    .unwrap();
    let since = log_len(&up);
    up.restart("storage-node", "storage-4");
    env.ok(&up.args(&["storage", "add", "storage-4", &addr]));
    let st = status(&env, &up);
    assert_eq!(st["ring"]["nodes"].as_array().unwrap().len(), 4, "{st}");
    let (seen, made) = auto_repair(&up, "storage-4", since);
    // status shows the move: the new node holds exactly what repair copied to it.
    let st = status(&env, &up);
    assert_eq!(member(&st, "storage-4")["chunks"], made, "{st}");
    // With 4 nodes and 2 copies a new node owns about half the digests (2 of 4 slots).
    assert!(
        made > seen / 4 && made < seen * 3 / 4,
        "{made} copies of {seen} chunks"
    );
    assert_eq!(env.json(&up.args(&["repair"]))["copies_made"], 0);
    restores_to(&env, &up, "db", "db", &img);
}

#[test]
fn cluster_jobs_outlive_the_cli_and_a_coordinator_restart() {
    let env = Env::new();
    let mut up = Up::start(
        &env,
        &[
            "--workers",
            "2",
            "--storage-nodes",
            "2",
            "--read-limit",
            "12582912",
        ],
    );
    // The CLI that started a backup is killed: the job belongs to the coordinator and
    // finishes anyway.
    let img = image(&env, "app", 4);
    let mut cli = backup_in_background(&env, &up, &img, "app");
    wait_running(&env, &up, "app");
    cli.kill().unwrap();
    cli.wait().unwrap();
    wait_for(
        "the job to commit without its CLI",
        Duration::from_secs(60),
        || {
            let list = env.json(&up.args(&["snapshots", "--vm", "app"]));
            list.as_array().unwrap().len() == 1
        },
    );
    restores_to(&env, &up, "app", "app", &img);

    // The coordinator dies in the middle of another backup and is restarted: it takes the
    // job over from its replicated catalog, the workers find it by themselves, and the
    // waiting CLI (which keeps asking for a minute) gets the commit. Nothing half-done
    // was visible meanwhile (the commit is the job's last step).
    let other = image(&env, "mail", 5);
    let backup = backup_in_background(&env, &up, &other, "mail");
    let coord = member(&status(&env, &up), "coordinator-1")["pid"]
        .as_u64()
        .unwrap();
    wait_running(&env, &up, "mail");
    kill9_and_wait(coord);
    up.restart("coordinator", "coordinator-1");
    let r = finished(backup);
    assert_eq!(r["vm"], "mail");
    let list = env.json(&up.args(&["snapshots"]));
    let vms: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["vm"].as_str().unwrap())
        .collect();
    assert_eq!(vms, vec!["app", "mail"], "{list}");
    restores_to(&env, &up, "mail", "mail", &other);
    restores_to(&env, &up, "app", "app", &img);
    // The VM can be backed up again.
    let r = env.json(&up.args(&["backup", "--image", other.to_str().unwrap(), "--vm", "mail"]));
    assert_eq!(r["vm"], "mail");

    // An NBD export (someone else froze the disk) backed up through the workers.
    let qcow = env.path("exported.qcow2");
    qcow2_from_raw(&other, &qcow);
    let sock = env.path("export.sock");
    let mut qn = Command::new("qemu-nbd")
        .args(["-r", "-t", "--shared=16", "-f", "qcow2", "-x", "d0", "-k"])
        .arg(&sock)
        .arg(&qcow)
        .spawn()
        .expect("qemu-nbd");
    wait_for("qemu-nbd's socket", Duration::from_secs(10), || {
        sock.exists()
    });
    let url = format!("nbd+unix:///d0?socket={}", sock.display());
    let r = env.json(&up.args(&["backup", "--nbd", &url, "--vm", "exported", "--disk", "d0"]));
    let _ = qn.kill();
    let _ = qn.wait();
    assert_eq!(r["disks"][0]["size"], 48 * MIB, "{r}");
    restores_to(&env, &up, "exported", "d0", &other);
}
