//! Running a storage node: open its chunk store, bind its address, serve the `Storage`
//! gRPC service until told to stop.
//!
//! [`bind`] and [`BoundStorageNode::run`] are separate so that a caller (a test, or a
//! supervisor that registers the node) learns the address actually bound — port 0 picks
//! a free one — before the node serves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::Instrument;

use crate::config::{InvalidConfig, StorageNodeConfig};
use crate::error::StorageError;
use crate::grpc::StorageService;
use crate::store::LocalChunkStore;

/// Why a storage node could not start, or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config does not validate.
    #[error("storage node {id}: invalid config: {source}")]
    Config {
        id: String,
        #[source]
        source: InvalidConfig,
    },
    /// The data directory could not be created.
    #[error("storage node {id}: cannot create data directory {path}: {source}")]
    CreateDataDir {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The chunk store could not be opened (e.g. another process has it open).
    #[error("storage node {id}: cannot open the chunk store in {path}: {source}")]
    OpenStore {
        id: String,
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    /// The listen address could not be bound.
    #[error("storage node {id}: cannot listen on {addr}: {source}")]
    Bind {
        id: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("storage node {id}: gRPC server failed: {source}")]
    Serve {
        id: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Opening the store on the blocking pool panicked or was cancelled.
    #[error("storage node {id}: startup task failed: {source}")]
    Task {
        id: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A storage node whose store is open and whose address is bound, not serving yet.
pub struct BoundStorageNode {
    id: String,
    cluster: Option<String>,
    store: Arc<LocalChunkStore>,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for BoundStorageNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BoundStorageNode({} at {})", self.id, self.local_addr)
    }
}

/// Opens the chunk store in `config.data_dir` (creating the directory) and binds exactly
/// `config.listen`. Nothing is served until [`BoundStorageNode::run`].
pub async fn bind(config: &StorageNodeConfig) -> Result<BoundStorageNode, ServiceError> {
    let id = config.id.clone();
    config.validate().map_err(|source| ServiceError::Config {
        id: id.clone(),
        source,
    })?;
    let addr = config.listen_addr().map_err(|e| ServiceError::Config {
        id: id.clone(),
        source: InvalidConfig {
            key: "listen",
            reason: e.to_string(),
        },
    })?;
    let dir = config.data_dir.clone();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|source| ServiceError::CreateDataDir {
            id: id.clone(),
            path: dir.clone(),
            source,
        })?;
    // RocksDB opens and replays its log synchronously.
    let open_dir = dir.clone();
    let store = tokio::task::spawn_blocking(move || LocalChunkStore::open(&open_dir))
        .await
        .map_err(|source| ServiceError::Task {
            id: id.clone(),
            source,
        })?
        .map_err(|source| ServiceError::OpenStore {
            id: id.clone(),
            path: dir,
            source,
        })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind {
            id: id.clone(),
            addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServiceError::Bind {
        id: id.clone(),
        addr,
        source,
    })?;
    Ok(BoundStorageNode {
        id,
        cluster: config.cluster.clone(),
        store: Arc::new(store),
        listener,
        local_addr,
    })
}

impl BoundStorageNode {
    /// The address bound (with the port chosen, when the config said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node's id, from its config.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Serves the `Storage` service until `shutdown` completes, then stops accepting
    /// connections, lets requests in flight finish, and returns once every connection is
    /// closed and the chunk store is released (so the same data directory can be opened
    /// again).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let span = tracing::info_span!("storage_node", id = %self.id, addr = %self.local_addr);
        let BoundStorageNode {
            id,
            cluster,
            store,
            listener,
            local_addr,
        } = self;
        async move {
            tracing::info!("serving");
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                let conn = conn?;
                // Small requests (missing, read) should not wait for Nagle.
                conn.set_nodelay(true)?;
                Ok::<_, std::io::Error>(conn)
            });
            tonic::transport::Server::builder()
                .add_service(
                    StorageService::new(store)
                        .with_identity(&id, cluster.as_deref().unwrap_or_default())
                        .into_server(),
                )
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .map_err(|source| ServiceError::Serve {
                    id: id.clone(),
                    source,
                })?;
            tracing::info!(%local_addr, "stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use bora_core::chunk::encode;
    use bora_core::store::ChunkStore;

    use super::*;
    use crate::grpc::client::GrpcChunkStore;

    fn config(dir: &std::path::Path, listen: &str) -> StorageNodeConfig {
        StorageNodeConfig {
            id: "sn-test".into(),
            listen: listen.into(),
            data_dir: dir.join("node"),
            cluster: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_until_shutdown_and_reopens_the_same_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = bind(&config(dir.path(), "127.0.0.1:0"))
            .await
            .expect("bind");
        let addr = node.local_addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));

        let client = GrpcChunkStore::connect(&format!("http://{addr}"))
            .await
            .expect("connect");
        let chunk = encode(b"kept across a restart", 1).expect("encode");
        client.put(vec![chunk.clone()]).await.expect("put");
        let _ = stop.send(());
        server.await.expect("join").expect("run");

        // Same data dir, same address: the chunk is still there.
        let node = bind(&config(dir.path(), &addr.to_string()))
            .await
            .expect("rebind");
        assert_eq!(node.local_addr(), addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        let data = client
            .read(&chunk.digest)
            .await
            .expect("read after restart");
        assert_eq!(&data[..], b"kept across a restart");
        let _ = stop.send(());
        server.await.expect("join").expect("run");
    }

    #[tokio::test]
    async fn refuses_a_bad_config_and_a_taken_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = bind(&config(dir.path(), "nowhere")).await.expect_err("bad");
        assert!(matches!(e, ServiceError::Config { .. }), "{e}");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = bind(&config(dir.path(), &addr.to_string()))
            .await
            .expect_err("taken");
        assert!(
            matches!(&e, ServiceError::Bind { addr: a, .. } if *a == addr),
            "{e}"
        );
    }
}
