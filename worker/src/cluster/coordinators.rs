//! The coordinators a worker talks to: one gRPC channel to each (connected lazily), the
//! one new work is asked from, and the move to the next when it is unreachable. Reports
//! about a lease always go to the coordinator that granted it (lease numbers mean nothing
//! to another one).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{info, warn};

use bora_proto::coordinator::RegisterWorkerRequest;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;

use super::error::ClusterError;

pub(super) type Client = CoordinatorClient<Channel>;

/// How long connecting to a coordinator may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message: a range's result names every chunk of the range.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Whether a call failed because the coordinator could not be reached (try again or
/// elsewhere), rather than because it answered no.
pub(super) fn unreachable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
    )
}

pub(super) struct Coordinators {
    addrs: Vec<String>,
    clients: Vec<Client>,
    /// The coordinator new work is asked from.
    current: AtomicUsize,
    /// Whether each coordinator has been told who this worker is since it was last
    /// unreachable.
    registered: Vec<AtomicBool>,
}

impl Coordinators {
    pub(super) fn new(addrs: &[String]) -> Result<Coordinators, ClusterError> {
        let clients = addrs
            .iter()
            .map(|a| {
                let endpoint = Endpoint::from_shared(format!("http://{a}")).map_err(|e| {
                    ClusterError::Endpoint {
                        addr: a.clone(),
                        reason: e.to_string(),
                    }
                })?;
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT)
                    .connect_lazy();
                Ok(CoordinatorClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        Ok(Coordinators {
            addrs: addrs.to_vec(),
            registered: addrs.iter().map(|_| AtomicBool::new(false)).collect(),
            clients,
            current: AtomicUsize::new(0),
        })
    }

    pub(super) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub(super) fn client(&self, i: usize) -> Option<Client> {
        self.clients.get(i).cloned()
    }

    pub(super) fn addr(&self, i: usize) -> &str {
        self.addrs.get(i).map_or("?", String::as_str)
    }

    /// Coordinator `i` could not be reached: it must be told who this worker is again,
    /// and if it was the current one, the next one is tried.
    pub(super) fn unreachable(&self, i: usize) {
        if let Some(r) = self.registered.get(i) {
            r.store(false, Ordering::Relaxed);
        }
        let next = (i + 1) % self.addrs.len().max(1);
        if self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && next != i
        {
            warn!(from = %self.addr(i), to = %self.addr(next), "coordinator unreachable; trying the next one");
        }
    }

    /// Coordinator `i` was found unreachable ([`Self::unreachable`] is called): whether
    /// new work is now asked from another coordinator (there are several and `i` is not
    /// the current one).
    pub(super) fn gone(&self, i: usize) -> bool {
        self.unreachable(i);
        self.addrs.len() > 1 && self.current() != i
    }

    /// Coordinator `i` answered that it is not the leader (UNAVAILABLE with a
    /// `bora-leader: ID@ADDR` entry): new work is asked from the leader when it is in the
    /// list. False when the answer names no leader of the list (then try the next one).
    pub(super) fn follow_leader(&self, i: usize, s: &Status) -> bool {
        let Some(addr) = leader_addr(s) else {
            return false;
        };
        let Some(to) = self.addrs.iter().position(|a| bare(a) == addr) else {
            warn!(leader = %addr, "the leader is not among this worker's coordinators");
            return false;
        };
        if to != i
            && self
                .current
                .compare_exchange(i, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            info!(from = %self.addr(i), to = %self.addr(to), "following the coordinators' leader");
        }
        to != i
    }

    /// Tells coordinator `i` who this worker is, unless it already knows. Warns when the
    /// heartbeat period does not fit the coordinator's leases.
    pub(super) async fn register(
        &self,
        i: usize,
        worker: &str,
        heartbeat_ms: u64,
    ) -> Result<(), Status> {
        let Some(flag) = self.registered.get(i) else {
            return Ok(());
        };
        if flag.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(mut client) = self.client(i) else {
            return Ok(());
        };
        let answer = client
            .register_worker(RegisterWorkerRequest {
                worker: worker.to_string(),
                pid: std::process::id(),
                hostname: hostname(),
            })
            .await?
            .into_inner();
        if heartbeat_ms.saturating_mul(3) > answer.lease_ms {
            warn!(
                coordinator = %answer.coordinator, lease_ms = answer.lease_ms, heartbeat_ms,
                "heartbeats are too far apart for the coordinator's leases; leases may expire while the worker is busy"
            );
        }
        info!(coordinator = %answer.coordinator, addr = %self.addr(i), "registered");
        flag.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The metadata entry a coordinator that is not the leader answers with.
const LEADER_METADATA: &str = "bora-leader";

/// The leader's address in a `bora-leader: ID@ADDR` entry of `s`.
pub(super) fn leader_addr(s: &Status) -> Option<&str> {
    if s.code() != Code::Unavailable {
        return None;
    }
    let v = s.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    let (_, addr) = v.split_once('@')?;
    Some(bare(addr))
}

fn bare(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr)
        .trim_end_matches('/')
}

/// This machine's name, if the kernel tells it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_not_leader_answer_moves_new_work_to_the_leader() {
        let addrs = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let c = Coordinators::new(&addrs).unwrap();
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(LEADER_METADATA, "2@127.0.0.1:2".parse().unwrap());
        assert_eq!(leader_addr(&s), Some("127.0.0.1:2"));
        assert!(c.follow_leader(0, &s));
        assert_eq!(c.current(), 1);
        assert!(!c.follow_leader(0, &Status::unavailable("no leader yet")));
        let mut elsewhere = Status::unavailable("not the leader");
        elsewhere
            .metadata_mut()
            .insert(LEADER_METADATA, "3@127.0.0.1:3".parse().unwrap());
        assert!(!c.follow_leader(1, &elsewhere), "not in the list");
    }
}
