//! The `Raft` gRPC service (`proto/raft.proto`) and its client: each RPC carries one
//! openraft message encoded by [`crate::raft::codec`]; a reply carries the receiver's
//! `Result`, so a remote Raft error reaches the sender as the library's own error.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use bora_proto::raft::RaftMessage;
use bora_proto::raft::raft_client::RaftClient;
use bora_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};

use super::LinkError;
use crate::raft::codec::{decode, encode};
use crate::raft::{Node, NodeId, Raft, TypeConfig};

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the `Raft` service for one member.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    pub fn server(raft: Raft) -> RaftServer<RaftService> {
        RaftServer::new(RaftService { raft })
    }
}

fn request<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    decode(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("raft message: {e}")))
}

fn reply<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = encode(result).map_err(|e| Status::internal(format!("raft reply: {e}")))?;
    Ok(Response::new(RaftMessage {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = request(req)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = request(req)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = request(req)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

/// The client side: a [`GrpcPeer`] per target, connecting on first use.
#[derive(Clone, Default)]
pub struct GrpcNetwork;

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcPeer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GrpcPeer {
        GrpcPeer {
            target,
            addr: node.addr.clone(),
            client: None,
        }
    }
}

/// A link to one peer over gRPC.
pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
}

enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl GrpcPeer {
    fn link_error(&self, reason: impl std::fmt::Display) -> LinkError {
        LinkError::Transport {
            to: self.target,
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn client(&mut self) -> Result<RaftClient<Channel>, LinkError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| self.link_error(e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        let client = RaftClient::new(channel);
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let unreachable = |e: LinkError| RPCError::Unreachable(Unreachable::new(&e));
        let payload = encode(req).map_err(|e| unreachable(e.into()))?;
        let mut client = self.client().map_err(unreachable)?;
        let mut request = Request::new(RaftMessage {
            payload: payload.into(),
        });
        request.set_timeout(option.hard_ttl());
        let answer = match rpc {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let message = match answer {
            Ok(m) => m.into_inner(),
            Err(status) => {
                let e = self.link_error(format!("{}: {}", status.code(), status.message()));
                return Err(match status.code() {
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&message.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
