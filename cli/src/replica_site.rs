//! The coordinator process's side of second-site replication: the site it runs as a
//! receiver (`[replica]` in its config: a TLS listener writing through the site's storage
//! nodes and committing into its catalog — through the coordinators' leader, whichever
//! coordinator has the listener) and as a source (the `Remotes` service on its main
//! listener over the remotes of the replicated catalog, and the background replication
//! to `--auto` remotes, which only the leader runs).
//!
//! Both talk to the coordinator over its own gRPC, like any client, and reach the storage
//! nodes through a `PlacedChunkStore` rebuilt from the membership every [`STORE_TTL`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tonic::transport::{Channel, Endpoint};

use bora_core::snapshot::{SnapshotId, SnapshotMeta};
use bora_core::store::ChunkStore;
use bora_proto::coordinator::CommitSnapshotRequest;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;
use bora_replica::error::SiteError;
use bora_replica::receive::Site;
use bora_replica::remotes_service::LocalSite;
use bora_replica::send::{Source, SourceError};
use bora_storage_node::placed::PlacedChunkStore;

use crate::remote_book::RaftRemoteBook;
use crate::replica_source::{ClusterSource, list_snapshots};

/// How long a chunk store built from the membership is reused.
const STORE_TTL: Duration = Duration::from_secs(10);

/// This cluster, reached through its coordinator at a local address.
pub struct ClusterSite {
    cluster: String,
    /// This coordinator's URL, then the other Raft members' (comma-separated, as
    /// `--cluster` takes them): catalog calls go to the leader.
    url: String,
    coordinator: CoordinatorClient<Channel>,
    store: Mutex<Option<(Instant, Arc<PlacedChunkStore>)>>,
}

impl ClusterSite {
    /// The cluster `cluster` whose coordinator listens on `addr` (an unspecified address
    /// is reached on loopback).
    pub fn new(
        addr: SocketAddr,
        cluster: String,
        others: &[String],
    ) -> anyhow::Result<ClusterSite> {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let own = format!("http://{addr}");
        let channel = Endpoint::from_shared(own.clone())?.connect_lazy();
        let url = std::iter::once(own)
            .chain(others.iter().map(|a| format!("http://{a}")))
            .collect::<Vec<_>>()
            .join(",");
        Ok(ClusterSite {
            cluster,
            url,
            coordinator: CoordinatorClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            store: Mutex::new(None),
        })
    }

    async fn placed(&self) -> Result<Arc<PlacedChunkStore>, String> {
        {
            let cached = self.store.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, s)) = cached.as_ref()
                && at.elapsed() < STORE_TTL
            {
                return Ok(s.clone());
            }
        }
        let store = crate::cluster::connect(&self.url)
            .await
            .map_err(|e| format!("{e:#}"))?
            .store()
            .await
            .map_err(|e| format!("{e:#}"))?;
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), store.clone()));
        Ok(store)
    }

    /// A client of the coordinators' leader (this coordinator when it is alone).
    async fn leader(&self) -> Result<CoordinatorClient<Channel>, String> {
        if !self.url.contains(',') {
            return Ok(self.coordinator.clone());
        }
        crate::cluster::connect(&self.url)
            .await
            .map(|c| c.client)
            .map_err(|e| format!("{e:#}"))
    }

    /// Every snapshot of the site, oldest first.
    pub async fn list(&self) -> Result<Vec<SnapshotMeta>, String> {
        list_snapshots(&self.leader().await?).await
    }
}

#[async_trait]
impl Site for ClusterSite {
    fn cluster(&self) -> String {
        self.cluster.clone()
    }

    async fn store(&self) -> Result<Arc<dyn ChunkStore>, SiteError> {
        let s: Arc<dyn ChunkStore> = self.placed().await.map_err(SiteError)?;
        Ok(s)
    }

    async fn snapshot_ids(&self) -> Result<HashSet<SnapshotId>, SiteError> {
        Ok(self
            .list()
            .await
            .map_err(SiteError)?
            .into_iter()
            .map(|m| m.id)
            .collect())
    }

    async fn commit(&self, meta: SnapshotMeta) -> Result<(), SiteError> {
        let snapshot_json = serde_json::to_string(&meta).map_err(|e| SiteError(e.to_string()))?;
        self.leader()
            .await
            .map_err(SiteError)?
            .commit_snapshot(CommitSnapshotRequest { snapshot_json })
            .await
            .map_err(|s| SiteError(format!("committing snapshot {}: {}", meta.id, s.message())))?;
        Ok(())
    }
}

#[async_trait]
impl LocalSite for ClusterSite {
    async fn source(&self) -> Result<Arc<dyn Source>, SourceError> {
        let store = self.placed().await.map_err(SourceError)?;
        Ok(Arc::new(ClusterSource {
            coordinator: self.leader().await.map_err(SourceError)?,
            store,
        }))
    }
}

/// Sets up replication in the coordinator process: the `Remotes` service over the
/// remotes of the replicated catalog `catalog` (returned, to be served on the
/// coordinator's listener), the replica listener when `[replica]` is configured, and the
/// background replication to `--auto` remotes (by whichever coordinator leads).
pub async fn start(
    config: &bora_coordinator::config::CoordinatorConfig,
    coordinator: SocketAddr,
    catalog: bora_coordinator::raft::RaftCatalog,
) -> anyhow::Result<(tonic::service::Routes, Vec<tokio::task::JoinHandle<()>>)> {
    // The other coordinators of the replicated catalog, if any.
    let others: Vec<String> = match &config.raft {
        Some(r) => r
            .member_map()
            .map_err(|e| anyhow::anyhow!(e))?
            .into_iter()
            .filter(|(id, _)| *id != r.id)
            .map(|(_, addr)| addr)
            .collect(),
        None => Vec::new(),
    };
    let site = Arc::new(ClusterSite::new(
        coordinator,
        config.cluster.clone().unwrap_or_default(),
        &others,
    )?);
    let local: Arc<dyn LocalSite> = site.clone();
    let book = Arc::new(RaftRemoteBook::new(catalog));
    if book.leads()
        // A single coordinator leads before it serves: its old remotes.json is there for
        // the first request. Otherwise the loop imports when this coordinator leads.
        && let Err(e) = book.import_file(&config.data_dir).await
    {
        eprintln!("importing remotes.json: {e}; retrying when leading");
    }
    let routes = tonic::service::Routes::new(
        bora_replica::remotes_service::RemotesService::server(book.clone(), local),
    );
    let mut tasks = vec![tokio::spawn(crate::replicate_loop::run(
        config.data_dir.clone(),
        book,
        site.clone(),
    ))];
    if let Some(r) = &config.replica {
        let listener = bora_replica::listen::bind(&bora_replica::listen::ListenConfig {
            listen: r.listen.clone(),
            tls: r.tls_cert.clone().zip(r.tls_key.clone()),
            tokens_file: r.tokens_file.clone(),
        })
        .await?;
        let addr = listener.local_addr();
        let tls = if listener.is_tls() {
            "TLS"
        } else {
            "plaintext"
        };
        eprintln!("replica listener on {addr} ({tls})");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = listener.serve(site, std::future::pending()).await {
                eprintln!("error: {e}");
            }
        }));
    }
    Ok((routes, tasks))
}
