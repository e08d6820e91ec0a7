//! `bora storage-node|coordinator|worker --config FILE`: one cluster member in the
//! foreground until SIGINT/SIGTERM. Once it serves, a member prints one line on stdout,
//! `started ROLE ID [on ADDR]` (what `bora up` waits for). Started by `bora up`, a member
//! also stops when that parent process is gone, so a killed `up` leaves no orphans.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use bora_core::placement::{DEFAULT_REPLICAS, Membership, NodeId};
use bora_core::store::ChunkStore;
use bora_storage_node::placed::PlacedChunkStore;
use bora_worker::cluster::StorageMembership;

/// Set by `bora up` on its children: the pid whose death stops them.
pub const PARENT_ENV: &str = "BORA_UP_PARENT";
/// The first word of a member's line on stdout once it serves.
pub const READY_PREFIX: &str = "started ";

/// Completes on SIGINT, SIGTERM, or (under `bora up`) when the parent is gone.
fn shutdown() -> Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let parent: Option<u32> = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse().ok());
    Ok(async move {
        let orphaned = async {
            match parent {
                None => std::future::pending::<()>().await,
                Some(p) => loop {
                    let ppid = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
                    if ppid != Some(p) {
                        tracing::warn!(parent = p, "bora up is gone; stopping");
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                },
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = orphaned => {}
        }
    })
}

fn announce(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY_PREFIX}{line}")?;
    out.flush()?;
    Ok(())
}

/// The chunk store a member reaches the storage nodes of cluster `cluster` through:
/// each node must answer with its id and this cluster name before it is used.
pub fn placed_store(
    membership: &Membership,
    addrs: &BTreeMap<NodeId, String>,
    cluster: &str,
) -> Arc<dyn ChunkStore> {
    Arc::new(PlacedChunkStore::new(membership.clone(), addrs.clone()).with_cluster(cluster))
}

pub async fn storage_node(config: &Path) -> Result<()> {
    use bora_storage_node::config::StorageNodeConfig;
    let cfg = StorageNodeConfig::load(config)?;
    let stop = shutdown()?;
    let bound = bora_storage_node::service::bind(&cfg).await?;
    announce(&format!(
        "storage-node {} on {}",
        cfg.id,
        bound.local_addr()
    ))?;
    bound.run(stop).await?;
    Ok(())
}

pub async fn coordinator(config: &Path) -> Result<()> {
    use bora_coordinator::config::CoordinatorConfig;
    let cfg = CoordinatorConfig::load(config)?;
    let stop = shutdown()?;
    let cluster = cfg.cluster.clone().unwrap_or_default();
    let stores: bora_coordinator::service::StoreFactory =
        Arc::new(move |m, addrs| placed_store(m, addrs, &cluster));
    let live = super::backup::live::QemuLiveVms {
        scratch: cfg.data_dir.join("scratch"),
    };
    let bound = bora_coordinator::service::bind(&cfg, stores)
        .await?
        .with_live_vms(Arc::new(live));
    let (routes, replication) =
        crate::replica_site::start(&cfg, bound.local_addr(), bound.catalog()).await?;
    let bound = bound.with_routes(routes);
    announce(&format!("coordinator {} on {}", cfg.id, bound.local_addr()))?;
    let repairs = tokio::spawn(crate::repair_loop::run(
        bound.local_addr(),
        cfg.cluster.clone().unwrap_or_default(),
    ));
    let served = bound.run(stop).await;
    repairs.abort();
    replication.iter().for_each(tokio::task::JoinHandle::abort);
    served?;
    Ok(())
}

/// The chunk store a worker reaches the storage nodes through, from the membership the
/// coordinator sent.
fn worker_store(m: &StorageMembership) -> Arc<dyn ChunkStore> {
    let replicas = NonZeroUsize::new(m.replicas as usize).unwrap_or(DEFAULT_REPLICAS);
    let membership =
        Membership::with_nodes(replicas, m.nodes.keys().map(|id| NodeId::from(id.as_str())));
    let addrs = m
        .nodes
        .iter()
        .map(|(id, addr)| (NodeId::from(id.as_str()), addr.clone()))
        .collect();
    placed_store(&membership, &addrs, &m.cluster)
}

pub async fn worker(config: &Path) -> Result<()> {
    use bora_worker::cluster::WorkerConfig;
    let cfg = WorkerConfig::load(config)?;
    let stop = shutdown()?;
    announce(&format!("worker {}", cfg.id))?;
    bora_worker::cluster::run(cfg, Arc::new(worker_store), stop).await?;
    Ok(())
}
