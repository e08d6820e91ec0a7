//! A chunk store on another node, reached over gRPC: implements [`ChunkStore`], so a
//! worker uses a remote storage node exactly as it uses the in-process one. Statuses map
//! back to [`StoreError`] in [`from_status`], the mirror of [`super::to_status`].
//! Plaintext read from a remote node is checked against its digest here too: the data
//! crossed a network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use bora_core::chunk::{ChunkError, ChunkHeader, EncodedChunk, decode};
use bora_core::digest::Digest;
use bora_core::store::{ChunkStore, PutOutcome, StoreError};
use bora_proto::storage::storage_client::StorageClient;
use bora_proto::storage::{
    ChunkRecord, ListDigestsRequest, MissingRequest, PutRequest, ReadRequest, StatsRequest,
};

use super::{MAX_LIST_LIMIT, MAX_MESSAGE_BYTES, chunk_to_wire, digest_to_wire};
use crate::node_store::{DigestPage, NodeStats};
use connector::CountingConnector;

mod connector;

/// How long connecting to a storage node may take before the request fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take (a put of [`PUT_BATCH_BYTES`] included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Record bytes per `Put` message: a bigger put is sent as several messages, one after
/// the other, each well under [`MAX_MESSAGE_BYTES`].
pub const PUT_BATCH_BYTES: usize = 32 << 20;
/// Digests per `Missing` message (about 2.2 MB).
const MISSING_BATCH: usize = 65_536;
/// Room left in a message for everything but one record.
const MESSAGE_OVERHEAD: usize = 1024;

/// Maps a status from a storage node back to a chunk store error; `digest` names the chunk
/// the call was about, when there was one.
pub fn from_status(s: Status, digest: Option<Digest>) -> StoreError {
    let msg = s.message().to_string();
    match (s.code(), digest) {
        (Code::NotFound, Some(d)) => StoreError::NotFound(d),
        (Code::DataLoss, Some(d)) => StoreError::Corrupt {
            digest: d,
            location: "remote storage node".into(),
            source: Box::new(ChunkError::Reported(msg)),
        },
        (Code::InvalidArgument, _) => StoreError::Invalid(msg),
        (Code::Internal, _) => StoreError::Index(msg),
        (code, _) => StoreError::Backend(format!("storage node: {code:?}: {msg}")),
    }
}

/// Bytes a protobuf `bytes` field of `n` bytes takes (field numbers below 16).
fn bytes_field_len(n: usize) -> u64 {
    let varint = (usize::BITS - (n | 1).leading_zeros()).div_ceil(7);
    1 + u64::from(varint) + n as u64
}

/// Bytes a `ChunkRecord` takes inside a `PutRequest`.
fn record_wire_len(r: &ChunkRecord) -> u64 {
    let inner = bytes_field_len(r.digest.len()) + bytes_field_len(r.record.len());
    bytes_field_len(inner as usize)
}

/// The 5-byte gRPC frame header (compression flag + length) of every message.
const GRPC_FRAME: u64 = 5;

/// A remote chunk store.
#[derive(Clone)]
pub struct GrpcChunkStore {
    client: StorageClient<Channel>,
    /// Request bytes sent (protobuf messages + gRPC framing), shared by clones.
    sent: Arc<AtomicU64>,
    /// TCP connections the channel has made, shared by clones.
    connections: Arc<AtomicU64>,
}

impl std::fmt::Debug for GrpcChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcChunkStore")
    }
}

