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

fn add(repo: &Repo, a: HostAddArgs, json: bool) -> Result<()> {
    let qmp = match (a.qmp, a.qmp_dir) {
        (Some(q), None) => {
            let path = PathBuf::from(q.strip_prefix("unix:").unwrap_or(&q));
            if !path.exists() {
                bail!("QMP socket {} does not exist", path.display());
            }
            QmpTarget::Socket(path)
        }
        (None, Some(d)) => {
            if !d.is_dir() {
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
    repo.inventory.add(&host, a.replace)?;
    if json {
        output::json(&qmp_json(&host))
    } else {
        println!("host {} registered", host.name);
        Ok(())
    }
}

pub async fn run_host(repo_dir: &Path, cmd: HostCommand, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, true, None)?;
    match cmd {
        HostCommand::Add(a) => add(&repo, a, json),
        HostCommand::List => {
            let hosts = repo.inventory.list()?;
            if json {
                return output::json(&serde_json::Value::Array(
                    hosts.iter().map(qmp_json).collect(),
                ));
            }
            if hosts.is_empty() {
                println!("no hosts");
            }
            for h in &hosts {
                let target = match &h.qmp {
                    QmpTarget::Socket(p) => format!("qmp unix:{}", p.display()),
                    QmpTarget::Dir(d) => format!("qmp-dir {}", d.display()),
                };
                let nbd = h.nbd.as_deref().unwrap_or("(default)");
                println!("{:<16} {target}  nbd {nbd}", h.name);
            }
            Ok(())
        }
        HostCommand::Remove { name } => {
            repo.inventory.remove(&name)?;
            if !json {
                println!("host {name} removed (its snapshots stay)");
            }
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
                Ok(d) => rows.push((h.name.clone(), sock.vm, d)),
                Err(e) => eprintln!("warning: host {} vm {}: {e:#}", h.name, sock.vm),
            }
        }
    }
    if json {
        return output::json(&serde_json::Value::Array(
            rows.iter()
                .map(|(h, vm, disks)| {
                    serde_json::json!({
                        "vm": vm,
                        "host": h,
                        "disks": disks.iter().map(|d| serde_json::json!({
                            "disk": d.disk, "size": d.size, "node": d.node,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ));
    }
    if rows.is_empty() {
        println!("no vms");
    }
    for (h, vm, disks) in &rows {
        let d: Vec<String> = disks
            .iter()
            .map(|d| format!("{} ({})", d.disk, output::bytes(d.size)))
            .collect();
        println!("{vm:<20} host {h:<16} {}", d.join(", "));
    }
    Ok(())
}
