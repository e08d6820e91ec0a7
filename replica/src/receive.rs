//! The receiving service: what a site does with what a sender pushes.
//!
//! - `Missing` asks the site's chunk store.
//! - `PutRecords` decodes every record and checks it against its digest (on the blocking
//!   pool) before anything is stored; one bad record refuses the whole batch, naming its
//!   digest. The verified records are stored as they came (never recompressed) through the
//!   site's chunk store, so they land on its owners with its replica count.
//! - `Commit` stores nothing unless the snapshot is complete on the site
//!   ([`complete::check`]); a snapshot already in the catalog is left as it is, so a
//!   repeated or resumed replication is harmless.

mod complete;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bora_core::chunk::{ChunkHeader, EncodedChunk, decode};
use bora_core::digest::Digest;
use bora_core::snapshot::{SnapshotId, SnapshotMeta};
use bora_core::store::ChunkStore;
use bora_proto::replica as pb;
use bora_proto::replica::replica_server::Replica;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::{ReceiveError, SiteError, to_status};

/// The site a replica listener writes into: its chunk store and its catalog.
#[async_trait]
pub trait Site: Send + Sync + 'static {
    /// The site's cluster name (answered by `Hello`).
    fn cluster(&self) -> String;
    /// The site's chunk store (its storage nodes by placement).
    async fn store(&self) -> Result<Arc<dyn ChunkStore>, SiteError>;
    /// The ids of every snapshot in the site's catalog.
    async fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>, SiteError>;
    /// Commits `meta` with its own id. Its chunks are all stored.
    async fn commit(&self, meta: SnapshotMeta) -> Result<(), SiteError>;
}

/// The `Replica` gRPC service over a [`Site`].
pub struct ReplicaService<S> {
    site: Arc<S>,
}

impl<S: Site> ReplicaService<S> {
    pub fn new(site: Arc<S>) -> ReplicaService<S> {
        ReplicaService { site }
    }
}

fn digest(bytes: &[u8]) -> Result<Digest, ReceiveError> {
    Digest::from_slice(bytes).ok_or_else(|| {
        ReceiveError::Invalid(format!("a digest is {} bytes, expected 32", bytes.len()))
    })
}

/// Decodes and verifies each record against its digest; the stored form is kept.
fn verify(records: Vec<pb::Record>) -> Result<Vec<EncodedChunk>, ReceiveError> {
    records
        .into_iter()
        .map(|r| {
            let d = digest(&r.digest)?;
            let bad = |source| ReceiveError::BadChunk { digest: d, source };
            decode(&d, &r.record).map_err(bad)?;
            let header = ChunkHeader::parse(&r.record).map_err(bad)?;
            Ok(EncodedChunk {
                digest: d,
                raw_len: header.raw_len as u32,
                codec: header.codec,
                record: r.record.to_vec(),
            })
        })
        .collect()
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl<S: Site> Replica for ReplicaService<S> {
    async fn hello(&self, _: Request<pb::HelloRequest>) -> Answer<pb::HelloResponse> {
        Ok(Response::new(pb::HelloResponse {
            cluster: self.site.cluster(),
            protocol: crate::PROTOCOL,
        }))
    }

    async fn missing(&self, request: Request<pb::MissingRequest>) -> Answer<pb::MissingResponse> {
        let r = async {
            let digests = request
                .into_inner()
                .digests
                .iter()
                .map(|d| digest(d))
                .collect::<Result<Vec<_>, _>>()?;
            let store = self.site.store().await?;
            let missing = store.missing(&digests).await?;
            Ok(pb::MissingResponse { missing })
        };
        r.await.map(Response::new).map_err(to_status)
    }

    async fn put_records(
        &self,
        request: Request<pb::PutRecordsRequest>,
    ) -> Answer<pb::PutRecordsResponse> {
        let records = request.into_inner().records;
        let span = tracing::debug_span!("receive_records", records = records.len());
        let r = async {
            let chunks = tokio::task::spawn_blocking(move || verify(records))
                .await
                .map_err(|e| ReceiveError::Invalid(format!("verifying records: {e}")))??;
            let store = self.site.store().await?;
            let o = store.put(chunks).await?;
            Ok(pb::PutRecordsResponse {
                chunks_new: o.chunks_new,
                chunks_existing: o.chunks_existing,
            })
        };
        r.instrument(span).await.map(Response::new).map_err(|e| {
            tracing::warn!(error = %e, "refused a batch of records");
            to_status(e)
        })
    }

    async fn has_snapshots(
        &self,
        request: Request<pb::HasSnapshotsRequest>,
    ) -> Answer<pb::HasSnapshotsResponse> {
        let r = async {
            let ids = self.site.snapshot_ids().await?;
            let present = request
                .into_inner()
                .ids
                .iter()
                .map(|id| id.parse::<SnapshotId>().is_ok_and(|id| ids.contains(&id)))
                .collect();
            Ok::<_, ReceiveError>(pb::HasSnapshotsResponse { present })
        };
        r.await.map(Response::new).map_err(to_status)
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Answer<pb::CommitResponse> {
        let r = async {
            let meta: SnapshotMeta = serde_json::from_str(&request.into_inner().snapshot_json)
                .map_err(|e| ReceiveError::Invalid(format!("snapshot record: {e}")))?;
            let span = tracing::info_span!("receive_commit", vm = %meta.vm, snapshot = %meta.id);
            async {
                if self.site.snapshot_ids().await?.contains(&meta.id) {
                    return Ok(pb::CommitResponse { already: true });
                }
                let store = self.site.store().await?;
                complete::check(store.as_ref(), &meta).await?;
                self.site.commit(meta).await?;
                tracing::info!("replicated snapshot committed");
                Ok(pb::CommitResponse { already: false })
            }
            .instrument(span)
            .await
        };
        r.await.map(Response::new).map_err(to_status)
    }
}

#[cfg(test)]
mod tests;
