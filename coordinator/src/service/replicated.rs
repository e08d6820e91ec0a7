//! The coordinator's replicated catalog: opening this member's Raft store
//! (`data-dir/raft`), making a new cluster, and the one-time import of what a single
//! coordinator kept in files before (`snapshots/`, `hosts/`, `membership.json`, and the
//! config's `storage-nodes` seed).
//!
//! - Without `[raft]` the coordinator is a cluster of one: member 1 at its bound address.
//! - A new cluster is initialized by the member with the lowest id, when its store is
//!   empty and no other configured member answers as part of a cluster (`join`). Any
//!   other member with an empty store waits to be added by the leader (`bora
//!   coordinator add`, `RaftCatalog::add_member`).
//! - **Import**: the first time this member leads and the replicated catalog is empty
//!   (no snapshot, host or storage node), it proposes its data dir's records and the
//!   storage seed, then writes `data-dir/raft-imported` so it never imports again.
//!   Snapshot records keep their parents (`Parent::AsGiven`) and commit order; a record
//!   already there is refused as a duplicate and skipped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tracing::{Instrument, info, info_span, warn};

use super::error::ServiceError;
use super::join;
use super::storage;
use crate::catalog::Catalog;
use crate::config::CoordinatorConfig;
use crate::inventory::Inventory;
use crate::raft::command::{Command, Parent};
use crate::raft::network::grpc::GrpcNetwork;
use crate::raft::{RaftCatalog, RaftCatalogConfig, RaftCatalogError, Refusal};

/// The marker written once this data dir's records are in the replicated catalog.
const IMPORTED: &str = "raft-imported";

/// Opens this member and, on a new cluster, initializes it. `addr` is the bound address
/// (this member's address when the config has no `[raft]`).
pub(super) async fn open(
    config: &CoordinatorConfig,
    addr: SocketAddr,
) -> Result<RaftCatalog, ServiceError> {
    let dir = config.data_dir.join("raft");
    let (id, members, mut rc) = match &config.raft {
        Some(r) => {
            let members = r.member_map().map_err(ServiceError::Config)?;
            let own = members
                .get(&r.id)
                .cloned()
                .unwrap_or_else(|| addr.to_string());
            let mut rc = RaftCatalogConfig::new(r.id, own, dir);
            rc.heartbeat_ms = r.heartbeat_ms;
            rc.election_min_ms = r.election_min_ms;
            rc.election_max_ms = r.election_max_ms;
            rc.snapshot_every = r.snapshot_every;
            rc.keep_logs = r.keep_logs;
            (r.id, members, rc)
        }
        None => {
            let members = BTreeMap::from([(1, addr.to_string())]);
            (1, members, RaftCatalogConfig::new(1, addr.to_string(), dir))
        }
    };
    if config.raft.is_none() {
        // A cluster of one elects itself at once.
        rc.election_min_ms = 150;
        rc.election_max_ms = 300;
        rc.heartbeat_ms = 50;
    }
    let own_addr = rc.addr.clone();
    let catalog = RaftCatalog::open(&rc, GrpcNetwork).await?;
    if !catalog.is_initialized().await? {
        let lowest = members.keys().next() == Some(&id);
        let answers = if lowest {
            join::ask_members(id, &members).await
        } else {
            BTreeMap::new()
        };
        match join::decide(id, &members, &answers) {
            join::Start::Initialize => {
                info!(id, members = ?members.keys().collect::<Vec<_>>(), "making a new cluster");
                catalog.initialize(members).await?;
            }
            join::Start::WaitToBeAdded { found } => {
                join::log_waiting(id, &own_addr, found.as_ref());
            }
        }
    }
    Ok(catalog)
}

/// Waits until some member leads (up to `timeout`); true if this one does.
pub(super) async fn wait_leader(catalog: &RaftCatalog, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = catalog.status();
        if s.leader.is_some() {
            return s.state == "leader";
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a member does once it leads: the one-time import, then the config's `replicas`
/// (which, as before the catalog was replicated, applies on every start: the members'
/// configs should agree on it).
pub(super) async fn on_leading(
    catalog: &RaftCatalog,
    config: &CoordinatorConfig,
) -> Result<(), ServiceError> {
    import(catalog, config).await?;
    if let Some(replicas) = config.replicas {
        let current = catalog.read(|s| s.storage.replicas).await?;
        if current != replicas {
            catalog.propose(Command::SetReplicas { replicas }).await?;
            info!(
                from = current,
                to = replicas,
                "replicas set from the config"
            );
        }
    }
    Ok(())
}

/// Imports this data dir's records into the replicated catalog if this member leads,
/// the catalog is empty and this dir was not imported before. Returns whether it ran.
pub(super) async fn import(
    catalog: &RaftCatalog,
    config: &CoordinatorConfig,
) -> Result<bool, ServiceError> {
    let dir = config.data_dir.as_path();
    if dir.join(IMPORTED).exists() || catalog.status().state != "leader" {
        return Ok(false);
    }
    let empty = catalog
        .read(|s| s.snapshots.is_empty() && s.hosts.is_empty() && s.storage.nodes.is_empty())
        .await?;
    if !empty {
        mark(dir)?;
        return Ok(false);
    }
    let span = info_span!("import", dir = %dir.display());
    async {
        let commands = local_records(config)?;
        let n = commands.len();
        for command in commands {
            match catalog.propose(command).await {
                Ok(_) => {}
                Err(RaftCatalogError::Refused(
                    r @ (Refusal::DuplicateSnapshot { .. } | Refusal::HostExists { .. }),
                )) => {
                    warn!(refusal = %r, "already in the catalog; skipped");
                }
                Err(RaftCatalogError::Refused(r)) => {
                    warn!(refusal = %r, "a record of the data dir was refused; skipped");
                }
                Err(e) => return Err(e.into()),
            }
        }
        mark(dir)?;
        info!(records = n, "data dir imported into the replicated catalog");
        Ok(true)
    }
    .instrument(span)
    .await
}

/// The data dir's records and the storage seed, as commands.
fn local_records(config: &CoordinatorConfig) -> Result<Vec<Command>, ServiceError> {
    let dir = config.data_dir.as_path();
    let mut commands = Vec::new();
    if dir.join("snapshots").is_dir() {
        let catalog = Catalog::open(dir)?;
        commands.extend(
            catalog
                .list(None)?
                .into_iter()
                .map(|meta| Command::CommitSnapshot {
                    meta,
                    parent: Parent::AsGiven,
                }),
        );
    }
    if dir.join("hosts").is_dir() {
        let inventory = Inventory::open(dir)?;
        commands.extend(inventory.list()?.into_iter().map(|host| Command::AddHost {
            host,
            replace: false,
        }));
    }
    if storage::has_saved(dir) {
        info!("storage membership seeded from membership.json");
    }
    commands.extend(storage::seed(config)?);
    Ok(commands)
}

fn mark(dir: &Path) -> Result<(), ServiceError> {
    crate::fsutil::write_atomic(
        dir,
        IMPORTED,
        b"the records of this data dir are in raft/\n",
    )
    .map_err(|source| ServiceError::DataDir {
        path: dir.join(IMPORTED),
        source,
    })
}
