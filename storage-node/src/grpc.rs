//! The storage node's gRPC service: wire types in, domain types to the [`ChunkStore`],
//! domain errors out as a `Status` through [`to_status`], the one place that mapping lives.

use std::sync::Arc;

use bora_core::chunk::{ChunkHeader, EncodedChunk};
use bora_core::digest::{DIGEST_LEN, Digest};
use bora_core::store::{ChunkStore, StoreError};
use bora_proto::storage::storage_server::{Storage, StorageServer};
use bora_proto::storage::{
    ChunkRecord, MissingRequest, MissingResponse, PutRequest, PutResponse, ReadRequest,
    ReadResponse,
};
use tonic::{Request, Response, Status};

/// Largest gRPC message the service accepts or sends. A `Put` carries whole chunk records
/// (up to 64 MiB each), so clients must batch puts under this.
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Serves a chunk store over gRPC.
#[derive(Clone)]
pub struct StorageService {
    store: Arc<dyn ChunkStore>,
}

impl StorageService {
    pub fn new(store: Arc<dyn ChunkStore>) -> StorageService {
        StorageService { store }
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
}

pub mod client;

#[cfg(test)]
mod tests;
