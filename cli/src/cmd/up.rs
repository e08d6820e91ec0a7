//! `bora up`: a whole local cluster in the foreground — storage nodes, the coordinator and
//! workers, each its own child process (`bora storage-node|coordinator|worker --config`) so
//! a member can fail alone. Writes each member's config under `--data DIR/<member>/`,
//! starts them in dependency order, waits for each to say it is listening, prints
//! `ready <coordinator-url>[,<url>...]` (every coordinator with `--coordinators N`: each
//! gets a `[raft]` section naming all of them) and runs until SIGINT/SIGTERM, then stops
//! every child.
//!
//! Ports are fixed in the config files before the members start (with `--listen
//! HOST:0`, free ones are picked first), so a member restarted by hand from its config file
//! comes back on the same address.

use std::collections::VecDeque;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::UpArgs;
use crate::cmd::members::{PARENT_ENV, READY_PREFIX};

/// How long a member may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long members get to stop after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One child process of the cluster.
struct Member {
    role: &'static str,
    id: String,
    dir: PathBuf,
    child: Child,
}

/// Where the cluster's members listen.
struct Plan {
    /// The first coordinator (`--listen`); the others follow the storage nodes' ports.
    coordinators: Vec<SocketAddr>,
    storage: Vec<SocketAddr>,
}

impl Plan {
    /// Every coordinator's URL, comma-separated (what `--cluster` takes).
    fn urls(&self) -> String {
        self.coordinators
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn plan(listen: &str, storage_nodes: usize, coordinators: usize) -> Result<Plan> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| anyhow!("--listen {listen}: expected IP:PORT, e.g. 127.0.0.1:0"))?;
    let ip = addr.ip();
    let mut seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
        | 1;
    let mut pick = |n: u16| -> Result<SocketAddr> {
        if addr.port() == 0 {
            // Bind and release: the member binds the same port a moment later.
            free_port(ip, &mut seed)
        } else {
            let port = addr
                .port()
                .checked_add(n)
                .ok_or_else(|| anyhow!("--listen {listen}: ports past 65535"))?;
            Ok(SocketAddr::new(ip, port))
        }
    };
    let mut port_of = |i: usize| pick(u16::try_from(i).unwrap_or(u16::MAX));
    let storage = (1..=storage_nodes)
        .map(&mut port_of)
        .collect::<Result<_>>()?;
    let mut all = vec![port_of(0)?];
    for i in 1..coordinators {
        all.push(port_of(storage_nodes + i)?);
    }
    Ok(Plan {
        coordinators: all,
        storage,
    })
}

/// A port of `ip` free now, for a member that binds it a moment later. Picked below the
/// kernel's ephemeral range (`ip_local_port_range`), where outgoing connections take
/// their local ports: a port the kernel handed out (port 0) could be taken by one of the
/// members' own connections before the member it was meant for starts. Falls back to
/// port 0.
fn free_port(ip: std::net::IpAddr, seed: &mut u32) -> Result<SocketAddr> {
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 20_000;
    if ephemeral_min > LOW + 1000 {
        let span = u32::from(ephemeral_min - LOW);
        for _ in 0..200 {
            // xorshift: a different sequence per process and start.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 17;
            *seed ^= *seed << 5;
            let port = LOW + u16::try_from(*seed % span).unwrap_or(0);
            if let Ok(l) = TcpListener::bind((ip, port)) {
                return Ok(l.local_addr()?);
            }
        }
    }
    let l =
        TcpListener::bind((ip, 0)).with_context(|| format!("cannot find a free port on {ip}"))?;
    Ok(l.local_addr()?)
}

