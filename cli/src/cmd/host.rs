//! `bora host add|list|remove` and `bora vm list`.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use bora_core::host::{HostSpec, QmpTarget};
use bora_worker::qemu::host::{connect, vm_disks, vm_sockets};

use crate::cli::{HostAddArgs, HostCommand, VmCommand};
use crate::output;
use crate::repo::Repo;

fn qmp_json(h: &HostSpec) -> serde_json::Value {
    let (qmp, dir) = match &h.qmp {
        QmpTarget::Socket(p) => (Some(format!("unix:{}", p.display())), None),
        QmpTarget::Dir(d) => (None, Some(d.display().to_string())),
    };
    serde_json::json!({
        "name": h.name,
        "qmp": qmp,
        "qmp_dir": dir,
        "nbd": h.nbd,
        "max_concurrent": h.max_concurrent,
        "scratch_dir": h.scratch_dir,
    })
}

/// The host record `host add` registers. `local`: the paths are on this machine (the
/// embedded default), so they are checked here; a cluster's coordinator reads them on
/// its own machine.
pub fn host_spec(a: HostAddArgs, local: bool) -> Result<(HostSpec, bool)> {
    let qmp = match (a.qmp, a.qmp_dir) {
        (Some(q), None) => {
            let path = PathBuf::from(q.strip_prefix("unix:").unwrap_or(&q));
            if local && !path.exists() {
                bail!("QMP socket {} does not exist", path.display());
            }
            QmpTarget::Socket(path)
        }
        (None, Some(d)) => {
            if local && !d.is_dir() {
                bail!("QMP directory {} does not exist", d.display());
            }
            QmpTarget::Dir(d)
        }
        _ => bail!("give one of --qmp unix:PATH or --qmp-dir DIR"),
    };
    if let Some(n) = &a.nbd
        && !(n.starts_with("unix:") || n.contains(':'))
    {
        bail!("--nbd {n}: expected unix:PATH or HOST:PORT");
    }
    let mut host = HostSpec::new(a.name, qmp, a.nbd);
    host.max_concurrent = a.max_concurrent.max(1);
    host.scratch_dir = a.scratch_dir;
    Ok((host, a.replace))
}

/// Reports a registered host.
pub fn print_added(host: &HostSpec, json: bool) -> Result<()> {
    if json {
        output::json(&qmp_json(host))
    } else {
        println!("host {} registered", host.name);
        Ok(())
    }
}

/// Prints the registered hosts.
pub fn print_hosts(hosts: &[HostSpec], json: bool) -> Result<()> {
    if json {
        return output::json(&serde_json::Value::Array(
            hosts.iter().map(qmp_json).collect(),
        ));
    }
    if hosts.is_empty() {
        println!("no hosts");
    }
    for h in hosts {
        let target = match &h.qmp {
            QmpTarget::Socket(p) => format!("qmp unix:{}", p.display()),
            QmpTarget::Dir(d) => format!("qmp-dir {}", d.display()),
        };
        let nbd = h.nbd.as_deref().unwrap_or("(default)");
        println!("{:<16} {target}  nbd {nbd}", h.name);
    }
    Ok(())
}

pub fn print_removed(name: &str, json: bool) {
    if !json {
        println!("host {name} removed (its snapshots stay)");
    }
}

/// One VM as `vm list` shows it: `(disk, size, node)` per disk (no node from a cluster).
pub struct VmRow {
    pub host: String,
    pub vm: String,
    pub disks: Vec<(String, u64, Option<String>)>,
}

/// Prints `vm list`.
pub fn print_vms(rows: &[VmRow], json: bool) -> Result<()> {
    if json {
        return output::json(&serde_json::Value::Array(
            rows.iter()
                .map(|r| {
                    serde_json::json!({
                        "vm": r.vm,
                        "host": r.host,
                        "disks": r.disks.iter().map(|(disk, size, node)| serde_json::json!({
                            "disk": disk, "size": size, "node": node,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ));
    }
    if rows.is_empty() {
        println!("no vms");
    }
    for r in rows {
        let d: Vec<String> = r
            .disks
            .iter()
            .map(|(disk, size, _)| format!("{disk} ({})", output::bytes(*size)))
            .collect();
        println!("{:<20} host {:<16} {}", r.vm, r.host, d.join(", "));
    }
    Ok(())
}

pub async fn run_host(repo_dir: &Path, cmd: HostCommand, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, true, None)?;
    match cmd {
        HostCommand::Add(a) => {
            let (host, replace) = host_spec(a, true)?;
            repo.inventory.add(&host, replace)?;
            print_added(&host, json)
        }
        HostCommand::List => print_hosts(&repo.inventory.list()?, json),
        HostCommand::Remove { name } => {
            repo.inventory.remove(&name)?;
            print_removed(&name, json);
            Ok(())
        }
    }
}

pub async fn run_vm(repo_dir: &Path, cmd: VmCommand, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, true, None)?;
    let VmCommand::List { host } = cmd;
    let hosts = match host {
        Some(h) => vec![repo.inventory.get(&h)?],
        None => repo.inventory.list()?,
    };
    let mut rows = Vec::new();
    for h in &hosts {
        for sock in vm_sockets(h)? {
            // A stale socket (VM shut down) is reported, not fatal for the listing.
            let disks = match connect(&sock).await {
                Ok(qmp) => vm_disks(&qmp, &sock.vm).await.map_err(|e| anyhow!(e)),
                Err(e) => Err(anyhow!(e)),
            };
            match disks {
                Ok(d) => rows.push(VmRow {
                    host: h.name.clone(),
                    vm: sock.vm,
                    disks: d
                        .into_iter()
                        .map(|d| (d.disk, d.size, Some(d.node)))
                        .collect(),
                }),
                Err(e) => eprintln!("warning: host {} vm {}: {e:#}", h.name, sock.vm),
            }
        }
    }
    print_vms(&rows, json)
}
