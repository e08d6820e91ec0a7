//! The worker of a cluster: a loop that leases block ranges from a coordinator, backs
//! each up with the pipeline of the embedded mode ([`crate::pipeline::SourceWorker`],
//! full reads: every chunk reported, deduplication keeps unchanged chunks off the
//! network) into the chunk store of the cluster's storage nodes, and reports the result.
//!
//! - **Leases.** Up to `concurrency` ranges at once. When no range is waiting the worker
//!   asks again after 200 ms, backing off to 1 s. Each lease is heartbeated every
//!   `heartbeat-ms` to the coordinator that granted it; work on a lease the coordinator
//!   says ended (expired, done by another worker, job cancelled or failed, coordinator
//!   restarted) is stopped. A range that fails is reported with `FailRange` and the error
//!   text; the coordinator retries it, up to its attempt limit.
//! - **Coordinators** are tried in the order given; when the current one is unreachable
//!   the next is asked for work; one that is not the Raft leader answers with the
//!   leader's address (`bora-leader`) and new work is asked from it. Reports about a
//!   lease go to the coordinator that granted it, retried for a minute while it is
//!   unreachable — with one coordinator. With several, a lease belongs to one leadership:
//!   once another coordinator answers a lease request, the leases of the others are
//!   dropped (their work stopped), and a report whose coordinator is gone or no longer
//!   leads is dropped too; the new leader leases those ranges again.
//! - **Sources**: an NBD URL (`nbd://`, `nbd+unix://`) or an absolute image path (raw read
//!   directly, qcow2 through qemu-nbd, as the embedded mode), opened once per job and disk
//!   and shared by that disk's ranges; closed a minute after the job's last range. With
//!   `read-limit-bytes-per-s` every source reads through a token bucket.
//! - **Storage.** The chunk store is built by the caller's [`StoreFactoryFn`] from the
//!   coordinator's `Membership` answer, fetched again for every lease and rebuilt when it
//!   changes.
//! - **Shutdown** stops leasing, stops the ranges in progress and reports them failed
//!   ("worker shutting down"), so they are leased again at once (each uses one of its
//!   range's attempts, as an expiry would).

mod cache;
mod config;
mod coordinators;
mod error;
mod heartbeat;
mod range;
mod throttle;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tonic::Code;
use tracing::{debug, info, warn};

use bora_core::store::ChunkStore;
use bora_proto::coordinator::{
    FailRangeRequest, LeaseRequest, MembershipRequest, MembershipResponse, RangeLease,
};

pub use config::{WorkerConfig, WorkerConfigError};
pub use error::ClusterError;
pub use throttle::{ThrottledSource, TokenBucket};

use cache::JobCache;
use coordinators::{Coordinators, unreachable};

/// The storage nodes as the coordinator's `Membership` answer names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageMembership {
    /// Copies wanted of each chunk (fewer while there are fewer nodes).
    pub replicas: u32,
    /// Node id → address of its Storage service.
    pub nodes: BTreeMap<String, String>,
    /// The cluster's name ("" if none): every storage node must answer with it.
    pub cluster: String,
}

impl From<MembershipResponse> for StorageMembership {
    fn from(m: MembershipResponse) -> StorageMembership {
        StorageMembership {
            replicas: m.replicas,
            nodes: m.nodes.into_iter().map(|n| (n.id, n.addr)).collect(),
            cluster: m.cluster,
        }
    }
}

/// Builds the chunk store over the storage nodes of a membership.
pub type StoreFactoryFn = Arc<dyn Fn(&StorageMembership) -> Arc<dyn ChunkStore> + Send + Sync>;

/// How long a `Lease` call waits at the coordinator for a range (a long poll: a new job's
/// ranges reach idle workers at once).
const LEASE_WAIT_MS: u32 = 5_000;
/// First wait when no range is waiting and the coordinator answered at once (it does not
/// long-poll, or it is stopping); doubled up to [`IDLE_MAX`].
const IDLE_MIN: Duration = Duration::from_millis(200);
const IDLE_MAX: Duration = Duration::from_secs(1);
/// How often idle jobs' sources are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long shutdown waits for its failure reports.
const SHUTDOWN_REPORTS: Duration = Duration::from_secs(2);

