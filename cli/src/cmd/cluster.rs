//! Commands against a running cluster (`--cluster URL`): backup of image files through the
//! workers, snapshots, restore from the storage nodes, status, repair and storage
//! membership. Same output as the embedded commands.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use bora_proto::coordinator::job_status::State;
use bora_proto::coordinator::{
    AddStorageNodeRequest, DiskSource, RemoveStorageNodeRequest, StartBackupRequest, StatusRequest,
    WaitJobRequest,
};
use bora_worker::nbd::{NbdClient, parse_nbd_url};
use bora_worker::source::image::probe;

use crate::cli::{BackupArgs, SnapshotsArgs, StorageCommand};
use crate::cluster::{Cluster, connect, parse_meta, status_err};
use crate::cmd::backup::BackupReport;
use crate::output;

/// The chunk size of snapshots taken through a cluster.
const CHUNK_SIZE: u32 = crate::repo::DEFAULT_CHUNK_SIZE;
/// How long one WaitJob call waits before the CLI asks again.
const WAIT_MS: u32 = 10_000;

/// `backup --image PATH | --nbd URL --vm NAME [--disk NAME]`: the coordinator splits the disk into
/// ranges and the workers back them up; this waits for the commit. Disconnecting (Ctrl-C)
/// does not cancel the job: it belongs to the coordinator and finishes there.
pub async fn backup(urls: &str, args: BackupArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let [vm] = args.vm.as_slice() else {
        bail!(
            "with --cluster, backup takes one --vm with --image or --nbd (live VMs by name run embedded for now)"
        );
    };
    let (disk, source, size) = match (&args.image, &args.nbd) {
        (Some(image), None) => image_source(image, args.disk.as_deref()).await?,
        (None, Some(url)) => {
            if args.bitmap.is_some() {
                bail!(
                    "with --cluster, --nbd backups are full: drop --bitmap (incrementals run embedded for now)"
                );
            }
            let disk = args
                .disk
                .clone()
                .ok_or_else(|| anyhow!("--nbd needs --disk NAME"))?;
            // The workers read the export; its size comes from one look at it here.
            let (addr, export) = parse_nbd_url(url).map_err(|e| anyhow!(e))?;
            let client = NbdClient::connect(&addr, &export, &[])
                .await
                .with_context(|| format!("cannot reach {url}"))?;
            let size = client.size();
            let _ = client.disconnect().await;
            (disk, url.clone(), size)
        }
        _ => bail!("backup needs --image PATH or --nbd URL"),
    };
    let mut c = connect(urls).await?;
    let job = c
        .client
        .start_backup(StartBackupRequest {
            vm: vm.clone(),
            host: "images".into(),
            chunk_size: CHUNK_SIZE,
            disks: vec![DiskSource {
                name: disk,
                source,
                size,
            }],
        })
        .await
        .map_err(|s| status_err(&format!("backup of vm {vm}"), s))?
        .into_inner()
        .job;
    let status = wait(&mut c, &job).await?;
    match State::try_from(status.state) {
        Ok(State::Committed) => {
            let report = BackupReport {
                meta: parse_meta(&status.snapshot_json)?,
                duration_s: started.elapsed().as_secs_f64(),
            };
            if json {
                output::json(&report.to_json())
            } else {
                report.print_human();
                Ok(())
            }
        }
        Ok(State::Cancelled) => {
            bail!("backup job {job} of vm {vm} was cancelled; nothing was committed")
        }
        _ => bail!("backup job {job} of vm {vm} failed: {}", status.error),
    }
}

/// An image file as a cluster source: `(disk name, absolute path, size)`. The workers open
/// it, so it must be at the same path on every worker (shared storage).
async fn image_source(image: &Path, disk: Option<&str>) -> Result<(String, String, u64)> {
    let image = std::path::absolute(image)
        .with_context(|| format!("cannot resolve {}", image.display()))?;
    let disk = match disk {
        Some(d) => d.to_string(),
        None => image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| {
                anyhow!(
                    "cannot derive a disk name from {}; pass --disk",
                    image.display()
                )
            })?,
    };
    let info = probe(&image).await?;
    Ok((disk, image.display().to_string(), info.size))
}

/// Long-polls job `job` until it ends.
async fn wait(c: &mut Cluster, job: &str) -> Result<bora_proto::coordinator::JobStatus> {
    loop {
        let s = c
            .client
            .wait_job(WaitJobRequest {
                job: job.to_string(),
                timeout_ms: WAIT_MS,
            })
            .await
            .map_err(|s| status_err(&format!("job {job}"), s))?
            .into_inner();
        if s.state != State::Running as i32 {
            return Ok(s);
        }
        tracing::info!(
            job,
            done = s.ranges_done,
            total = s.ranges_total,
            "backup running"
        );
    }
}

