//! What replication reads from: the local repository or a cluster, as a
//! [`bora_replica::send::Source`] (snapshots from its catalog, records in their stored form
//! from its chunk store).

use std::sync::Arc;

use async_trait::async_trait;
use tonic::transport::Channel;

use bora_core::chunk::EncodedChunk;
use bora_core::digest::Digest;
use bora_core::snapshot::SnapshotMeta;
use bora_core::store::{ChunkStore, StoreError};
use bora_proto::coordinator::ListSnapshotsRequest;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;
use bora_replica::send::{Source, SourceError};
use bora_storage_node::NodeStore;
use bora_storage_node::placed::PlacedChunkStore;

use crate::repo::Repo;

/// The local repository (held open, with its lock, while replicating).
pub struct RepoSource(pub Repo);

#[async_trait]
impl Source for RepoSource {
    async fn snapshots(&self) -> Result<Vec<SnapshotMeta>, SourceError> {
        self.0
            .catalog
            .list(None)
            .map_err(|e| SourceError(e.to_string()))
    }
    fn store(&self) -> Arc<dyn ChunkStore> {
        self.0.store.clone()
    }
    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        NodeStore::read_record(self.0.store.as_ref(), digest).await
    }
}

/// A cluster: its coordinator's catalog and its storage nodes.
pub struct ClusterSource {
    pub coordinator: CoordinatorClient<Channel>,
    pub store: Arc<PlacedChunkStore>,
}

/// Every snapshot in the catalog of the coordinator `client` talks to, oldest first.
pub async fn list_snapshots(
    client: &CoordinatorClient<Channel>,
) -> Result<Vec<SnapshotMeta>, String> {
    let r = client
        .clone()
        .list_snapshots(ListSnapshotsRequest { vm: None })
        .await
        .map_err(|s| format!("listing snapshots: {}", s.message()))?;
    r.into_inner()
        .snapshot_json
        .iter()
        .map(|j| crate::cluster::parse_meta(j).map_err(|e| format!("{e:#}")))
        .collect()
}

#[async_trait]
impl Source for ClusterSource {
    async fn snapshots(&self) -> Result<Vec<SnapshotMeta>, SourceError> {
        list_snapshots(&self.coordinator).await.map_err(SourceError)
    }
    fn store(&self) -> Arc<dyn ChunkStore> {
        self.store.clone()
    }
    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        self.store.read_record(digest).await
    }
}
