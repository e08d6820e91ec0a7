//! The coordinator of a cluster as a gRPC service: it keeps the snapshot catalog and the
//! storage membership, runs backup jobs by leasing their ranges to workers, and commits
//! each job's snapshot when every range has a result.
//!
//! ```text
//! client ── StartBackup ──► coordinator ◄── Lease / Heartbeat / CompleteRange ── workers
//!        ◄─ WaitJob ──────   │ LeaseTable (ranges, leases, attempts)            │
//!                            │ commit: index per disk → store, record → catalog  ▼
//!                            └──────── StoreFactory(membership) ──────► storage nodes
//! ```
//!
//! - **The catalog is replicated** (`crate::raft`, store in `data-dir/raft`): snapshot
//!   records, registered hosts and the storage membership. Writes are proposals, reads
//!   are linearizable; a coordinator that is not the leader answers UNAVAILABLE with the
//!   leader in a `bora-leader` metadata entry. Without `[raft]` in the config the
//!   coordinator is a cluster of one. The `Raft` service is served on the same listener.
//!   On a cluster's first start the leader imports its data dir's files once (see
//!   `replicated`). Coordinators are added and removed online (`members`: the
//!   `AddCoordinator`/`RemoveCoordinator` RPCs); a member with an empty store makes a new
//!   cluster only when no configured member answers as part of one (`join`);
//!   `ExportCatalog` and `export` write the catalog back as those data-dir files.
//! - **Jobs are replicated too**: `StartJob` before a job's ranges are leased, each
//!   range's result stored as pieces in the storage nodes and then `AcceptRange`, and
//!   `EndJob` (committed with the snapshot record, failed, cancelled). A job's id is the
//!   id of the snapshot it commits. The lease table is the leader's memory: a new leader
//!   (or a restarted single coordinator) takes the running jobs over with the ranges done
//!   before and leases the rest again (`takeover`); lease numbers carry the leader's
//!   term, so leases of an earlier leadership are told they ended (see `epoch`).
//! - **A client disconnecting does not cancel its job**: the job belongs to the
//!   coordinator until it commits, fails or is cancelled (`CancelJob`).
//! - **Leases** last `lease-ms`; a worker's heartbeat extends them; a timer driven by the
//!   table's next deadline takes back the leases of silent workers and their ranges go
//!   to other workers. A range gets `max-attempts` leases before its job fails.
//! - **Commit.** A failed or cancelled job commits nothing. A job whose ranges are all done
//!   builds each disk's index from the results (every chunk reported: these are full
//!   backups, deduplication makes them cheap), stores it through the chunk store the
//!   [`StoreFactory`] builds for the current membership, and commits the snapshot record
//!   with the VM's latest snapshot as parent. One VM has at most one running job.
//! - **Membership** is in the replicated catalog; `membership.json` and the config's
//!   `storage-nodes` only seed a new cluster (see [`crate::config`]).
//! - **A leader change costs the leases in flight, nothing else**: clients and workers
//!   follow the new leader; its `WaitJob` knows the job; ranges that were being read are
//!   read again; a job whose ranges were all done is committed by the new leader.
//!
//! Only `config.listen` is bound. The data directory is locked (`data-dir/lock`) while the
//! coordinator runs.

mod commit;
mod epoch;
mod error;
mod export;
mod grpc;
mod jobs;
mod join;
mod leases;
mod live_jobs;
mod members;
mod probe;
mod replicated;
mod state;
mod storage;
mod takeover;
mod wire;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

pub use error::{LEADER_METADATA, RequestError, ServiceError, to_status};
pub use export::{CatalogExport, EXPORT_INFO, ExportError};
pub use storage::StoreFactory;

use crate::config::CoordinatorConfig;
use crate::lease::{JobCommit, LeaseConfig, LeaseTable};
use crate::live::LiveVms;
use crate::raft::network::grpc::RaftService;
use epoch::{Epoch, Start};
use state::{Clock, Coordinator, Core};

/// A coordinator listening on its address, not yet serving: [`Self::run`] serves it.
pub struct BoundCoordinator {
    listener: TcpListener,
    addr: SocketAddr,
    coordinator: Arc<Coordinator>,
    commits: mpsc::UnboundedReceiver<JobCommit>,
    lock: File,
    /// Services the process adds beside the coordinator's (e.g. `Remotes`).
    extra: tonic::service::Routes,
    config: CoordinatorConfig,
}