/// What the lease loop, the heartbeats and the range tasks share.
struct Context {
    config: WorkerConfig,
    coordinators: Coordinators,
    jobs: Arc<JobCache>,
    stores: StoreFactoryFn,
    /// The last membership and the store built for it.
    store: Mutex<Option<(StorageMembership, Arc<dyn ChunkStore>)>>,
    /// Leases being worked on, by (coordinator, lease), with their task.
    active: Mutex<HashMap<(usize, u64), Option<AbortHandle>>>,
}

impl Context {
    fn active(&self) -> MutexGuard<'_, HashMap<(usize, u64), Option<AbortHandle>>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn active_leases(&self) -> Vec<(usize, u64)> {
        self.active().keys().copied().collect()
    }

    /// The lease's work ended by itself.
    fn forget_lease(&self, key: (usize, u64)) {
        self.active().remove(&key);
    }

    /// Stops the work on a lease; `false` if there was none.
    fn end_lease(&self, key: (usize, u64)) -> bool {
        match self.active().remove(&key) {
            Some(task) => {
                if let Some(t) = task {
                    t.abort();
                }
                true
            }
            None => false,
        }
    }

    /// Coordinator `c` answered a lease request as the leader: leases granted by any
    /// other coordinator belong to an earlier leadership and are void (the new leader
    /// leases their ranges again), so their work stops now instead of being reported in
    /// vain.
    fn void_leases_not_of(&self, c: usize) {
        let stale: Vec<(usize, u64)> = self
            .active()
            .keys()
            .filter(|(k, _)| *k != c)
            .copied()
            .collect();
        for key in stale {
            if self.end_lease(key) {
                info!(lease = key.1, coordinator = %self.coordinators.addr(key.0), "lease of an earlier leader dropped; the new leader leases its range again");
            }
        }
    }

    /// The chunk store for the membership coordinator `c` names now.
    async fn store_for(&self, c: usize) -> Result<Arc<dyn ChunkStore>, String> {
        let client = self.coordinators.client(c);
        let answer = match client {
            Some(mut client) => client.membership(MembershipRequest {}).await,
            None => return Err(format!("no coordinator {c}")),
        };
        let mut cached = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        match answer {
            Ok(m) => {
                let m = StorageMembership::from(m.into_inner());
                if let Some((old, store)) = cached.as_ref()
                    && *old == m
                {
                    return Ok(store.clone());
                }
                info!(
                    nodes = m.nodes.len(),
                    replicas = m.replicas,
                    "storage membership"
                );
                let store = (self.stores)(&m);
                *cached = Some((m, store.clone()));
                Ok(store)
            }
            Err(e) => match cached.as_ref() {
                Some((_, store)) => {
                    warn!(error = %e, "membership not refreshed; using the last one");
                    Ok(store.clone())
                }
                None => Err(format!(
                    "storage membership from coordinator {}: {e}",
                    self.coordinators.addr(c)
                )),
            },
        }
    }

    /// Asks coordinator `c` for a range.
    async fn lease_from(&self, c: usize) -> Result<Option<RangeLease>, tonic::Status> {
        self.coordinators
            .register(c, &self.config.id, self.config.heartbeat_ms)
            .await?;
        let Some(mut client) = self.coordinators.client(c) else {
            return Ok(None);
        };
        Ok(client
            .lease(LeaseRequest {
                worker: self.config.id.clone(),
                wait_ms: LEASE_WAIT_MS,
            })
            .await?
            .into_inner()
            .lease)
    }
}

