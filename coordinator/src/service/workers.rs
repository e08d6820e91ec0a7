//! The workers the coordinator has heard from, and the cluster status built from them,
//! the storage membership and the jobs. Every worker request counts as a sign of life; a
//! worker silent for 3 lease periods is shown as down (its leases expired long before).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::jobs::JobView;
use super::state::{Coordinator, Core};
use crate::lease::WorkerId;

/// Workers remembered; beyond this the one silent longest is forgotten.
const MAX_WORKERS: usize = 10_000;
/// Lease periods of silence after which a worker is shown as down.
const DOWN_AFTER_LEASES: u64 = 3;

#[derive(Clone, Debug, Default)]
pub(super) struct WorkerRecord {
    pid: u32,
    hostname: String,
    /// Where its last request came from.
    addr: String,
    last_seen_ms: u64,
}

/// One member of the cluster as `Status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberView {
    pub(super) role: &'static str,
    pub(super) id: String,
    pub(super) addr: String,
    pub(super) pid: u32,
    pub(super) state: &'static str,
    pub(super) hostname: String,
    pub(super) leases: u32,
    /// Storage nodes: chunks stored, from the probe.
    pub(super) chunks: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StatusView {
    pub(super) id: String,
    pub(super) members: Vec<MemberView>,
    pub(super) replicas: u32,
    pub(super) jobs: Vec<JobView>,
}

impl Core {
    /// Notes that `worker` was heard from at `now`.
    pub(super) fn touch(&mut self, worker: &WorkerId, peer: Option<SocketAddr>, now: u64) {
        if !self.workers.contains_key(worker) && self.workers.len() >= MAX_WORKERS {
            let oldest = self
                .workers
                .iter()
                .min_by_key(|(_, w)| w.last_seen_ms)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.workers.remove(&oldest);
            }
        }
        let rec = self.workers.entry(worker.clone()).or_default();
        rec.last_seen_ms = now;
        if let Some(peer) = peer {
            rec.addr = peer.to_string();
        }
    }
}

impl Coordinator {
    pub(super) fn register_worker(
        &self,
        worker: &WorkerId,
        pid: u32,
        hostname: String,
        peer: Option<SocketAddr>,
    ) {
        let now = self.clock.now_ms();
        let mut core = self.core();
        core.touch(worker, peer, now);
        if let Some(rec) = core.workers.get_mut(worker) {
            rec.pid = pid;
            rec.hostname = hostname.clone();
        }
        tracing::info!(worker = %worker, pid, hostname = %hostname, "worker registered");
    }

    pub(super) fn status(&self) -> StatusView {
        let now = self.clock.now_ms();
        let down_after = self.lease_ms.saturating_mul(DOWN_AFTER_LEASES);
        let mut members = vec![MemberView {
            role: "coordinator",
            id: self.id.clone(),
            addr: self.addr.to_string(),
            pid: std::process::id(),
            state: "up",
            hostname: hostname(),
            leases: 0,
            chunks: 0,
        }];
        {
            let core = self.core();
            let mut held: BTreeMap<&WorkerId, u32> = BTreeMap::new();
            for l in core.table.active_leases() {
                *held.entry(&l.worker).or_default() += 1;
            }
            for (id, w) in &core.workers {
                let up = now.saturating_sub(w.last_seen_ms) <= down_after;
                members.push(MemberView {
                    role: "worker",
                    id: id.0.clone(),
                    addr: w.addr.clone(),
                    pid: w.pid,
                    state: if up { "up" } else { "down" },
                    hostname: w.hostname.clone(),
                    leases: held.get(id).copied().unwrap_or(0),
                    chunks: 0,
                });
            }
        }
        let membership = self.storage.view();
        for (id, addr) in membership.nodes {
            members.push(MemberView {
                role: "storage-node",
                id,
                addr,
                pid: 0,
                // Probed by the Status RPC (`probe`); "up" until then.
                state: "up",
                hostname: String::new(),
                leases: 0,
                chunks: 0,
            });
        }
        StatusView {
            id: self.id.clone(),
            members,
            replicas: membership.replicas,
            jobs: self.job_views(),
        }
    }
}

/// This machine's name, if the kernel tells it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
