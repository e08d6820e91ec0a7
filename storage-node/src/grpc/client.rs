//! A chunk store on another node, reached over gRPC: implements [`ChunkStore`], so a
//! worker uses a remote storage node exactly as it uses the in-process one. Statuses map
//! back to [`StoreError`] in [`from_status`], the mirror of [`super::to_status`].
//! Plaintext read from a remote node is checked against its digest here too: the data
//! crossed a network.

use async_trait::async_trait;
use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use bora_core::chunk::{ChunkError, EncodedChunk};
use bora_core::digest::Digest;
use bora_core::store::{ChunkStore, PutOutcome, StoreError};
use bora_proto::storage::storage_client::StorageClient;
use bora_proto::storage::{ChunkRecord, MissingRequest, PutRequest, ReadRequest};

use super::MAX_MESSAGE_BYTES;

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

/// A remote chunk store.
#[derive(Clone)]
pub struct GrpcChunkStore {
    client: StorageClient<Channel>,
}

impl GrpcChunkStore {
    /// Connects to a storage node at `url` (e.g. `http://127.0.0.1:7001`).
    pub async fn connect(url: &str) -> Result<GrpcChunkStore, StoreError> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| StoreError::Invalid(format!("storage node address {url}: {e}")))?
            .connect()
            .await
            .map_err(|e| StoreError::Backend(format!("connecting to storage node {url}: {e}")))?;
        Ok(GrpcChunkStore {
            client: StorageClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }
}

#[async_trait]
impl ChunkStore for GrpcChunkStore {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let req = MissingRequest {
            digests: digests
                .iter()
                .map(|d| Bytes::copy_from_slice(d.as_bytes()))
                .collect(),
        };
        let missing = self
            .client
            .clone()
            .missing(req)
            .await
            .map_err(|s| from_status(s, None))?
            .into_inner()
            .missing;
        if missing.len() != digests.len() {
            return Err(StoreError::Backend(format!(
                "storage node answered {} flags for {} digests",
                missing.len(),
                digests.len()
            )));
        }
        Ok(missing)
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        let req = PutRequest {
            chunks: chunks
                .into_iter()
                .map(|c| ChunkRecord {
                    digest: Bytes::copy_from_slice(c.digest.as_bytes()),
                    record: Bytes::from(c.record),
                })
                .collect(),
        };
        let r = self
            .client
            .clone()
            .put(req)
            .await
            .map_err(|s| from_status(s, None))?
            .into_inner();
        Ok(PutOutcome {
            chunks_new: r.chunks_new,
            chunks_existing: r.chunks_existing,
            bytes_written: r.bytes_written,
        })
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let req = ReadRequest {
            digest: Bytes::copy_from_slice(digest.as_bytes()),
        };
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
mod tests {
    use std::sync::Arc;

    use bora_core::chunk::encode;
    use tokio_stream::wrappers::TcpListenerStream;

    use super::*;
    use crate::LocalChunkStore;
    use crate::grpc::StorageService;

    /// A real storage node (RocksDB + packs in a temp dir) served on 127.0.0.1:0, and a
    /// client over real gRPC.
    async fn node() -> (
        tempfile::TempDir,
        GrpcChunkStore,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ChunkStore> = Arc::new(LocalChunkStore::open(dir.path()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(StorageService::new(store).into_server())
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        let client = GrpcChunkStore::connect(&format!("http://{addr}"))
            .await
            .unwrap();
        (dir, client, server)
    }

    #[tokio::test]
    async fn put_missing_read_over_grpc() {
        let (_dir, c, server) = node().await;
        let a = encode(&b"chunk a".repeat(1000), 1).unwrap();
        let b = encode(b"chunk b", 1).unwrap();
        assert_eq!(
            c.missing(&[a.digest, b.digest]).await.unwrap(),
            [true, true]
        );
        let out = c.put(vec![a.clone(), b.clone(), a.clone()]).await.unwrap();
        assert_eq!(out.chunks_new, 2);
        assert_eq!(
            c.missing(&[a.digest, b.digest]).await.unwrap(),
            [false, false]
        );
        assert_eq!(
            &c.read(&a.digest).await.unwrap()[..],
            &b"chunk a".repeat(1000)[..]
        );
        let again = c.put(vec![b.clone()]).await.unwrap();
        assert_eq!((again.chunks_new, again.chunks_existing), (0, 1));
        server.abort();
    }

    #[tokio::test]
    async fn errors_come_back_as_store_errors() {
        let (_dir, c, server) = node().await;
        let unknown = Digest::of(b"never stored");
        assert!(matches!(c.read(&unknown).await, Err(StoreError::NotFound(d)) if d == unknown));
        // A record whose header names another digest is refused by the node.
        let mut bad = encode(b"x", 1).unwrap();
        bad.digest = Digest::of(b"y");
        assert!(matches!(
            c.put(vec![bad]).await,
            Err(StoreError::Invalid(_))
        ));
        server.abort();
        // Nobody listening is a backend error, not a hang or a panic (loopback only).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = GrpcChunkStore::connect(&format!("http://127.0.0.1:{port}")).await;
        assert!(matches!(err, Err(StoreError::Backend(_))));
    }
}
