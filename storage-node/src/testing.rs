//! In-process cluster for tests: real storage nodes (RocksDB + packs in temp dirs) served
//! over real gRPC on 127.0.0.1, stopped and restarted on the same address and data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use bora_core::chunk::{EncodedChunk, encode};
use bora_core::digest::Digest;
use bora_core::placement::{Membership, NodeId};
use bora_core::store::{ChunkStore, PutOutcome, StoreError};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::StorageNodeConfig;
use crate::grpc::StorageService;
use crate::grpc::client::GrpcChunkStore;
use crate::node_store::{DigestPage, NodeStats, NodeStore};
use crate::placed::PlacedChunkStore;
use crate::service::{ServiceError, bind};
use crate::store::LocalChunkStore;

/// One storage node running in this process.
pub struct TestNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The cluster named in its config.
    pub cluster: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServiceError>>>,
}

impl TestNode {
    /// A new node with an empty store, on a free loopback port.
    pub async fn start(id: &str) -> TestNode {
        TestNode::start_at(id, None, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A new node with an empty store, in `cluster`, on `addr` (port 0: a free one).
    pub async fn start_at(id: &str, cluster: Option<&str>, addr: SocketAddr) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = TestNode {
            id: NodeId::from(id),
            addr,
            dir,
            cluster: cluster.map(str::to_string),
            stop: None,
            task: None,
        };
        node.serve().await;
        node
    }

    /// A node whose `read` and `read_record` return corrupted data (it stores correctly).
    pub async fn start_lying(id: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalChunkStore::open(dir.path()).expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let name = id.to_string();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    StorageService::new(Arc::new(Lying(store)))
                        .with_identity(&name, "")
                        .into_server(),
                )
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .map_err(|source| ServiceError::Serve { id: name, source })
        });
        TestNode {
            id: NodeId::from(id),
            addr,
            dir,
            cluster: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn config(&self) -> StorageNodeConfig {
        StorageNodeConfig {
            id: self.id.0.clone(),
            listen: self.addr.to_string(),
            data_dir: self.dir.path().join("data"),
            cluster: self.cluster.clone(),
        }
    }

    async fn serve(&mut self) {
        let bound = bind(&self.config()).await.expect("bind storage node");
        self.addr = bound.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        self.stop = Some(stop);
        self.task = Some(tokio::spawn(bound.run(async {
            let _ = stopped.await;
        })));
    }

    /// Shuts the node's server down and waits until it has released its store.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("storage node run");
        }
    }

    /// Serves again from the same data dir on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.serve().await;
    }

    pub async fn client(&self) -> GrpcChunkStore {
        GrpcChunkStore::connect(&format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

/// Nodes `sn-1`…`sn-n`.
pub async fn start_nodes(n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(TestNode::start(&format!("sn-{i}")).await);
    }
    nodes
}

pub fn membership(nodes: &[TestNode], replicas: usize) -> Membership {
    let replicas = NonZeroUsize::new(replicas).expect("replicas > 0");
    Membership::with_nodes(replicas, nodes.iter().map(|n| n.id.clone()))
}

pub fn addrs(nodes: &[TestNode]) -> BTreeMap<NodeId, String> {
    nodes
        .iter()
        .map(|n| (n.id.clone(), n.addr.to_string()))
        .collect()
}

pub fn placed(nodes: &[TestNode], replicas: usize) -> PlacedChunkStore {
    PlacedChunkStore::new(membership(nodes, replicas), addrs(nodes))
}

/// `count` distinct small chunks, some compressible, derived from `seed`.
pub fn chunks(seed: &str, count: usize) -> Vec<(Vec<u8>, EncodedChunk)> {
    (0..count)
        .map(|i| {
            let data = format!("{seed} chunk {i} ").repeat(1 + i % 50).into_bytes();
            let chunk = encode(&data, 1).expect("encode");
            (data, chunk)
        })
        .collect()
}

pub fn digests(chunks: &[(Vec<u8>, EncodedChunk)]) -> Vec<Digest> {
    chunks.iter().map(|(_, c)| c.digest).collect()
}

pub fn encoded(chunks: &[(Vec<u8>, EncodedChunk)]) -> Vec<EncodedChunk> {
    chunks.iter().map(|(_, c)| c.clone()).collect()
}

/// Which of the running `nodes` hold each digest, asked node by node.
pub async fn holders(nodes: &[&TestNode], digests: &[Digest]) -> Vec<BTreeSet<NodeId>> {
    let mut held = vec![BTreeSet::new(); digests.len()];
    for node in nodes {
        let missing = node.client().await.missing(digests).await.expect("missing");
        for (h, m) in held.iter_mut().zip(missing) {
            if !m {
                h.insert(node.id.clone());
            }
        }
    }
    held
}

/// A store that keeps chunks correctly but hands out corrupted copies.
struct Lying(LocalChunkStore);

#[async_trait]
impl ChunkStore for Lying {
    async fn missing(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        self.0.missing(digests).await
    }

    async fn put(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StoreError> {
        ChunkStore::put(&self.0, chunks).await
    }

    async fn read(&self, digest: &Digest) -> Result<Bytes, StoreError> {
        let mut data = self.0.read(digest).await?.to_vec();
        if let Some(b) = data.last_mut() {
            *b ^= 1;
        }
        Ok(Bytes::from(data))
    }
}

#[async_trait]
impl NodeStore for Lying {
    async fn list_digests(
        &self,
        after: Option<Digest>,
        limit: usize,
    ) -> Result<DigestPage, StoreError> {
        NodeStore::list_digests(&self.0, after, limit).await
    }

    async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        let mut chunk = NodeStore::read_record(&self.0, digest).await?;
        if let Some(b) = chunk.record.last_mut() {
            *b ^= 1;
        }
        Ok(chunk)
    }

    async fn node_stats(&self) -> Result<NodeStats, StoreError> {
        self.0.node_stats().await
    }
}

/// A hung node: a TCP listener on 127.0.0.1 that accepts connections and never answers on
/// them (a request to it waits for the client's timeout). Stops when dropped.
pub struct HungNode {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HungNode {
    pub async fn start() -> HungNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        HungNode { addr, task }
    }
}

impl Drop for HungNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}
