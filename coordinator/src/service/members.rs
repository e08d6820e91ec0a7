//! Online changes of the coordinators themselves (the Raft members of the replicated
//! catalog) and the catalog export, as the `AddCoordinator`, `RemoveCoordinator`,
//! `RaftView` and `ExportCatalog` RPCs ask them. Membership changes and the export are
//! leader-only: a follower answers `NotLeader` (UNAVAILABLE with `bora-leader`).

use std::time::Duration;

use tracing::{Instrument, info, info_span};

use bora_proto::coordinator as pb;

use super::error::RequestError;
use super::state::Coordinator;
use crate::config::check_host_port;
use crate::raft::NodeId;

/// How long `AddCoordinator` waits for the new member to catch up by default.
pub(super) const DEFAULT_CATCH_UP: Duration = Duration::from_secs(60);
/// The longest catch-up wait a request may ask for.
const MAX_CATCH_UP_MS: u32 = 3_600_000;

/// An `AddCoordinatorRequest`, checked.
pub(super) struct AddMember {
    pub(super) id: NodeId,
    pub(super) addr: String,
    pub(super) catch_up: Duration,
}

impl TryFrom<pb::AddCoordinatorRequest> for AddMember {
    type Error = RequestError;

    fn try_from(r: pb::AddCoordinatorRequest) -> Result<AddMember, RequestError> {
        let id = member_id(r.id)?;
        check_host_port(&format!("coordinator {id} address"), &r.addr)
            .map_err(RequestError::Invalid)?;
        let catch_up = match r.wait_ms {
            0 => DEFAULT_CATCH_UP,
            ms if ms <= MAX_CATCH_UP_MS => Duration::from_millis(u64::from(ms)),
            ms => {
                return Err(RequestError::Invalid(format!(
                    "wait_ms {ms} is above {MAX_CATCH_UP_MS}"
                )));
            }
        };
        Ok(AddMember {
            id,
            addr: r.addr,
            catch_up,
        })
    }
}

/// A Raft member id from the wire: a positive integer (the config's rule).
pub(super) fn member_id(id: u64) -> Result<NodeId, RequestError> {
    if id == 0 {
        return Err(RequestError::Invalid(
            "coordinator id 0: ids are positive integers".into(),
        ));
    }
    Ok(id)
}

impl Coordinator {
    /// Adds a coordinator as a learner, waits for it to catch up, makes it a voter;
    /// answers the leader's view after the change.
    pub(super) async fn add_coordinator(
        &self,
        m: AddMember,
    ) -> Result<pb::RaftStatus, RequestError> {
        let span = info_span!("add_coordinator", member = m.id, addr = %m.addr);
        async {
            self.raft.add_member(m.id, m.addr, m.catch_up).await?;
            info!("coordinator added as a voter");
            Ok(self.raft.status().into())
        }
        .instrument(span)
        .await
    }

    /// Removes a coordinator; answers this member's view after the change (when it
    /// removed itself it no longer leads).
    pub(super) async fn remove_coordinator(
        &self,
        id: NodeId,
    ) -> Result<pb::RaftStatus, RequestError> {
        let span = info_span!("remove_coordinator", member = id);
        async {
            self.raft.remove_member(id).await?;
            info!("coordinator removed");
            Ok(self.raft.status().into())
        }
        .instrument(span)
        .await
    }

    /// The whole catalog, read linearizably at one point.
    pub(super) async fn export_catalog(&self) -> Result<pb::ExportCatalogResponse, RequestError> {
        let (snapshots, hosts, storage, remote_json) = self
            .raft
            .read(|s| {
                let remotes = s.remotes.values().cloned().collect::<Vec<_>>();
                (s.list(None), s.hosts.clone(), s.storage.clone(), remotes)
            })
            .await?;
        let status = self.raft.status();
        let json = |what: &str, r: serde_json::Result<String>| {
            r.map_err(|e| RequestError::Internal(format!("encoding {what}: {e}")))
        };
        let snapshot_json = snapshots
            .iter()
            .map(|m| json(&format!("snapshot {}", m.id), serde_json::to_string(m)))
            .collect::<Result<Vec<_>, _>>()?;
        let host_json = hosts
            .values()
            .map(|h| json(&format!("host {}", h.name), serde_json::to_string(h)))
            .collect::<Result<Vec<_>, _>>()?;
        info!(
            snapshots = snapshot_json.len(),
            hosts = host_json.len(),
            applied = ?status.applied,
            "catalog exported"
        );
        Ok(pb::ExportCatalogResponse {
            snapshot_json,
            host_json,
            replicas: storage.replicas,
            nodes: storage
                .nodes
                .into_iter()
                .map(|(id, addr)| pb::StorageNode { id, addr })
                .collect(),
            term: status.term,
            applied: status.applied,
            remote_json,
        })
    }
}
