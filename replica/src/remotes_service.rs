//! The `Remotes` service: a cluster keeps its remotes in its coordinator's data directory
//! ([`crate::remote`]'s file), so its background replication finds them, and
//! `bora --cluster URL remote add|list` and `replicate` work from anywhere. Tokens go in
//! and never come out: `Replicate` runs the sender in the coordinator process, over the
//! [`LocalSite`] it is given.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bora_proto::replica as pb;
use bora_proto::replica::remotes_server::{Remotes, RemotesServer};
use tonic::{Request, Response, Status};

use crate::error::chain;
use crate::remote::{self, Remote, RemoteError};
use crate::send::{self, Options, Report, SendError, Source, SourceError};

/// This cluster as a replication source.
#[async_trait]
pub trait LocalSite: Send + Sync + 'static {
    async fn source(&self) -> Result<Arc<dyn Source>, SourceError>;
}

/// Why a named replication could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("this site as a source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Replicates this site to its remote `name` (kept in `dir`).
pub async fn replicate_named(
    dir: PathBuf,
    name: &str,
    site: &dyn LocalSite,
    opts: &Options,
) -> Result<Report, ReplicateError> {
    let n = name.to_string();
    let remote = tokio::task::spawn_blocking(move || remote::find(&dir, &n))
        .await
        .map_err(|e| SourceError(e.to_string()))??;
    let source = site.source().await?;
    Ok(send::replicate(source.as_ref(), &remote, opts, None).await?)
}

/// Serves the remotes file of `dir` and replication from `site`.
pub struct RemotesService {
    dir: PathBuf,
    site: Arc<dyn LocalSite>,
    /// One change at a time.
    lock: tokio::sync::Mutex<()>,
}

impl RemotesService {
    pub fn server(dir: PathBuf, site: Arc<dyn LocalSite>) -> RemotesServer<RemotesService> {
        RemotesServer::new(RemotesService {
            dir,
            site,
            lock: tokio::sync::Mutex::new(()),
        })
    }
}

fn remote_status(e: RemoteError) -> Status {
    let msg = e.to_string();
    match e {
        RemoteError::Invalid { .. } => Status::invalid_argument(msg),
        RemoteError::Exists(_) => Status::already_exists(msg),
        RemoteError::Unknown { .. } => Status::not_found(msg),
        RemoteError::File { .. } => Status::internal(msg),
    }
}

fn replicate_status(e: ReplicateError) -> Status {
    match e {
        ReplicateError::Remote(e) => remote_status(e),
        ReplicateError::Send(SendError::Remote { code, .. }) => Status::new(code, chain(&e)),
        e => Status::unavailable(chain(&e)),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(remote_status)
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

    async fn replicate(
        &self,
        request: Request<pb::ReplicateRequest>,
    ) -> Result<Response<pb::ReplicateResponse>, Status> {
        let r = request.into_inner();
        let defaults = Options::default();
        let opts = Options {
            vms: r.vms,
            streams: match r.streams {
                0 => defaults.streams,
                n => n as usize,
            },
            limit: r.limit,
            batch: defaults.batch,
        };
        let report = replicate_named(self.dir.clone(), &r.remote, self.site.as_ref(), &opts)
            .await
            .map_err(replicate_status)?;
        let report_json =
            serde_json::to_string(&report).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReplicateResponse { report_json }))
    }
}