/// The endpoint at `url`; its TCP settings (`TCP_NODELAY`) are the connector's.
fn endpoint(url: &str) -> Result<Endpoint, StoreError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| StoreError::Invalid(format!("storage node address {url}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        // Finds a connection to a host that vanished without waiting for the timeout.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

impl GrpcChunkStore {
    fn over(channel: Channel, connections: Arc<AtomicU64>) -> GrpcChunkStore {
        GrpcChunkStore {
            client: StorageClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            sent: Arc::new(AtomicU64::new(0)),
            connections,
        }
    }

    /// Connects to a storage node at `url` (e.g. `http://127.0.0.1:7001`) now.
    pub async fn connect(url: &str) -> Result<GrpcChunkStore, StoreError> {
        let connector = CountingConnector::new();
        let connections = connector.made();
        let channel = endpoint(url)?
            .connect_with_connector(connector)
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to storage node {url}: {e}")))?;
        Ok(Self::over(channel, connections))
    }

    /// A client for the storage node at `url` that connects on its first request (and
    /// reconnects after a failure); fails only if `url` is malformed. Call it from within
    /// a tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<GrpcChunkStore, StoreError> {
        let connector = CountingConnector::new();
        let connections = connector.made();
        Ok(Self::over(
            endpoint(url)?.connect_with_connector_lazy(connector),
            connections,
        ))
    }

    /// TCP connections made so far by this client's channel (shared by its clones): 0
    /// before the first request, and one more each time the channel has reconnected, after
    /// which requests may reach another process than before at the same address.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Request bytes sent so far by this client and its clones: protobuf messages and
    /// their gRPC frame headers, not HTTP/2 framing.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn count(&self, bytes: u64) {
        self.sent.fetch_add(bytes + GRPC_FRAME, Ordering::Relaxed);
    }

    /// Up to `limit` digests the node holds (0: the node's default page size), ascending,
    /// all greater than `after`. Checks the node's answer is in order.
    pub async fn list_digests(
        &self,
        after: Option<Digest>,
        limit: u32,
    ) -> Result<DigestPage, StoreError> {
        let req = ListDigestsRequest {
            after: after.as_ref().map(digest_to_wire).unwrap_or_default(),
            limit,
        };
        self.count(bytes_field_len(req.after.len()) + 6);
        let r = self
            .client
            .clone()
            .list_digests(req)
            .await
            .map_err(|s| from_status(s, None))?
            .into_inner();
        let most = if limit == 0 { MAX_LIST_LIMIT } else { limit };
        if r.digests.len() > most as usize {
            return Err(StoreError::Backend(format!(
                "storage node listed {} digests, more than the {most} asked for",
                r.digests.len()
            )));
        }
        let mut digests = Vec::with_capacity(r.digests.len());
        let mut previous = after;
        for wire in &r.digests {
            let d = Digest::from_slice(wire).ok_or_else(|| {
                StoreError::Backend(format!(
                    "storage node listed a digest of {} bytes",
                    wire.len()
                ))
            })?;
            if previous.is_some_and(|p| p >= d) {
                return Err(StoreError::Backend(format!(
                    "storage node listed digest {d} out of order"
                )));
            }
            previous = Some(d);
            digests.push(d);
        }
        Ok(DigestPage {
            digests,
            done: r.done,
        })
    }

    /// One chunk in its stored form (header + payload), verified here against `digest`
    /// (header, lengths, plaintext) after crossing the network.
    pub async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        let digest = *digest;
        self.count(bytes_field_len(32));
        let r = self
            .client
            .clone()
            .read_record(ReadRequest {
                digest: digest_to_wire(&digest),
            })
            .await
            .map_err(|s| from_status(s, Some(digest)))?
            .into_inner();
        let corrupt = |source| StoreError::Corrupt {
            digest,
            location: "record received from the storage node".into(),
            source: Box::new(source),
        };
        if r.digest != digest.as_bytes().as_slice() {
            return Err(corrupt(ChunkError::Reported(format!(
                "the node sent a record for another digest ({} bytes: {:02x?})",
                r.digest.len(),
                &r.digest[..r.digest.len().min(8)]
            ))));
        }
        let record = r.record;
        let checked = tokio::task::spawn_blocking(move || {
            decode(&digest, &record)?;
            let header = ChunkHeader::parse(&record)?;
            let raw_len =
                u32::try_from(header.raw_len).map_err(|_| ChunkError::TooLarge(header.raw_len))?;
            Ok::<_, ChunkError>(EncodedChunk {
                digest,
                raw_len,
                codec: header.codec,
                record: Vec::from(record),
            })
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        checked.map_err(corrupt)
    }

    /// Exact counts of what the node holds.
    pub async fn stats(&self) -> Result<NodeStats, StoreError> {
        self.count(0);
        let r = self
            .client
            .clone()
            .stats(StatsRequest {})
            .await
            .map_err(|s| from_status(s, None))?
            .into_inner();
        Ok(NodeStats {
            chunks: r.chunks,
            bytes_stored: r.bytes_stored,
            node_id: r.node_id,
            cluster: r.cluster,
            pid: r.pid,
        })
    }

    /// Stores wire records, in messages of at most [`PUT_BATCH_BYTES`] of records (one
    /// record may be bigger, up to what a message can carry), one message at a time.
    /// Every message that succeeded is durable even if a later one fails.
    pub(crate) async fn put_records(
        &self,
        records: Vec<ChunkRecord>,
    ) -> Result<PutOutcome, StoreError> {
        let most = MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD;
        if let Some(r) = records.iter().find(|r| r.record.len() > most) {
            let digest = Digest::from_slice(&r.digest).map_or("?".into(), |d| d.to_string());
            return Err(StoreError::Invalid(format!(
                "chunk {digest}: record of {} bytes does not fit in a message of {most} bytes",
                r.record.len()
            )));
        }
        let mut total = PutOutcome::default();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let (mut batch, mut bytes, mut wire) = (Vec::new(), 0usize, 0u64);
            while let Some(r) =
                records.next_if(|r| batch.is_empty() || bytes + r.record.len() <= PUT_BATCH_BYTES)
            {
                bytes += r.record.len();
                wire += record_wire_len(&r);
                batch.push(r);
            }
            self.count(wire);
            let r = self
                .client
                .clone()
                .put(PutRequest { chunks: batch })
                .await
                .map_err(|s| from_status(s, None))?
                .into_inner();
            total.chunks_new += r.chunks_new;
            total.chunks_existing += r.chunks_existing;
            total.bytes_written += r.bytes_written;
        }
        Ok(total)
    }
}

