//! The `Remotes` service: a cluster keeps its remotes in its coordinator's data directory
//! ([`crate::remote`]'s file), so its background replication finds them, and
//! `bora --cluster URL remote add|list` changes and shows them from anywhere.

use std::path::PathBuf;

use bora_proto::replica as pb;
use bora_proto::replica::remotes_server::{Remotes, RemotesServer};
use tonic::{Request, Response, Status};

use crate::remote::{self, Remote, RemoteError};

/// Serves the remotes file of `dir`.
pub struct RemotesService {
    dir: PathBuf,
    /// One change at a time.
    lock: tokio::sync::Mutex<()>,
}

impl RemotesService {
    pub fn server(dir: PathBuf) -> RemotesServer<RemotesService> {
        RemotesServer::new(RemotesService {
            dir,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

fn to_status(e: RemoteError) -> Status {
    let msg = e.to_string();
    match e {
        RemoteError::Invalid { .. } => Status::invalid_argument(msg),
        RemoteError::Exists(_) => Status::already_exists(msg),
        RemoteError::Unknown { .. } => Status::not_found(msg),
        RemoteError::File { .. } => Status::internal(msg),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(to_status)
}

#[tonic::async_trait]
impl Remotes for RemotesService {
    async fn add_remote(
        &self,
        request: Request<pb::AddRemoteRequest>,
    ) -> Result<Response<pb::AddRemoteResponse>, Status> {
        let r = request.into_inner();
        let remote: Remote = serde_json::from_str(&r.remote_json)
            .map_err(|e| Status::invalid_argument(format!("remote: {e}")))?;
        let _one = self.lock.lock().await;
        let dir = self.dir.clone();
        blocking(move || remote::add(&dir, remote, r.replace)).await?;
        Ok(Response::new(pb::AddRemoteResponse {}))
    }

    async fn list_remotes(
        &self,
        _: Request<pb::ListRemotesRequest>,
    ) -> Result<Response<pb::ListRemotesResponse>, Status> {
        let dir = self.dir.clone();
        let all = blocking(move || remote::load(&dir)).await?;
        let remote_json = all
            .iter()
            .map(|r| serde_json::to_string(&r.redacted()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListRemotesResponse { remote_json }))
    }
}
