//! The `Coordinator` gRPC service: each call checks its request ([`super::wire`]), asks
//! the coordinator, and maps a failure to a status ([`super::error::to_status`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use bora_proto::coordinator as pb;
use bora_proto::coordinator::coordinator_server::{
    Coordinator as CoordinatorRpc, CoordinatorServer,
};

use super::error::{RequestError, to_status};
use super::jobs::JobRequest;
use super::leases::RangeReport;
use super::members::{AddMember, member_id};
use super::state::Coordinator;
use super::wire;
use crate::config::check_node;
use crate::planner::split_disk;
use bora_core::snapshot::check_name;

/// Largest message accepted or sent: a range's result names every chunk of the range.
pub(super) const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub(super) struct CoordinatorService {
    c: Arc<Coordinator>,
}

impl CoordinatorService {
    pub(super) fn server(c: Arc<Coordinator>) -> CoordinatorServer<CoordinatorService> {
        CoordinatorServer::new(CoordinatorService { c })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

type Answer<T> = Result<Response<T>, Status>;

impl CoordinatorService {
    /// A membership as sent: the nodes, and the cluster name they must answer with.
    fn membership_answer(&self, view: super::storage::MembershipView) -> pb::MembershipResponse {
        pb::MembershipResponse {
            cluster: self.c.cluster.clone(),
            ..view.into()
        }
    }
}

fn answer<T>(r: Result<T, RequestError>) -> Answer<T> {
    r.map(Response::new).map_err(to_status)
}

fn snapshot_json(meta: &bora_core::snapshot::SnapshotMeta) -> Result<String, RequestError> {
    serde_json::to_string(meta)
        .map_err(|e| RequestError::Internal(format!("encoding snapshot {}: {e}", meta.id)))
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn plan_disk(
        &self,
        request: Request<pb::PlanDiskRequest>,
    ) -> Answer<pb::PlanDiskResponse> {
        let r = request.into_inner();
        answer(
            wire::disk_geometry("disk", r.disk_size, r.chunk_size).map(|()| {
                let range_bytes = self.c.core().table.config().range_bytes;
                pb::PlanDiskResponse {
                    ranges: split_disk(r.disk_size, r.chunk_size, range_bytes)
                        .into_iter()
                        .map(|x| pb::ByteRange {
                            offset: x.offset,
                            length: x.length,
                        })
                        .collect(),
                }
            }),
        )
    }

    async fn commit_snapshot(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Answer<pb::CommitSnapshotResponse> {
        let r = async {
            let meta = wire::snapshot_from_json(&request.into_inner().snapshot_json)?;
            let meta = self
                .c
                .commit_record(meta, crate::raft::command::Parent::AsGiven)
                .await?;
            Ok(pb::CommitSnapshotResponse {
                id: meta.id.to_string(),
            })
        };
        answer(r.await)
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Answer<pb::ListSnapshotsResponse> {
        let r = async {
            let metas = self.c.catalog_list(request.into_inner().vm).await?;
            let snapshot_json = metas
                .iter()
                .map(snapshot_json)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pb::ListSnapshotsResponse { snapshot_json })
        };
        answer(r.await)
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Answer<pb::GetSnapshotResponse> {
        let r = request.into_inner();
        let r = async {
            let meta = self.c.catalog_get(r.vm, r.id).await?;
            Ok(pb::GetSnapshotResponse {
                snapshot_json: snapshot_json(&meta)?,
            })
        };
        answer(r.await)
    }

    async fn forget_snapshots(
        &self,
        request: Request<pb::ForgetSnapshotsRequest>,
    ) -> Answer<pb::ForgetSnapshotsResponse> {
        let r = request.into_inner();
        let r = async {
            check_name("vm", &r.vm).map_err(RequestError::Invalid)?;
            let ids = r
                .ids
                .iter()
                .map(|i| {
                    i.parse::<bora_core::snapshot::SnapshotId>()
                        .map_err(|e| RequestError::Invalid(format!("snapshot id {i:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let gone = self.c.catalog_forget(r.vm, ids).await?;
            Ok(pb::ForgetSnapshotsResponse {
                forgotten: gone.iter().map(ToString::to_string).collect(),
            })
        };
        answer(r.await)
    }

    async fn start_backup(
        &self,
        request: Request<pb::StartBackupRequest>,
    ) -> Answer<pb::StartBackupResponse> {
        let r = async {
            self.c.leading()?;
            let mut req = JobRequest::try_from(request.into_inner())?;
            self.c.load_bases(&mut req).await?;
            let job = self.c.start_backup(req, false).await?;
            Ok(pb::StartBackupResponse { job: job.0 })
        };
        answer(r.await)
    }

    async fn backup_vm(
        &self,
        request: Request<pb::BackupVmRequest>,
    ) -> Answer<pb::StartBackupResponse> {
        let r = request.into_inner();
        let r = async {
            check_name("vm", &r.vm).map_err(RequestError::Invalid)?;
            let id = wire::chosen_job_id(&r.job)?;
            self.c.leading()?;
            let job = self.c.clone().backup_vm(r.vm, r.full, id).await?;
            Ok(pb::StartBackupResponse { job: job.0 })
        };
        answer(r.await)
    }

    async fn add_host(&self, request: Request<pb::AddHostRequest>) -> Answer<pb::AddHostResponse> {
        let r = request.into_inner();
        let r = async {
            let host = wire::host_from_json(&r.host_json)?;
            self.c.add_host(host, r.replace).await?;
            Ok(pb::AddHostResponse {})
        };
        answer(r.await)
    }

    async fn list_hosts(
        &self,
        _request: Request<pb::ListHostsRequest>,
    ) -> Answer<pb::ListHostsResponse> {
        let r = async {
            let hosts = self.c.list_hosts().await?;
            let host_json = hosts
                .iter()
                .map(|h| {
                    serde_json::to_string(h).map_err(|e| {
                        RequestError::Internal(format!("encoding host {}: {e}", h.name))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(pb::ListHostsResponse { host_json })
        };
        answer(r.await)
    }

    async fn remove_host(
        &self,
        request: Request<pb::RemoveHostRequest>,
    ) -> Answer<pb::RemoveHostResponse> {
        let name = request.into_inner().name;
        let r = async {
            check_name("host", &name).map_err(RequestError::Invalid)?;
            self.c.remove_host(name).await?;
            Ok(pb::RemoveHostResponse {})
        };
        answer(r.await)
    }

    async fn list_vms(&self, request: Request<pb::ListVmsRequest>) -> Answer<pb::ListVmsResponse> {
        let host = request.into_inner().host;
        let r = async {
            let vms = self.c.list_vms(host).await?;
            Ok(pb::ListVmsResponse {
                vms: vms.into_iter().map(wire::vm_info).collect(),
            })
        };
        answer(r.await)
    }

    async fn wait_job(&self, request: Request<pb::WaitJobRequest>) -> Answer<pb::JobStatus> {
        let r = request.into_inner();
        let r = async {
            let job = wire::job_id(&r.job)?;
            let timeout = wire::wait_timeout(r.timeout_ms)?;
            self.c.leading()?;
            self.c
                .wait_job(&job, timeout)
                .await
                .map(pb::JobStatus::from)
        };
        answer(r.await)
    }

    async fn cancel_job(&self, request: Request<pb::CancelJobRequest>) -> Answer<pb::JobStatus> {
        let r = async {
            let job = wire::job_id(&request.into_inner().job)?;
            self.c.leading()?;
            self.c.cancel_job(&job).await.map(pb::JobStatus::from)
        };
        answer(r.await)
    }

    async fn lease(&self, request: Request<pb::LeaseRequest>) -> Answer<pb::LeaseResponse> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        let r = async {
            let w = wire::worker_id(&r.worker)?;
            let wait = wire::lease_wait(r.wait_ms)?;
            self.c.leading()?;
            let grant = self.c.lease_wait(&w, peer, wait).await?;
            Ok(pb::LeaseResponse {
                lease: grant.map(pb::RangeLease::from),
            })
        };
        answer(r.await)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Answer<pb::HeartbeatResponse> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        answer(wire::worker_id(&r.worker).and_then(|w| {
            let ids = wire::lease_ids(r.lease_ids)?;
            Ok(pb::HeartbeatResponse {
                ended: self.c.heartbeat(&w, &ids, peer),
            })
        }))
    }

    async fn complete_range(
        &self,
        request: Request<pb::CompleteRangeRequest>,
    ) -> Answer<pb::CompleteRangeResponse> {
        let r = async {
            let report = RangeReport::try_from(request.into_inner())?;
            let accepted = self.c.complete(report).await?;
            Ok(pb::CompleteRangeResponse { accepted })
        };
        answer(r.await)
    }

    async fn fail_range(
        &self,
        request: Request<pb::FailRangeRequest>,
    ) -> Answer<pb::FailRangeResponse> {
        let r = request.into_inner();
        answer(
            wire::worker_id(&r.worker)
                .and_then(|w| self.c.fail(r.lease_id, &w, wire::error_text(r.error)))
                .map(|()| pb::FailRangeResponse {}),
        )
    }

    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Answer<pb::RegisterWorkerResponse> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        answer(wire::worker_id(&r.worker).and_then(|w| {
            let hostname = wire::hostname(r.hostname)?;
            self.c.leading()?;
            self.c.register_worker(&w, r.pid, hostname, peer);
            Ok(pb::RegisterWorkerResponse {
                coordinator: self.c.id.clone(),
                lease_ms: self.c.lease_ms,
            })
        }))
    }

    async fn membership(
        &self,
        _request: Request<pb::MembershipRequest>,
    ) -> Answer<pb::MembershipResponse> {
        answer(
            self.c
                .storage
                .read()
                .await
                .map(|v| self.membership_answer(v)),
        )
    }

    async fn add_storage_node(
        &self,
        request: Request<pb::AddStorageNodeRequest>,
    ) -> Answer<pb::MembershipResponse> {
        let r = request.into_inner();
        let c = self.c.clone();
        let r = async move {
            check_node(&r.id, &r.addr).map_err(RequestError::Invalid)?;
            c.storage.add(&r.id, &r.addr).await
        };
        answer(r.await.map(|v| self.membership_answer(v)))
    }

    async fn remove_storage_node(
        &self,
        request: Request<pb::RemoveStorageNodeRequest>,
    ) -> Answer<pb::MembershipResponse> {
        let id = request.into_inner().id;
        let c = self.c.clone();
        let r = async move {
            bora_core::snapshot::check_name("storage node", &id).map_err(RequestError::Invalid)?;
            c.storage.remove(&id).await
        };
        answer(r.await.map(|v| self.membership_answer(v)))
    }

    async fn raft_view(&self, _request: Request<pb::RaftViewRequest>) -> Answer<pb::RaftStatus> {
        Ok(Response::new(self.c.raft.status().into()))
    }

    async fn add_coordinator(
        &self,
        request: Request<pb::AddCoordinatorRequest>,
    ) -> Answer<pb::RaftStatus> {
        let r = async {
            let m = AddMember::try_from(request.into_inner())?;
            self.c.add_coordinator(m).await
        };
        answer(r.await)
    }

    async fn remove_coordinator(
        &self,
        request: Request<pb::RemoveCoordinatorRequest>,
    ) -> Answer<pb::RaftStatus> {
        let r = async {
            let id = member_id(request.into_inner().id)?;
            self.c.remove_coordinator(id).await
        };
        answer(r.await)
    }

    async fn export_catalog(
        &self,
        _request: Request<pb::ExportCatalogRequest>,
    ) -> Answer<pb::ExportCatalogResponse> {
        answer(self.c.export_catalog().await)
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Answer<pb::StatusResponse> {
        let mut view = self.c.status();
        super::probe::storage_nodes(&self.c.cluster, &mut view.members).await;
        let mut answer: pb::StatusResponse = view.into();
        answer.raft = Some(self.c.raft.status().into());
        Ok(Response::new(answer))
    }
}