#[async_trait]
impl ChunkStore for GrpcChunkStore {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let mut missing = Vec::with_capacity(digests.len());
        for batch in digests.chunks(MISSING_BATCH) {
            let req = MissingRequest {
                digests: batch.iter().map(digest_to_wire).collect(),
            };
            self.count(batch.len() as u64 * bytes_field_len(32));
            let flags = self
                .client
                .clone()
                .missing(req)
                .await
                .map_err(|s| from_status(s, None))?
                .into_inner()
                .missing;
            if flags.len() != batch.len() {
                return Err(StoreError::Backend(format!(
                    "storage node answered {} flags for {} digests",
                    flags.len(),
                    batch.len()
                )));
            }
            missing.extend(flags);
        }
        Ok(missing)
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        self.put_records(chunks.into_iter().map(chunk_to_wire).collect())
            .await
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let req = ReadRequest {
            digest: digest_to_wire(digest),
        };
        self.count(bytes_field_len(32));
        let data = self
            .client
            .clone()
            .read(req)
            .await
            .map_err(|s| from_status(s, Some(*digest)))?
            .into_inner()
            .data;
        let d = *digest;
        let actual = tokio::task::spawn_blocking(move || (Digest::of(&data), data))
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        if actual.0 != d {
            return Err(StoreError::Corrupt {
                digest: d,
                location: "received from the storage node".into(),
                source: Box::new(ChunkError::DigestMismatch {
                    expected: d,
                    actual: actual.0,
                }),
            });
        }
        Ok(actual.1)
    }
}

#[cfg(test)]
mod tests;
