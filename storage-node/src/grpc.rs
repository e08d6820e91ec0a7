//! The storage node's gRPC service: wire types in, domain types to the [`ChunkStore`],
//! domain errors out as a `Status` through [`to_status`], the one place that mapping lives.

use std::sync::Arc;

use bora_core::chunk::{ChunkHeader, EncodedChunk, MAX_CHUNK_LEN};
use bora_core::digest::{DIGEST_LEN, Digest};
use bora_core::store::StoreError;
use bora_proto::storage::storage_server::{Storage, StorageServer};
use bora_proto::storage::{
    ChunkRecord, ListDigestsRequest, ListDigestsResponse, MissingRequest, MissingResponse,
    PutRequest, PutResponse, ReadRequest, ReadResponse, StatsRequest, StatsResponse,
};
use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::node_store::NodeStore;

/// Largest gRPC message the service and [`client::GrpcChunkStore`] accept or send, both
/// ways: 64 MiB plus 1 MiB of room, so that one chunk of the largest size the chunk
/// encoding allows ([`MAX_CHUNK_LEN`], stored raw, plus its header) always fits in a
/// message. Clients batch puts well under it ([`client::PUT_BATCH_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_LEN + (1 << 20);

/// Digests per `ListDigests` page when the request does not say.
pub const DEFAULT_LIST_LIMIT: u32 = 4096;
/// Most digests per `ListDigests` page (about 2.2 MB on the wire).
pub const MAX_LIST_LIMIT: u32 = 65_536;

/// Serves a storage node's chunk store over gRPC.
#[derive(Clone)]
pub struct StorageService {
    store: Arc<dyn NodeStore>,
    id: String,
    cluster: String,
}

impl StorageService {
    /// A service over `store` (in production a [`crate::LocalChunkStore`]).
    pub fn new(store: Arc<dyn NodeStore>) -> StorageService {
        StorageService {
            store,
            id: String::new(),
            cluster: String::new(),
        }
    }

    /// Names the node and its cluster in `Stats` answers (from its config).
    pub fn with_identity(mut self, id: &str, cluster: &str) -> StorageService {
        self.id = id.to_string();
        self.cluster = cluster.to_string();
        self
    }

    /// The tonic server for this service, with message limits sized for chunk batches.
    pub fn into_server(self) -> StorageServer<StorageService> {
        StorageServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Maps a chunk store error to a gRPC status.
pub fn to_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound(_) => Status::not_found(msg),
        StoreError::Corrupt { .. } => Status::data_loss(msg),
        StoreError::Invalid(_) => Status::invalid_argument(msg),
        StoreError::SizeConflict { .. } => Status::already_exists(msg),
        StoreError::Index(_) => Status::internal(msg),
        StoreError::Backend(_) => Status::unavailable(msg),
    }
}

/// A wire digest: exactly 32 bytes.
fn digest_from_wire(bytes: &[u8]) -> Result<Digest, Status> {
    Digest::from_slice(bytes).ok_or_else(|| {
        Status::invalid_argument(format!(
            "digest is {} bytes, expected {DIGEST_LEN}",
            bytes.len()
        ))
    })
}

/// A digest on the wire.
pub(crate) fn digest_to_wire(d: &Digest) -> Bytes {
    Bytes::copy_from_slice(d.as_bytes())
}

/// A chunk record on the wire.
pub(crate) fn chunk_to_wire(c: EncodedChunk) -> ChunkRecord {
    ChunkRecord {
        digest: digest_to_wire(&c.digest),
        record: Bytes::from(c.record),
    }
}

/// A wire chunk record: the plaintext length and codec come from the record's header; the
/// store checks the rest (header digest, lengths, content).
fn chunk_from_wire(r: ChunkRecord) -> Result<EncodedChunk, Status> {
    let digest = digest_from_wire(&r.digest)?;
    let header = ChunkHeader::parse(&r.record)
        .map_err(|e| Status::invalid_argument(format!("chunk {digest}: bad record: {e}")))?;
    let raw_len = u32::try_from(header.raw_len)
        .map_err(|_| Status::invalid_argument(format!("chunk {digest}: raw length too large")))?;
    Ok(EncodedChunk {
        digest,
        raw_len,
        codec: header.codec,
        record: Vec::from(r.record),
    })
}

#[tonic::async_trait]
impl Storage for StorageService {
    async fn missing(
        &self,
        request: Request<MissingRequest>,
    ) -> Result<Response<MissingResponse>, Status> {
        let digests = request
            .into_inner()
            .digests
            .iter()
            .map(|d| digest_from_wire(d))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self.store.missing(&digests).await.map_err(to_status)?;
        Ok(Response::new(MissingResponse { missing }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let chunks = request
            .into_inner()
            .chunks
            .into_iter()
            .map(chunk_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self.store.put(chunks).await.map_err(to_status)?;
        Ok(Response::new(PutResponse {
            chunks_new: outcome.chunks_new,
            chunks_existing: outcome.chunks_existing,
            bytes_written: outcome.bytes_written,
        }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let digest = digest_from_wire(&request.into_inner().digest)?;
        let data = self.store.read(&digest).await.map_err(to_status)?;
        Ok(Response::new(ReadResponse { data }))
    }

    async fn list_digests(
        &self,
        request: Request<ListDigestsRequest>,
    ) -> Result<Response<ListDigestsResponse>, Status> {
        let r = request.into_inner();
        let after = match r.after.is_empty() {
            true => None,
            false => Some(digest_from_wire(&r.after)?),
        };
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let page = self
            .store
            .list_digests(after, limit as usize)
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListDigestsResponse {
            digests: page.digests.iter().map(digest_to_wire).collect(),
            done: page.done,
        }))
    }

    async fn read_record(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<ChunkRecord>, Status> {
        let digest = digest_from_wire(&request.into_inner().digest)?;
        let chunk = self.store.read_record(&digest).await.map_err(to_status)?;
        Ok(Response::new(chunk_to_wire(chunk)))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let stats = self.store.node_stats().await.map_err(to_status)?;
        Ok(Response::new(StatsResponse {
            chunks: stats.chunks,
            bytes_stored: stats.bytes_stored,
            pid: std::process::id(),
            node_id: self.id.clone(),
            cluster: self.cluster.clone(),
        }))
    }
}

pub mod client;

#[cfg(test)]
mod tests;