/// Opens the coordinator's state in `config.data_dir` (catalog, membership, epoch) and
/// binds `config.listen`. `stores` builds the chunk store snapshot indexes are stored in.
pub async fn bind(
    config: &CoordinatorConfig,
    stores: StoreFactory,
) -> Result<BoundCoordinator, ServiceError> {
    config.validate().map_err(ServiceError::Config)?;
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServiceError::DataDir {
        path: dir.clone(),
        source,
    })?;
    let lock = lock_data_dir(dir)?;
    let start = Start::next(dir)?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ServiceError::Bind {
                addr: config.listen.clone(),
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: config.listen.clone(),
        source,
    })?;
    let raft = replicated::open(config, addr).await?;
    let single_leader = config.raft.is_none()
        // A cluster of one: it leads within a few hundred ms; import before serving, so
        // the first request already sees the data dir's records.
        && replicated::wait_leader(&raft, std::time::Duration::from_secs(10)).await;
    if single_leader {
        replicated::on_leading(&raft, config).await?;
    }
    let storage = storage::Storage::new(raft.clone(), stores);
    let (commits_tx, commits) = mpsc::unbounded_channel();
    let table = LeaseTable::new(LeaseConfig {
        lease_ms: config.lease_ms,
        max_attempts: config.max_attempts,
        per_host_limit: config.per_host_limit,
        range_bytes: config.range_bytes,
    });
    let coordinator = Coordinator {
        cluster: config.cluster.clone().unwrap_or_default(),
        id: config.id.clone(),
        addr,
        lease_ms: config.lease_ms,
        start,
        clock: Clock::new(),
        core: Mutex::new(Core {
            table,
            jobs: HashMap::new(),
            ended: VecDeque::new(),
            workers: BTreeMap::new(),
            next_seq: 0,
            preparing: HashSet::new(),
            epoch: Epoch::NONE,
            leading: None,
        }),
        leadership: watch::Sender::new(None),
        raft,
        live: OnceLock::new(),
        storage,
        expiry: Notify::new(),
        work: Notify::new(),
        commits: commits_tx,
        stopping: watch::Sender::new(false),
    };
    let coordinator = Arc::new(coordinator);
    if single_leader && let Some(term) = coordinator.raft.leadership().term() {
        // Serve with the jobs taken over (a restart's running jobs go on).
        if let Err(e) = coordinator.clone().take_over(term).await {
            warn!(error = %e, "taking over the running jobs; will retry");
        }
    }
    Ok(BoundCoordinator {
        listener,
        addr,
        coordinator,
        commits,
        lock,
        extra: tonic::service::Routes::default(),
        config: config.clone(),
    })
}

impl BoundCoordinator {
    /// The address bound (with the port chosen when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This member of the replicated catalog, for the process's other parts that keep
    /// their records in it (the second site's remotes): propose on the leader, read
    /// linearizably, map errors with [`to_status`] (`RequestError::Raft`).
    pub fn catalog(&self) -> crate::raft::RaftCatalog {
        self.coordinator.raft.clone()
    }

    /// Lets this coordinator back up live VMs of registered hosts through `live`.
    pub fn with_live_vms(self, live: Arc<dyn LiveVms>) -> BoundCoordinator {
        let _ = self.coordinator.live.set(live);
        self
    }

    /// Serves `routes` on the coordinator's listener too (services of other crates that
    /// belong with the cluster's control plane).
    pub fn with_routes(mut self, routes: tonic::service::Routes) -> BoundCoordinator {
        self.extra = routes;
        self
    }

    /// Serves until `shutdown` resolves: then stops accepting requests, answers pending
    /// long polls, finishes the commits already started, and unlocks the data directory.
    /// Running jobs end with the process (see the module documentation).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServiceError> {
        let BoundCoordinator {
            listener,
            addr,
            coordinator: c,
            mut commits,
            lock,
            extra,
            config,
        } = self;
        info!(id = %c.id, addr = %addr, "coordinator serving");
        let mut stopped = c.stopping.subscribe();
        let routes = extra
            .add_service(grpc::CoordinatorService::server(c.clone()))
            .add_service(RaftService::server(c.raft.raft().clone()));
        let server = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
        let served = async {
            let r = server.await;
            c.stopping.send_replace(true);
            r
        };
        let mut stopped = c.stopping.subscribe();
        let watcher = async {
            tokio::select! {
                () = shutdown => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
            c.stopping.send_replace(true);
        };
        let (served, (), (), (), (), ()) = tokio::join!(
            served,
            watcher,
            c.clone().run_expiry(),
            run_commits(c.clone(), &mut commits),
            run_import(c.clone(), config),
            takeover::run_leadership(c.clone())
        );
        if let Err(e) = c.raft.shutdown().await {
            warn!(error = %e, "stopping the raft member");
        }
        drop(lock);
        info!(id = %c.id, "coordinator stopped");
        served.map_err(|source| ServiceError::Serve { addr, source })
    }
}

/// Imports the data dir's records (see `replicated`) once this member leads, if nothing
/// was imported yet; ends when the coordinator stops.
async fn run_import(c: Arc<Coordinator>, config: CoordinatorConfig) {
    let mut stopping = c.stopping.subscribe();
    loop {
        if c.raft.status().state == "leader" {
            match replicated::on_leading(&c.raft, &config).await {
                Ok(_) => return,
                Err(e) => warn!(error = %e, "importing the data dir; will retry"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// Commits jobs as they become ready, several at once; when the coordinator stops, the
/// commits already started or queued are finished.
async fn run_commits(c: Arc<Coordinator>, rx: &mut mpsc::UnboundedReceiver<JobCommit>) {
    let mut running = JoinSet::new();
    let mut stopping = c.stopping.subscribe();
    loop {
        tokio::select! {
            Some(commit) = rx.recv() => {
                running.spawn(c.clone().commit_job(commit));
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    rx.close();
    while let Ok(commit) = rx.try_recv() {
        running.spawn(c.clone().commit_job(commit));
    }
    while running.join_next().await.is_some() {}
}

/// Locks `dir/lock` so that one coordinator at a time uses the data directory; the file
/// holds the holder's pid.
fn lock_data_dir(dir: &Path) -> Result<File, ServiceError> {
    let path = dir.join("lock");
    let state = |reason: String| ServiceError::State {
        path: path.clone(),
        reason,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| state(e.to_string()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(state(format!(
                "the data directory is in use by another coordinator (pid {})",
                pid.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(state(e.to_string())),
    }
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| write!(f, "{}", std::process::id()))
        .map_err(|e| state(e.to_string()))?;
    Ok(f)
}
