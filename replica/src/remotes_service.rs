//! The `Remotes` service: a cluster's remotes, kept in a [`RemoteBook`] (the cluster's
//! replicated catalog), so its background replication finds them whichever coordinator
//! leads, and `bora --cluster URL remote add|list|remove` and `replicate` work from
//! anywhere. Tokens go in and never come out: `Replicate` runs the sender in the
//! coordinator process, over the [`LocalSite`] it is given.

use std::sync::Arc;

use async_trait::async_trait;
use bora_proto::replica as pb;
use bora_proto::replica::remotes_server::{Remotes, RemotesServer};
use tonic::{Request, Response, Status};

use crate::book::{BookError, RemoteBook};
use crate::error::chain;
use crate::remote::{Remote, RemoteError};
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
    Remote(#[from] BookError),
    #[error("this site as a source: {0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Replicates this site to its remote `name` (kept in `book`).
pub async fn replicate_named(
    book: &dyn RemoteBook,
    name: &str,
    site: &dyn LocalSite,
    opts: &Options,
) -> Result<Report, ReplicateError> {
    let remote = book.find(name).await?;
    let source = site.source().await?;
    Ok(send::replicate(source.as_ref(), &remote, opts, None).await?)
}

/// Serves the remotes of `book` and replication from `site`.
pub struct RemotesService {
    book: Arc<dyn RemoteBook>,
    site: Arc<dyn LocalSite>,
}

impl RemotesService {
    pub fn server(
        book: Arc<dyn RemoteBook>,
        site: Arc<dyn LocalSite>,
    ) -> RemotesServer<RemotesService> {
        RemotesServer::new(RemotesService { book, site })
    }
}

/// The one place a book's error becomes a status.
pub fn book_status(e: BookError) -> Status {
    match e {
        BookError::Remote(e) => {
            let msg = e.to_string();
            match e {
                RemoteError::Invalid { .. } => Status::invalid_argument(msg),
                RemoteError::Exists(_) => Status::already_exists(msg),
                RemoteError::Unknown { .. } => Status::not_found(msg),
                RemoteError::File { .. } => Status::internal(msg),
            }
        }
        BookError::Catalog(status) => *status,
        BookError::Task(_) => Status::internal(e.to_string()),
    }
}

fn replicate_status(e: ReplicateError) -> Status {
    match e {
        ReplicateError::Remote(e) => book_status(e),
        ReplicateError::Send(SendError::Remote { code, .. }) => Status::new(code, chain(&e)),
        e => Status::unavailable(chain(&e)),
    }
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
        self.book
            .add(remote, r.replace)
            .await
            .map_err(book_status)?;
        Ok(Response::new(pb::AddRemoteResponse {}))
    }

    async fn list_remotes(
        &self,
        _: Request<pb::ListRemotesRequest>,
    ) -> Result<Response<pb::ListRemotesResponse>, Status> {
        let all = self.book.list().await.map_err(book_status)?;
        let remote_json = all
            .iter()
            .map(|r| serde_json::to_string(&r.redacted()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ListRemotesResponse { remote_json }))
    }

    async fn remove_remote(
        &self,
        request: Request<pb::RemoveRemoteRequest>,
    ) -> Result<Response<pb::RemoveRemoteResponse>, Status> {
        let name = request.into_inner().name;
        self.book.remove(&name).await.map_err(book_status)?;
        Ok(Response::new(pb::RemoveRemoteResponse {}))
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
        let report = replicate_named(self.book.as_ref(), &r.remote, self.site.as_ref(), &opts)
            .await
            .map_err(replicate_status)?;
        let report_json =
            serde_json::to_string(&report).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReplicateResponse { report_json }))
    }
}