pub async fn snapshots(urls: &str, args: SnapshotsArgs, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    let list = c.snapshots(args.vm.as_deref()).await?;
    crate::cmd::snapshots::print(&list, json)
}

pub async fn status(urls: &str, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    let s = c
        .client
        .status(StatusRequest {})
        .await
        .map_err(|s| status_err("status", s))?
        .into_inner();
    let (membership, addrs) = c.membership().await?;
    let ring: Vec<_> = membership
        .nodes()
        .map(|n| serde_json::json!({"id": n.to_string(), "addr": addrs.get(n)}))
        .collect();
    let state_name = |st: i32| match State::try_from(st) {
        Ok(State::Running) => "running",
        Ok(State::Committed) => "committed",
        Ok(State::Failed) => "failed",
        Ok(State::Cancelled) => "cancelled",
        _ => "unknown",
    };
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "role": m.role, "id": m.id, "addr": m.addr,
                "pid": (m.pid != 0).then_some(m.pid), "state": m.state,
                "hostname": m.hostname, "leases": m.leases, "chunks": m.chunks,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "leader": s.id,
        "members": members,
        "ring": {"replicas": s.replicas, "copies": membership.copies(), "nodes": ring},
        "jobs": s.jobs.iter().map(|j| serde_json::json!({
            "job": j.job, "vm": j.vm, "state": state_name(j.state),
            "ranges_done": j.ranges_done, "ranges_total": j.ranges_total, "error": j.error,
        })).collect::<Vec<_>>(),
    });
    if json {
        return output::json(&doc);
    }
    println!("coordinator {} (leader) at {}", s.id, c.url);
    for m in &s.members {
        let extra = match m.role.as_str() {
            "storage-node" => format!("{} chunks", m.chunks),
            "worker" => format!("{} ranges", m.leases),
            _ => String::new(),
        };
        println!(
            "  {:<13} {:<14} {:<22} {:<5} {extra}",
            m.role, m.id, m.addr, m.state
        );
    }
    println!(
        "ring: {} storage nodes, {} copies of every chunk",
        membership.len(),
        membership.copies()
    );
    for j in &s.jobs {
        println!(
            "  job {} vm {}: {} ({}/{} ranges)",
            j.job,
            j.vm,
            state_name(j.state),
            j.ranges_done,
            j.ranges_total
        );
    }
    Ok(())
}

/// `repair`: every chunk onto each of its owners (after a node was down, or added).
pub async fn repair(urls: &str, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut c = connect(urls).await?;
    let store = c.store().await?;
    let r = bora_storage_node::repair::repair(&store).await?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        output::json(&serde_json::json!({
            "digests_seen": r.digests_seen,
            "copies_made": r.copies_made,
            "bytes_copied": r.bytes_copied,
            "copies_failed": r.copies_failed,
            "unrecoverable": r.unrecoverable.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "nodes_unreachable": r.nodes_unreachable.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "duration_s": secs,
        }))?;
    } else {
        println!(
            "repair: {} chunks seen, {} copies made ({}), {} failed, {} unrecoverable, {} nodes unreachable, {secs:.1} s",
            r.digests_seen,
            r.copies_made,
            output::bytes(r.bytes_copied),
            r.copies_failed,
            r.unrecoverable.len(),
            r.nodes_unreachable.len()
        );
    }
    if !r.is_complete() {
        bail!("repair is incomplete: run it again once every storage node is up");
    }
    Ok(())
}

/// `storage add ID ADDR` / `storage remove ID`: change the ring, then `repair` moves the
/// chunks the change gives to other owners.
pub async fn storage(urls: &str, cmd: StorageCommand, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    let m = match cmd {
        StorageCommand::Add { id, addr } => c
            .client
            .add_storage_node(AddStorageNodeRequest {
                id: id.clone(),
                addr,
            })
            .await
            .map_err(|s| status_err(&format!("adding storage node {id}"), s))?,
        StorageCommand::Remove { id } => c
            .client
            .remove_storage_node(RemoveStorageNodeRequest { id: id.clone() })
            .await
            .map_err(|s| status_err(&format!("removing storage node {id}"), s))?,
    }
    .into_inner();
    if json {
        output::json(&serde_json::json!({
            "replicas": m.replicas,
            "nodes": m.nodes.iter().map(|n| serde_json::json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
        }))
    } else {
        println!(
            "ring: {} storage nodes; run `bora repair` to move chunks to their new owners",
            m.nodes.len()
        );
        Ok(())
    }
}

/// Commands that run embedded only.
pub fn unsupported(what: &str) -> Result<()> {
    bail!(
        "{what} does not run against a cluster yet; drop --cluster to run it on a local repository"
    )
}
