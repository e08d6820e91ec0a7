//! A cluster of catalog members in one process: real RocksDB stores in temp dirs, the
//! in-memory network with injected faults, members stopped and restarted on the same
//! store. Watches every member's metrics and records who led each term.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tempfile::TempDir;
use tokio::time::{Instant, sleep};

use crate::raft::command::{Applied, Command, Parent, Refusal};
use crate::raft::network::memory::Router;
use crate::raft::state::tests::meta;
use crate::raft::{CatalogState, NodeId, RaftCatalog, RaftCatalogConfig, RaftCatalogError};

pub(super) const WAIT: Duration = Duration::from_secs(20);

/// Term → the members that were leader in it (the invariant: at most one).
pub(super) type Leaders = Arc<Mutex<BTreeMap<u64, BTreeSet<NodeId>>>>;

pub(super) struct Cluster {
    pub(super) router: Router,
    pub(super) ids: Vec<NodeId>,
    dirs: BTreeMap<NodeId, TempDir>,
    pub(super) nodes: BTreeMap<NodeId, RaftCatalog>,
    tweak: fn(&mut RaftCatalogConfig),
    pub(super) leaders: Leaders,
}

fn fast(id: NodeId, dir: &std::path::Path) -> RaftCatalogConfig {
    let mut c = RaftCatalogConfig::new(id, format!("mem-{id}"), dir.join("raft"));
    c.heartbeat_ms = 50;
    c.election_min_ms = 300;
    c.election_max_ms = 600;
    c.propose_timeout_ms = 2_000;
    c
}

impl Cluster {
    /// Starts members `1..=n` and initializes the cluster on member 1.
    pub(super) async fn start(n: u64, seed: u64, tweak: fn(&mut RaftCatalogConfig)) -> Cluster {
        let mut c = Cluster {
            router: Router::new(seed),
            ids: (1..=n).collect(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            tweak,
            leaders: Arc::default(),
        };
        for id in c.ids.clone() {
            c.dirs.insert(id, TempDir::new().expect("temp dir"));
            c.open(id).await;
        }
        let members = c.ids.iter().map(|id| (*id, format!("mem-{id}"))).collect();
        c.nodes[&1].initialize(members).await.expect("initialize");
        c
    }

    pub(super) fn config(&self, id: NodeId) -> RaftCatalogConfig {
        let mut config = fast(id, self.dirs[&id].path());
        (self.tweak)(&mut config);
        config
    }

    async fn open(&mut self, id: NodeId) {
        let node = RaftCatalog::open(&self.config(id), self.router.network(id))
            .await
            .expect("open member");
        self.router.up(id, node.raft().clone());
        let leaders = self.leaders.clone();
        let mut rx = node.raft().metrics();
        tokio::spawn(async move {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.state == ServerState::Leader
                        && let Ok(mut l) = leaders.lock()
                    {
                        l.entry(m.current_term).or_default().insert(m.id);
                    }
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        self.nodes.insert(id, node);
    }

    /// Adds member `id` with a fresh store (not yet in the membership).
    pub(super) async fn spawn(&mut self, id: NodeId) {
        self.dirs.insert(id, TempDir::new().expect("temp dir"));
        self.ids.push(id);
        self.open(id).await;
    }

    /// Stops member `id` (as a crash would: its store stays as it was).
    pub(super) async fn stop(&mut self, id: NodeId) {
        self.router.down(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await.expect("shutdown");
        }
    }

    pub(super) async fn restart(&mut self, id: NodeId) {
        self.open(id).await;
    }

    /// The member that leads now, as the members that are up agree.
    pub(super) async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let leaders: Vec<(u64, NodeId)> = self
                .nodes
                .values()
                .map(|n| n.status())
                .filter(|s| s.state == "leader")
                .map(|s| (s.term, s.id))
                .collect();
            if let Some((_, id)) = leaders.iter().max() {
                return *id;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes through whichever member leads, retrying as a client would (after a
    /// leader change, a lost reply or a timeout). A retried snapshot that is refused as
    /// a duplicate was committed by an earlier try.
    pub(super) async fn propose(&self, command: Command) -> Result<Applied, Refusal> {
        let deadline = Instant::now() + WAIT;
        let mut tried = false;
        loop {
            let leader = self.leader().await;
            let Some(node) = self.nodes.get(&leader) else {
                continue;
            };
            match node.propose(command.clone()).await {
                Ok(a) => return Ok(a),
                Err(RaftCatalogError::Refused(Refusal::DuplicateSnapshot { id })) if tried => {
                    return Ok(Applied::Snapshot {
                        meta: meta("retried", &id),
                    });
                }
                Err(RaftCatalogError::Refused(r)) => return Err(r),
                Err(e) => {
                    tried = true;
                    assert!(
                        Instant::now() < deadline,
                        "not committed within {WAIT:?}: {e}"
                    );
                    sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Commits snapshot record `id` of `vm` (as the `CommitSnapshot` RPC would).
    pub(super) async fn commit_snapshot(&self, vm: &str, id: &str) {
        self.propose(Command::CommitSnapshot {
            meta: meta(vm, id),
            parent: Parent::AsGiven,
        })
        .await
        .expect("snapshot committed");
    }

    /// Waits until every member that is up has applied the leader's last entry, and
    /// returns the (identical) state they hold.
    pub(super) async fn converged(&self) -> CatalogState {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            let target = self.nodes[&leader].status().last_log;
            let all = self.nodes.values().all(|n| {
                let s = n.status();
                s.applied == target && s.last_log == target
            });
            if all {
                let states: Vec<CatalogState> = self
                    .nodes
                    .values()
                    .map(|n| n.read_local(|s| s.clone()))
                    .collect();
                if states.windows(2).all(|w| w[0] == w[1]) {
                    return states.into_iter().next().unwrap_or_default();
                }
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge within {WAIT:?}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that no term had two leaders.
    pub(super) fn assert_one_leader_per_term(&self) {
        let leaders = self.leaders.lock().expect("leaders lock");
        assert!(!leaders.is_empty(), "no leader was ever seen");
        for (term, ids) in leaders.iter() {
            assert_eq!(ids.len(), 1, "term {term} had leaders {ids:?}");
        }
    }

    pub(super) async fn shutdown(mut self) {
        for id in self.ids.clone() {
            self.stop(id).await;
        }
    }
}

/// Every snapshot id in a state.
pub(super) fn snapshot_ids(s: &CatalogState) -> BTreeSet<String> {
    s.list(None).into_iter().map(|m| m.id.to_string()).collect()
}
