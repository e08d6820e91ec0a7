//! An in-process network for cluster tests. Every message is encoded and decoded as on
//! the wire, and can be lost (request or reply), delayed, or cut by a partition; a
//! member can be taken down and brought back (a restart). Faults are drawn from a seeded
//! generator, so a failing run can be replayed with its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LinkError;
use crate::raft::codec::{decode, encode};
use crate::raft::{Node, NodeId, Raft, TypeConfig};

struct Routes {
    up: BTreeMap<NodeId, Raft>,
    /// Directed links that lose every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Chance of losing a message, per thousand.
    loss_permille: u64,
    /// Each message is delayed by a time drawn from this range (ms).
    delay_ms: (u64, u64),
    rng: u64,
    /// Messages delivered / lost, for tests to check faults happened.
    delivered: u64,
    lost: u64,
}

impl Routes {
    /// xorshift64*: small, seeded, good enough to pick faults.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = self.delay_ms;
        let ms = if hi > lo {
            lo + self.next() % (hi - lo + 1)
        } else {
            lo
        };
        Duration::from_millis(ms)
    }

    fn lose(&mut self, from: NodeId, to: NodeId) -> bool {
        let lost = self.cut.contains(&(from, to))
            || (self.loss_permille > 0 && self.next() % 1000 < self.loss_permille);
        if lost {
            self.lost += 1;
        } else {
            self.delivered += 1;
        }
        lost
    }
}

/// The switchboard every member of a test cluster sends through.
#[derive(Clone)]
pub struct Router {
    routes: Arc<Mutex<Routes>>,
}

impl Router {
    pub fn new(seed: u64) -> Router {
        Router {
            routes: Arc::new(Mutex::new(Routes {
                up: BTreeMap::new(),
                cut: BTreeSet::new(),
                loss_permille: 0,
                delay_ms: (0, 0),
                rng: seed | 1,
                delivered: 0,
                lost: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The network `id` sends through.
    pub fn network(&self, id: NodeId) -> MemoryNetwork {
        MemoryNetwork {
            router: self.clone(),
            from: id,
        }
    }

    /// Member `id` is up and receives messages.
    pub fn up(&self, id: NodeId, raft: Raft) {
        self.lock().up.insert(id, raft);
    }

    /// Member `id` is down: messages to it are lost.
    pub fn down(&self, id: NodeId) {
        self.lock().up.remove(&id);
    }

    /// Cuts every link between `side` and the other members, both ways.
    pub fn isolate(&self, side: &[NodeId], all: &[NodeId]) {
        let mut r = self.lock();
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                r.cut.insert((*a, *b));
                r.cut.insert((*b, *a));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    pub fn set_loss(&self, permille: u64) {
        self.lock().loss_permille = permille.min(1000);
    }

    pub fn set_delay(&self, min_ms: u64, max_ms: u64) {
        self.lock().delay_ms = (min_ms, max_ms.max(min_ms));
    }

    /// `(delivered, lost)` messages so far.
    pub fn counts(&self) -> (u64, u64) {
        let r = self.lock();
        (r.delivered, r.lost)
    }

    /// Sends `req` from `from` to `to`, through `call` on the receiver; the request and
    /// the reply each can be lost or delayed.
    async fn deliver<Req, Resp, E, F, Fut>(
        &self,
        from: NodeId,
        to: NodeId,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
        E: std::error::Error + Serialize + DeserializeOwned,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        let unreachable = |e: LinkError| RPCError::Unreachable(Unreachable::new(&e));
        let wire = encode(&req).map_err(|e| unreachable(e.into()))?;
        let (delay, lost) = {
            let mut r = self.lock();
            (r.delay(), r.lose(from, to))
        };
        tokio::time::sleep(delay).await;
        if lost {
            return Err(unreachable(LinkError::Lost { from, to }));
        }
        let target = self.lock().up.get(&to).cloned();
        let Some(target) = target else {
            return Err(unreachable(LinkError::Down(to)));
        };
        let req: Req = decode(&wire).map_err(|e| unreachable(e.into()))?;
        let reply = call(target, req).await;
        let wire = encode(&reply).map_err(|e| unreachable(e.into()))?;
        let (delay, lost) = {
            let mut r = self.lock();
            (r.delay(), r.lose(to, from))
        };
        tokio::time::sleep(delay).await;
        if lost {
            return Err(unreachable(LinkError::Lost { from: to, to: from }));
        }
        let reply: Result<Resp, RaftError<NodeId, E>> =
            decode(&wire).map_err(|e| unreachable(e.into()))?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

/// One member's sending side: hands out a client per target.
pub struct MemoryNetwork {
    router: Router,
    from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for MemoryNetwork {
    type Network = MemoryClient;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> MemoryClient {
        MemoryClient {
            router: self.router.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// A link from one member to another.
pub struct MemoryClient {
    router: Router,
    from: NodeId,
    to: NodeId,
}

impl RaftNetwork<TypeConfig> for MemoryClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.router
            .deliver(self.from, self.to, rpc, |raft, rpc| async move {
                raft.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.router
            .deliver(self.from, self.to, rpc, |raft, rpc| async move {
                raft.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.router
            .deliver(self.from, self.to, rpc, |raft, rpc| async move {
                raft.vote(rpc).await
            })
            .await
    }
}