fn toml_str(s: &str) -> String {
    // TOML basic strings share JSON's escaping for everything a path can hold.
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

fn path_str(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

fn write_config(dir: &Path, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("config.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Starts `bora ROLE --config CONFIG` and waits for its ready line.
async fn start(role: &'static str, id: &str, dir: &Path, config: &Path) -> Result<Member> {
    let exe = std::env::current_exe().context("cannot find the bora executable")?;
    let log = dir.join("log");
    let stderr = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut child = Command::new(exe)
        .arg(role)
        .arg("--config")
        .arg(config)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {role} {id}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{role} {id}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
    let tail = || log_tail(&log);
    match first {
        Ok(Ok(Some(line))) if line.starts_with(READY_PREFIX) => {}
        Ok(Ok(Some(line))) => bail!("{role} {id} said {line:?} instead of starting: {}", tail()),
        Ok(Ok(None)) | Ok(Err(_)) => bail!("{role} {id} exited while starting: {}", tail()),
        Err(_) => bail!(
            "{role} {id} did not start within {START_TIMEOUT:?}: {}",
            tail()
        ),
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Member {
        role,
        id: id.to_string(),
        dir: dir.to_path_buf(),
        child,
    })
}

/// The last lines of a member's log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut last: VecDeque<&str> = VecDeque::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        if last.len() == 3 {
            last.pop_front();
        }
        last.push_back(l);
    }
    if last.is_empty() {
        format!("(nothing in {})", log.display())
    } else {
        Vec::from(last).join(" | ")
    }
}

/// SIGTERM to every member (workers first), then SIGKILL to whoever is left.
async fn stop_all(members: &mut [Member]) {
    for m in members.iter().rev() {
        if let Some(pid) = m.child.id() {
            let pid = rustix::process::Pid::from_raw(pid as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    for m in members.iter_mut().rev() {
        match tokio::time::timeout(STOP_TIMEOUT, m.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} {} did not stop; killing it", m.role, m.id);
                let _ = m.child.kill().await;
            }
        }
    }
}

pub async fn run(args: UpArgs, json: bool) -> Result<()> {
    if args.coordinators == 0 || args.coordinators > 7 {
        bail!(
            "--coordinators {}: between 1 and 7 (3 survives one down, 5 two)",
            args.coordinators
        );
    }
    if args.storage_nodes == 0 || args.workers == 0 {
        bail!("a cluster needs at least one storage node and one worker");
    }
    let replicas = args.replicas.unwrap_or(2.min(args.storage_nodes as u32));
    if replicas == 0 || replicas as usize > args.storage_nodes {
        bail!(
            "--replicas {replicas}: between 1 and the number of storage nodes ({})",
            args.storage_nodes
        );
    }
    let data = args.data.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let lock_path = data.join("up.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "{} is used by another `bora up`; stop it or pass another --data",
            data.display()
        );
    }
    let plan = plan(&args.listen, args.storage_nodes, args.coordinators)?;
    if let Some(first) = plan.coordinators.first()
        && !first.ip().is_loopback()
    {
        eprintln!(
            "warning: the cluster listens on {}, reachable from other machines; its gRPC \
             has no authentication yet",
            first.ip()
        );
    }

    let mut members: Vec<Member> = Vec::new();
    let started = start_members(&args, &data, &plan, replicas, &mut members).await;
    if let Err(e) = started {
        stop_all(&mut members).await;
        return Err(e);
    }
    let url = plan.urls();
    if json {
        crate::output::json(&serde_json::json!({
            "ready": url,
            "data": data,
            "members": members.iter().map(|m| serde_json::json!({
                "role": m.role, "id": m.id, "pid": m.child.id(), "dir": m.dir,
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        println!("ready {url}");
    }
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut reported = vec![false; members.len()];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = check.tick() => {
                // A member that dies is reported once and left down: the cluster is meant
                // to survive it, and the operator (or a test) decides what happens next.
                for (m, seen) in members.iter_mut().zip(reported.iter_mut()) {
                    if !*seen && let Ok(Some(status)) = m.child.try_wait() {
                        *seen = true;
                        eprintln!("{} {} exited ({status}); the others keep running", m.role, m.id);
                    }
                }
            }
        }
    }
    stop_all(&mut members).await;
    drop(lock);
    Ok(())
}

async fn start_members(
    args: &UpArgs,
    data: &Path,
    plan: &Plan,
    replicas: u32,
    members: &mut Vec<Member>,
) -> Result<()> {
    // A name of its own, so no member takes another cluster's node for one of its own.
    let name = format!("up-{}", bora_core::snapshot::SnapshotId::random());
    let cluster = name.as_str();
    let mut nodes = String::new();
    for (i, addr) in plan.storage.iter().enumerate() {
        let id = format!("storage-{}", i + 1);
        let dir = data.join(&id);
        let config = write_config(
            &dir,
            &format!(
                "# bora storage node (written by `bora up`)\nid = {}\ncluster = {}\nlisten = {}\ndata-dir = {}\n",
                toml_str(&id),
                toml_str(cluster),
                toml_str(&addr.to_string()),
                path_str(&dir.join("data")),
            ),
        )?;
        members.push(start("storage-node", &id, &dir, &config).await?);
        nodes.push_str(&format!(
            "\n[[storage-nodes]]\nid = {}\naddr = {}\n",
            toml_str(&id),
            toml_str(&addr.to_string())
        ));
    }
    if let Some(listen) = &args.replica_listen {
        nodes.push_str(&super::up_replica::prepare(
            data,
            listen,
            args.replica_insecure,
        )?);
    }
    let lease_ms = args.lease_ms;
    let range_bytes = args.range_bytes;
    let per_host = args
        .per_host_limit
        .map(|n| format!("per-host-limit = {n}\n"))
        .unwrap_or_default();
    // Several coordinators: each gets a [raft] section naming all of them (member ids
    // 1..=N in --listen order); member 1 makes the new cluster.
    let raft_members = plan
        .coordinators
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{} = {}", i + 1, toml_str(&a.to_string())))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, addr) in plan.coordinators.iter().enumerate() {
        let cid = format!("coordinator-{}", i + 1);
        let cdir = data.join(&cid);
        let raft = if plan.coordinators.len() > 1 {
            let snapshots = args
                .raft_snapshot_every
                .map(|n| format!("snapshot-every = {n}\nkeep-logs = {}\n", n / 2))
                .unwrap_or_default();
            format!(
                "\n[raft]\nid = {}\nmembers = {{ {raft_members} }}\n{snapshots}",
                i + 1
            )
        } else {
            String::new()
        };
        // The second-site listener (in `nodes`) belongs to the first coordinator only: a
        // remote is one URL (its certificate and the senders name it), and the listener
        // needs no lead — it commits through whichever coordinator leads. While
        // coordinator-1 is down this site receives nothing (senders retry).
        let tables = if i == 0 {
            nodes.clone()
        } else {
            nodes
                .split("\n[replica]")
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let config = write_config(
            &cdir,
            &format!(
                "# bora coordinator (written by `bora up`)\nid = {}\ncluster = {}\nlisten = {}\ndata-dir = {}\n\
                 replicas = {replicas}\nlease-ms = {lease_ms}\nrange-bytes = {range_bytes}\n{per_host}{tables}{raft}",
                toml_str(&cid),
                toml_str(cluster),
                toml_str(&addr.to_string()),
                path_str(&cdir.join("data")),
            ),
        )?;
        members.push(start("coordinator", &cid, &cdir, &config).await?);
    }
    if plan.coordinators.len() > 1 {
        wait_for_leader(&plan.urls()).await?;
    }
    for i in 1..=args.workers {
        let id = format!("worker-{i}");
        let dir = data.join(&id);
        let limit = args
            .read_limit
            .map(|b| format!("read-limit-bytes-per-s = {b}\n"))
            .unwrap_or_default();
        let config = write_config(
            &dir,
            &format!(
                "# bora worker (written by `bora up`)\nid = {}\ncoordinators = [{}]\n\
                 scratch-dir = {}\n{limit}",
                toml_str(&id),
                plan.coordinators
                    .iter()
                    .map(|a| toml_str(&a.to_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                path_str(&dir.join("scratch")),
            ),
        )?;
        members.push(start("worker", &id, &dir, &config).await?);
    }
    Ok(())
}

/// Waits until the coordinators have a leader that has imported the storage seed (its
/// membership lists storage nodes), so the cluster is usable once `ready` is printed.
async fn wait_for_leader(urls: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let last = match crate::cluster::connect(urls).await {
            Ok(mut c) => match c.membership().await {
                Ok((m, _)) if !m.is_empty() => return Ok(()),
                Ok(_) => "the leader has no storage nodes yet".to_string(),
                Err(e) => format!("{e:#}"),
            },
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("the coordinators elected no usable leader within {START_TIMEOUT:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `$XDG_DATA_HOME/bora-cluster` (next to the embedded repository).
pub fn default_data_dir() -> PathBuf {
    crate::repo::default_repo_dir().with_file_name("bora-cluster")
}