/// Runs a worker until `shutdown` resolves (`Ok`), or until it cannot go on: a bad config,
/// or a coordinator that refuses this worker (its id).
pub async fn run(
    config: WorkerConfig,
    stores: StoreFactoryFn,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClusterError> {
    config.validate().map_err(ClusterError::Config)?;
    if let Some(dir) = &config.scratch_dir {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Scratch {
            path: dir.clone(),
            source,
        })?;
    }
    let ctx = Arc::new(Context {
        coordinators: Coordinators::new(&config.coordinators)?,
        jobs: Arc::new(JobCache::new(config.read_limit_bytes_per_s)),
        config,
        stores,
        store: Mutex::new(None),
        active: Mutex::new(HashMap::new()),
    });
    info!(worker = %ctx.config.id, coordinators = ?ctx.config.coordinators, concurrency = ctx.config.concurrency, "worker starting");
    // Boxed, so that dropping them below ends them (and aborts the ranges in progress).
    let mut work = Box::pin(lease_loop(ctx.clone()));
    let mut heartbeats = Box::pin(heartbeat::run(ctx.clone()));
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        () = &mut heartbeats => Ok(()),
        () = &mut shutdown => Ok(()),
    };
    // Stop the ranges in progress and give them back, so they are leased again at once.
    let held = ctx.active_leases();
    drop(work);
    drop(heartbeats);
    if !held.is_empty() {
        info!(
            leases = held.len(),
            "shutting down; giving back the ranges in progress"
        );
        let reports = held.into_iter().map(|(c, lease)| {
            let ctx = ctx.clone();
            async move {
                if let Some(mut client) = ctx.coordinators.client(c) {
                    let _ = client
                        .fail_range(FailRangeRequest {
                            lease_id: lease,
                            worker: ctx.config.id.clone(),
                            error: format!("worker {} is shutting down", ctx.config.id),
                        })
                        .await;
                }
            }
        });
        let _ = tokio::time::timeout(SHUTDOWN_REPORTS, futures::future::join_all(reports)).await;
    }
    info!(worker = %ctx.config.id, "worker stopped");
    result
}

/// Leases ranges and runs them, `concurrency` at once. Returns only on a fatal error; the
/// running ranges are stopped when it is dropped.
async fn lease_loop(ctx: Arc<Context>) -> Result<(), ClusterError> {
    let mut tasks = JoinSet::new();
    let mut idle = IDLE_MIN;
    let mut swept = Instant::now();
    loop {
        while tasks.try_join_next().is_some() {}
        if swept.elapsed() >= SWEEP_EVERY {
            ctx.jobs.sweep();
            swept = Instant::now();
        }
        if tasks.len() >= ctx.config.concurrency {
            tasks.join_next().await;
            continue;
        }
        let c = ctx.coordinators.current();
        let asked = Instant::now();
        let answer = ctx.lease_from(c).await;
        if answer.is_ok() {
            ctx.void_leases_not_of(c);
        }
        match answer {
            Ok(Some(lease)) => {
                idle = IDLE_MIN;
                let key = (c, lease.lease_id);
                ctx.active().insert(key, None);
                let task = tasks.spawn(range::work(ctx.clone(), c, lease));
                match ctx.active().get_mut(&key) {
                    Some(slot) => *slot = Some(task),
                    // Ended (or done) before its task was recorded.
                    None => task.abort(),
                }
                continue;
            }
            // The coordinator waited for work and had none: ask again at once.
            Ok(None) if asked.elapsed() >= Duration::from_millis(u64::from(LEASE_WAIT_MS / 2)) => {
                idle = IDLE_MIN;
                continue;
            }
            Ok(None) => {}
            Err(s) if unreachable(&s) => {
                debug!(coordinator = %ctx.coordinators.addr(c), error = %s, "no answer to a lease request");
                if !ctx.coordinators.follow_leader(c, &s) {
                    ctx.coordinators.unreachable(c);
                }
            }
            Err(s) if matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied) => {
                return Err(ClusterError::Refused {
                    addr: ctx.coordinators.addr(c).to_string(),
                    worker: ctx.config.id.clone(),
                    message: s.message().to_string(),
                });
            }
            Err(s) => {
                warn!(coordinator = %ctx.coordinators.addr(c), error = %s, "lease request failed")
            }
        }
        // Nothing to do: wait, or go on as soon as a range finishes.
        tokio::select! {
            () = tokio::time::sleep(idle) => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
        idle = (idle * 2).min(IDLE_MAX);
    }
}
