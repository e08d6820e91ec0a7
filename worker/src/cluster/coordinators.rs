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

/// This machine's name, if the kernel tells it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
