//! [`RaftCatalog`]: the replicated catalog as the coordinator service uses it — open,
//! propose a command and get what it did, read linearizably, change the membership,
//! report the cluster's status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::metrics::WaitError;
use openraft::{ChangeMembers, RaftNetworkFactory, ServerState, SnapshotPolicy};
use tracing::{Instrument, info, info_span};

use super::command::{Applied, Command};
use super::error::RaftCatalogError;
use super::state::CatalogState;
use super::store::{self, ClosedWatch, StateReader};
use super::{Node, NodeId, Raft, TypeConfig};

/// How a member runs. Times are milliseconds.
#[derive(Clone, Debug)]
pub struct RaftCatalogConfig {
    /// This member's id (unique in the cluster, never reused for another data dir).
    pub id: NodeId,
    /// The address of this member's `Raft` gRPC service, as the others reach it.
    pub addr: String,
    /// The RocksDB directory (`data-dir/raft`).
    pub dir: PathBuf,
    pub heartbeat_ms: u64,
    /// A follower that heard nothing from a leader for a random time in this range
    /// starts an election.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// A snapshot is built every this many applied entries; the log before it is purged
    /// except the last `keep_logs` entries (so a briefly absent member catches up from
    /// the log, a long-gone one from the snapshot).
    pub snapshot_every: u64,
    pub keep_logs: u64,
    /// How long [`RaftCatalog::propose`] waits for a commit before answering
    /// [`RaftCatalogError::Uncertain`].
    pub propose_timeout_ms: u64,
}

impl RaftCatalogConfig {
    /// Defaults for a LAN: heartbeats every 100 ms, elections after 500–1000 ms of
    /// silence (a dead leader is replaced in about a second), a snapshot every 10,000
    /// entries keeping 1,000.
    pub fn new(id: NodeId, addr: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        RaftCatalogConfig {
            id,
            addr: addr.into(),
            dir: dir.into(),
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_every: 10_000,
            keep_logs: 1_000,
            propose_timeout_ms: 10_000,
        }
    }

    fn openraft(&self) -> Result<openraft::Config, RaftCatalogError> {
        openraft::Config {
            cluster_name: "bora-catalog".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_logs,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftCatalogError::Config(e.to_string()))
    }
}

/// One member's view of the cluster (`bora status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub state: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// Index of this member's last log entry.
    pub last_log: Option<u64>,
    pub applied: Option<u64>,
    /// Last entry covered by this member's latest snapshot.
    pub snapshot: Option<u64>,
    /// Last entry purged from this member's log.
    pub purged: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// A member as the cluster's membership records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: NodeId,
    pub addr: String,
    /// A voter (false: a learner, still catching up).
    pub voter: bool,
    /// The last log index the leader knows this member holds (only on the leader).
    pub matched: Option<u64>,
}

/// A member of the replicated catalog. See the module documentation of `raft`.
#[derive(Clone)]
pub struct RaftCatalog {
    id: NodeId,
    raft: Raft,
    state: StateReader,
    closed: Arc<ClosedWatch>,
    propose_timeout: Duration,
}

