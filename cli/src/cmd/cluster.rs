//! Commands against a running cluster (`--cluster URL`): backup of image files through the
//! workers, snapshots, restore from the storage nodes, status, repair and storage
//! membership. Same output as the embedded commands.

mod backup;
mod hosts;

use std::time::Instant;

use anyhow::{Result, bail};

use bora_proto::coordinator::job_status::State;
use bora_proto::coordinator::{
    AddStorageNodeRequest, CancelJobRequest, RaftMember, RaftStatus, RemoveStorageNodeRequest,
    StatusRequest,
};

use crate::cli::{InitArgs, SnapshotsArgs, StorageCommand};
use crate::cluster::{connect, status_err};
use crate::output;
use crate::repo::DEFAULT_CHUNK_SIZE;

pub use backup::{backup, backup_image};
pub use hosts::{host, vm};

/// A job state as `status` and `cancel` print it.
fn state_name(st: i32) -> &'static str {
    match State::try_from(st) {
        Ok(State::Running) => "running",
        Ok(State::Committed) => "committed",
        Ok(State::Failed) => "failed",
        Ok(State::Cancelled) => "cancelled",
        _ => "unknown",
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
    let raft = s.raft.clone().unwrap_or_default();
    let coordinators = raft_members_json(&raft);
    let doc = serde_json::json!({
        "leader": s.id,
        "term": raft.term,
        "applied": raft.applied,
        "snapshot": raft.snapshot,
        "purged": raft.purged,
        "coordinators": coordinators,
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
    println!(
        "coordinator {} (leader, raft term {}) at {}",
        s.id, raft.term, c.url
    );
    print_raft_members(&raft);
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

/// A member's log position as `raft` (one member's view) knows it: its own last entry
/// for the member that answered, the others' as the leader knows them (matched).
fn raft_log(raft: &RaftStatus, m: &RaftMember) -> Option<u64> {
    if m.id == raft.id {
        raft.last_log
    } else {
        m.matched
    }
}

/// Each coordinator of the replicated catalog with its log position (`coordinators` in
/// `status --json`, and in `coordinator add|remove --json`).
pub fn raft_members_json(raft: &RaftStatus) -> Vec<serde_json::Value> {
    raft.members
        .iter()
        .map(|m| {
            serde_json::json!({
                "raft_id": m.id, "addr": m.addr, "voter": m.voter,
                "leader": raft.leader == Some(m.id), "log": raft_log(raft, m),
            })
        })
        .collect()
}

/// The coordinators as `status` prints them.
pub fn print_raft_members(raft: &RaftStatus) {
    for m in &raft.members {
        println!(
            "  raft member {:<3} {:<22} {:<8} log {}{}",
            m.id,
            m.addr,
            if m.voter { "voter" } else { "learner" },
            raft_log(raft, m).map_or_else(|| "?".to_string(), |l| l.to_string()),
            if raft.leader == Some(m.id) {
                " (leader)"
            } else {
                ""
            }
        );
    }
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
/// `init --cluster`: a cluster's repository is made by its members when they start;
/// this checks the cluster can take backups and reports what its snapshots use.
pub async fn init(urls: &str, args: InitArgs, json: bool) -> Result<()> {
    if let Some(cs) = args.chunk_size.filter(|cs| *cs != DEFAULT_CHUNK_SIZE) {
        bail!(
            "a cluster's snapshots use {} chunks; --chunk-size {cs} is for a local repository",
            output::bytes(u64::from(DEFAULT_CHUNK_SIZE))
        );
    }
    let mut c = connect(urls).await?;
    let (membership, _) = c.membership().await?;
    let nodes = membership.nodes().count();
    if nodes == 0 {
        bail!(
            "the cluster at {} has no storage nodes: add one with bora storage add ID ADDR",
            c.url
        );
    }
    if json {
        output::json(&serde_json::json!({
            "cluster": c.url,
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "storage_nodes": nodes,
            "copies": membership.copies(),
        }))
    } else {
        println!(
            "cluster {} is ready: {nodes} storage nodes, {} copies of every chunk, chunk size {}",
            c.url,
            membership.copies(),
            output::bytes(u64::from(DEFAULT_CHUNK_SIZE))
        );
        Ok(())
    }
}

/// `cancel JOB`: ends a running job without a commit.
pub async fn cancel(urls: &str, job: &str, json: bool) -> Result<()> {
    let mut c = connect(urls).await?;
    // Cancelling twice answers the ended job's status: safe to ask again through a
    // leader change.
    let request = CancelJobRequest {
        job: job.to_string(),
    };
    let s = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.cancel_job(request).await }
        })
        .await
        .map_err(|s| status_err(&format!("cancelling job {job}"), s))?;
    let state = state_name(s.state);
    if json {
        output::json(&serde_json::json!({"job": s.job, "vm": s.vm, "state": state}))
    } else {
        match State::try_from(s.state) {
            Ok(State::Cancelled) => {
                println!("job {job} of vm {} cancelled; nothing was committed", s.vm)
            }
            _ => println!("job {job} of vm {} had already ended: {state}", s.vm),
        }
        Ok(())
    }
}
