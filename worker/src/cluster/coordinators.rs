//! The coordinators a worker talks to: one gRPC channel to each (connected lazily), the
//! one new work is asked from, and the move to the next when it is unreachable (or to
//! the leader a coordinator names, learned if it was not configured). Reports
//! about a lease always go to the coordinator that granted it (lease numbers mean nothing
//! to another one).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
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

/// One coordinator: its address, its channel, and whether it knows this worker.
struct Member {
    addr: String,
    client: Client,
    /// Whether it has been told who this worker is since it was last unreachable.
    registered: AtomicBool,
}

pub(super) struct Coordinators {
    /// The configured coordinators, then any leader one of them named that was not
    /// configured (a coordinator added to the cluster later); never shrinks, so an
    /// index names the same coordinator for the worker's life.
    members: RwLock<Vec<Arc<Member>>>,
    /// The coordinator new work is asked from.
    current: AtomicUsize,
}

fn member(addr: &str) -> Result<Member, ClusterError> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|e| ClusterError::Endpoint {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    Ok(Member {
        addr: addr.to_string(),
        client: CoordinatorClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        registered: AtomicBool::new(false),
    })
}

impl Coordinators {
    pub(super) fn new(addrs: &[String]) -> Result<Coordinators, ClusterError> {
        let members = addrs
            .iter()
            .map(|a| member(a).map(Arc::new))
            .collect::<Result<Vec<_>, ClusterError>>()?;
        Ok(Coordinators {
            members: RwLock::new(members),
            current: AtomicUsize::new(0),
        })
    }

    fn members(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Member>>> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, i: usize) -> Option<Arc<Member>> {
        self.members().get(i).cloned()
    }

    fn len(&self) -> usize {
        self.members().len()
    }

    pub(super) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub(super) fn client(&self, i: usize) -> Option<Client> {
        self.get(i).map(|m| m.client.clone())
    }

    pub(super) fn addr(&self, i: usize) -> String {
        self.get(i).map_or_else(|| "?".into(), |m| m.addr.clone())
    }

    /// Coordinator `i` could not be reached: it must be told who this worker is again,
    /// and if it was the current one, the next one is tried.
    pub(super) fn unreachable(&self, i: usize) {
        if let Some(m) = self.get(i) {
            m.registered.store(false, Ordering::Relaxed);
        }
        let next = (i + 1) % self.len().max(1);
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
        self.len() > 1 && self.current() != i
    }

    /// Coordinator `i` answered that it is not the leader (UNAVAILABLE with a
    /// `bora-leader: ID@ADDR` entry): new work is asked from the leader. A leader that is
    /// not among the coordinators this worker knows (one added to the cluster after the
    /// worker started) is added to them. False when the answer names no leader, or `i`
    /// itself (then try the next one).
    pub(super) fn follow_leader(&self, i: usize, s: &Status) -> bool {
        let Some(addr) = leader_addr(s) else {
            return false;
        };
        let known = self.members().iter().position(|m| bare(&m.addr) == addr);
        let to = match known {
            Some(to) => to,
            None => {
                let new = match member(addr) {
                    Ok(m) => Arc::new(m),
                    Err(e) => {
                        warn!(leader = %addr, error = %e, "the leader's address is not usable");
                        return false;
                    }
                };
                let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
                match members.iter().position(|m| bare(&m.addr) == addr) {
                    Some(to) => to,
                    None => {
                        members.push(new);
                        info!(leader = %addr, "the leader is a coordinator this worker did not know; added");
                        members.len() - 1
                    }
                }
            }
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
        let Some(m) = self.get(i) else {
            return Ok(());
        };
        if m.registered.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut client = m.client.clone();
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
        m.registered.store(true, Ordering::Relaxed);
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
        // A leader this worker was not configured with is learned and followed.
        assert!(c.follow_leader(1, &elsewhere));
        assert_eq!(c.current(), 2);
        assert_eq!(c.addr(2), "127.0.0.1:3");
        assert!(!c.follow_leader(2, &elsewhere), "already there");
    }
}