impl RaftCatalog {
    /// Opens the store in `config.dir` and starts this member; it talks to the others
    /// through `network`. A new member waits to be added by the leader (or for
    /// [`Self::initialize`] on a new cluster).
    pub async fn open<N: RaftNetworkFactory<TypeConfig>>(
        config: &RaftCatalogConfig,
        network: N,
    ) -> Result<RaftCatalog, RaftCatalogError> {
        let raft_config = Arc::new(config.openraft()?);
        let dir = config.dir.clone();
        let (log, sm) = store::blocking(move || store::open(&dir)).await?;
        let state = sm.reader();
        let closed = Arc::new(sm.closed());
        let raft = Raft::new(config.id, raft_config, network, log, sm)
            .instrument(info_span!("raft", id = config.id))
            .await?;
        info!(id = config.id, addr = %config.addr, dir = %config.dir.display(), "raft member started");
        Ok(RaftCatalog {
            id: config.id,
            raft,
            state,
            closed,
            propose_timeout: Duration::from_millis(config.propose_timeout_ms),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The running member, for serving the `Raft` gRPC service.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes a new cluster of `members` (id → address). Call on one member of a fresh
    /// cluster; a cluster that is already initialized is left as it is (`Ok`).
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<(), RaftCatalogError> {
        let nodes: BTreeMap<NodeId, Node> = members
            .into_iter()
            .map(|(id, addr)| (id, Node { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Proposes `command`: answers once a majority committed it and the leader applied
    /// it. `NotLeader` on a follower; `Refused` when the state machine refused it.
    pub async fn propose(&self, command: Command) -> Result<Applied, RaftCatalogError> {
        let span = info_span!("propose", id = self.id);
        let write = self.raft.client_write(command).instrument(span);
        let response = tokio::time::timeout(self.propose_timeout, write)
            .await
            .map_err(|_| RaftCatalogError::Uncertain(self.propose_timeout))?
            .map_err(|e| self.locate_leader(e.into()))?;
        Ok(response.data?)
    }

    /// Reads the catalog linearizably (read-index on the leader: see the module
    /// documentation). `NotLeader` on a follower.
    pub async fn read<T>(&self, f: impl FnOnce(&CatalogState) -> T) -> Result<T, RaftCatalogError> {
        tokio::time::timeout(self.propose_timeout, self.raft.ensure_linearizable())
            .await
            .map_err(|_| {
                RaftCatalogError::NoQuorum(format!("no answer within {:?}", self.propose_timeout))
            })?
            .map_err(|e| self.locate_leader(e.into()))?;
        Ok(self.read_local(f))
    }

    /// Completes a `NotLeader` that lacks the leader's address from this member's
    /// membership, when it knows who leads.
    fn locate_leader(&self, e: RaftCatalogError) -> RaftCatalogError {
        let RaftCatalogError::NotLeader { leader: None } = e else {
            return e;
        };
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|id| {
            let node = m.membership_config.membership().get_node(&id)?.clone();
            Some((id, node.addr))
        });
        RaftCatalogError::NotLeader { leader }
    }

    /// `Ok` if this member believes it leads (no quorum round: for routing requests
    /// that then propose or read linearizably anyway), else `NotLeader` with the leader
    /// it knows.
    pub fn ensure_leading(&self) -> Result<(), RaftCatalogError> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.id) && m.state == ServerState::Leader {
            return Ok(());
        }
        Err(self.locate_leader(RaftCatalogError::NotLeader { leader: None }))
    }

    /// Watches whether this member leads, and in which term.
    pub fn leadership(&self) -> LeadershipWatch {
        LeadershipWatch {
            rx: self.raft.metrics(),
            id: self.id,
        }
    }

    /// Reads this member's applied state as it is: possibly behind the leader.
    pub fn read_local<T>(&self, f: impl FnOnce(&CatalogState) -> T) -> T {
        f(&self.state.read().state)
    }

    /// Whether this member's store holds a cluster already (a log or a vote): false for
    /// an empty `data-dir/raft`, which must be initialized (a new cluster) or added by
    /// the leader (a new member).
    pub async fn is_initialized(&self) -> Result<bool, RaftCatalogError> {
        Ok(self.raft.is_initialized().await?)
    }

    /// Adds a coordinator: first as a learner, then, once the leader has replicated to it
    /// everything up to the entry that added it (from the log or a snapshot), as a voter.
    /// Leader only. Adding a voter again at the same address changes nothing; an id
    /// already there at another address is refused. `catch_up` bounds the wait: a member
    /// that has not caught up by then stays a learner
    /// ([`RaftCatalogError::NotCaughtUp`]).
    pub async fn add_member(
        &self,
        id: NodeId,
        addr: String,
        catch_up: Duration,
    ) -> Result<(), RaftCatalogError> {
        self.ensure_leading()?;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if let Some(node) = membership.get_node(&id) {
            if node.addr != addr {
                return Err(RaftCatalogError::MemberConflict {
                    id,
                    addr: node.addr.clone(),
                });
            }
            if membership.voter_ids().any(|v| v == id) {
                info!(member = id, addr = %addr, "already a voter");
                return Ok(());
            }
        }
        info!(member = id, addr = %addr, "adding raft member as a learner");
        let added = self
            .raft
            .add_learner(id, Node { addr: addr.clone() }, false)
            .await
            .map_err(|e| self.locate_leader(e.into()))?;
        self.wait_caught_up(id, &addr, added.log_id.index, catch_up)
            .await?;
        info!(member = id, addr = %addr, "learner caught up; making it a voter");
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.locate_leader(e.into()))?;
        Ok(())
    }

    /// Waits until the leader knows member `id` holds the log up to `index`.
    async fn wait_caught_up(
        &self,
        id: NodeId,
        addr: &str,
        index: u64,
        limit: Duration,
    ) -> Result<(), RaftCatalogError> {
        let mut metrics = self.raft.metrics();
        let waiting = async {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let Some(replication) = m.replication.as_ref() else {
                        // No longer the leader.
                        return Err(RaftCatalogError::NotLeader { leader: None });
                    };
                    if replication
                        .get(&id)
                        .copied()
                        .flatten()
                        .is_some_and(|l| l.index >= index)
                    {
                        return Ok(());
                    }
                }
                metrics
                    .changed()
                    .await
                    .map_err(|_| RaftCatalogError::Stopped("shutting down".into()))?;
            }
        };
        match tokio::time::timeout(limit, waiting).await {
            Ok(r) => r.map_err(|e| self.locate_leader(e)),
            Err(_) => Err(RaftCatalogError::NotCaughtUp {
                id,
                addr: addr.to_string(),
                waited: limit,
            }),
        }
    }

    /// Removes a coordinator (a voter or a learner) from the membership. Leader only.
    /// The last voter is never removed. Removing the leader itself works: it steps down
    /// once the new membership is committed, and the others elect a leader.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftCatalogError> {
        self.ensure_leading()?;
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(RaftCatalogError::UnknownMember { id });
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(RaftCatalogError::LastVoter { id });
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        info!(member = id, "removing raft member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.locate_leader(e.into()))?;
        Ok(())
    }

    /// Builds a snapshot now (the log before it is purged as the config says).
    pub async fn snapshot_now(&self) -> Result<(), RaftCatalogError> {
        Ok(self.raft.trigger().snapshot().await?)
    }

    /// This member's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index),
            })
            .collect();
        ClusterStatus {
            id: self.id,
            state,
            term: m.current_term,
            leader: m.current_leader,
            last_log: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            members,
        }
    }

    /// Waits until this member has applied `index` (tests, and a follower that wants
    /// its own reads to include a write it saw committed).
    pub async fn wait_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), RaftCatalogError> {
        match self
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "wait_applied")
            .await
        {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout(..)) => Err(RaftCatalogError::Behind { index, timeout }),
            Err(WaitError::ShuttingDown) => Err(RaftCatalogError::Stopped("shutting down".into())),
        }
    }

    /// Stops this member and waits (up to 10 s) until its store is closed, so the same
    /// directory can be opened again (its data stays).
    pub async fn shutdown(&self) -> Result<(), RaftCatalogError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftCatalogError::Stopped(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.closed.is_closed() {
            if tokio::time::Instant::now() > deadline {
                return Err(RaftCatalogError::Stopped(
                    "stopped, but its store is still open after 10 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Whether a member leads, and in which term ([`RaftCatalog::leadership`]).
pub struct LeadershipWatch {
    rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Node>>,
    id: NodeId,
}

impl LeadershipWatch {
    /// The term this member now leads in; `None` if it does not lead.
    pub fn term(&mut self) -> Option<u64> {
        let m = self.rx.borrow_and_update();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id))
            .then_some(m.current_term)
    }

    /// Waits for any change of the member's state; `false` once it has stopped.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}
