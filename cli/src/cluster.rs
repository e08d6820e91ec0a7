//! Talking to a running cluster (`--cluster URL[,URL...]` or `BORA_CLUSTER`): the first
//! coordinator that answers is used. The coordinator holds the catalog and the storage
//! membership; chunk data goes straight between this process and the storage nodes.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tonic::transport::{Channel, Endpoint};

use bora_core::placement::{DEFAULT_REPLICAS, Membership, NodeId};
use bora_core::snapshot::SnapshotMeta;
use bora_proto::coordinator::coordinator_client::CoordinatorClient;
use bora_proto::coordinator::{GetSnapshotRequest, ListSnapshotsRequest, MembershipRequest};
use bora_storage_node::placed::PlacedChunkStore;

/// Largest message either way: snapshot lists and status can be large.
const MAX_MESSAGE: usize = 64 << 20;

/// A connected coordinator.
#[derive(Clone)]
pub struct Cluster {
    pub url: String,
    pub client: CoordinatorClient<Channel>,
    /// Every coordinator `--cluster` named, to find the leader again after a change.
    urls: Arc<Vec<String>>,
}

/// The metadata entry of a coordinator's UNAVAILABLE answer naming the leader
/// (`ID@ADDR`) when it is not the leader itself.
pub const LEADER_METADATA: &str = "bora-leader";

/// How long connect waits for a leader (an election takes about a second).
const FIND_LEADER_FOR: Duration = Duration::from_secs(15);

/// Connects to the coordinators' leader: asks the coordinators of `urls`
/// (comma-separated) in turn and follows a `bora-leader` redirect; while no leader is
/// known (an election), waits and asks again, up to 15 s. A single coordinator is its
/// own leader.
pub async fn connect(urls: &str) -> Result<Cluster> {
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(with_scheme)
        .collect();
    if urls.is_empty() {
        bail!("--cluster is empty: give the coordinator's URL, e.g. http://127.0.0.1:7100");
    }
    find_leader(Arc::new(urls), FIND_LEADER_FOR).await
}

/// The leader among `urls`, asked in turn until `within` has passed.
async fn find_leader(urls: Arc<Vec<String>>, within: Duration) -> Result<Cluster> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut errors = Vec::new();
        for url in urls.iter() {
            match leader_via(url).await {
                Ok(mut c) => {
                    c.urls = urls.clone();
                    return Ok(c);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no coordinator leader answers ({})", errors.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

async fn dial(url: &str) -> Result<Cluster> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| anyhow!("--cluster {url}: {e}"))?
        .connect_timeout(Duration::from_secs(3));
    let ch = endpoint
        .connect()
        .await
        .map_err(|e| anyhow!("{url}: {e}"))?;
    let client = CoordinatorClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Ok(Cluster {
        url: url.to_string(),
        client,
        urls: Arc::new(vec![url.to_string()]),
    })
}

/// The leader as coordinator `url` knows it: `url` itself when it answers a linearizable
/// read (the storage membership), else the coordinator its `bora-leader` names.
async fn leader_via(url: &str) -> Result<Cluster> {
    let mut c = dial(url).await?;
    match c.client.membership(MembershipRequest {}).await {
        Ok(_) => Ok(c),
        Err(s) => match leader_url(&s) {
            Some(leader) if leader != url => {
                let mut l = dial(&leader).await?;
                l.client
                    .membership(MembershipRequest {})
                    .await
                    .map_err(|s| anyhow!("{leader} (the leader {url} named): {}", s.message()))?;
                Ok(l)
            }
            _ if s.code() == tonic::Code::Unavailable => Err(anyhow!("{url}: {}", s.message())),
            // Any other answer comes from a coordinator that serves requests.
            _ => Ok(c),
        },
    }
}

/// Whether the coordinator at `url` itself leads (a single coordinator always does):
/// it answers a linearizable read instead of naming another leader.
pub async fn leads(url: &str) -> bool {
    match dial(url).await {
        Ok(mut c) => c.client.membership(MembershipRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

/// The leader's URL in a not-the-leader answer.
pub fn leader_url(s: &tonic::Status) -> Option<String> {
    if s.code() != tonic::Code::Unavailable {
        return None;
    }
    let v = s.metadata().get(LEADER_METADATA)?.to_str().ok()?;
    let (_, addr) = v.split_once('@')?;
    Some(with_scheme(addr))
}

/// How long [`Cluster::call`] follows leader changes before giving up.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// Whether an error may go away once a (new) leader serves: the coordinator is not
/// reachable, or is electing or taking over (UNAVAILABLE), or the connection broke in the
/// middle of the call.
fn leader_may_change(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            let m = s.message().to_ascii_lowercase();
            [
                "transport",
                "connection",
                "broken pipe",
                "h2 protocol",
                "reset",
            ]
            .iter()
            .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// A status error as one line.
pub fn status_err(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{what}: {}", s.message())
}

impl Cluster {
    /// After an answer `s` from a coordinator that is not the leader (`bora-leader`),
    /// connects to the leader it names; true if the call should be made again there.
    pub async fn follow_leader(&mut self, s: &tonic::Status) -> bool {
        let Some(url) = leader_url(s) else {
            return false;
        };
        if url == self.url {
            return false;
        }
        match dial(&url).await {
            Ok(c) => {
                tracing::info!(from = %self.url, to = %url, "following the coordinators' leader");
                let urls = self.urls.clone();
                *self = Cluster { urls, ..c };
                true
            }
            Err(e) => {
                tracing::warn!(leader = %url, error = %format!("{e:#}"), "cannot reach the leader");
                false
            }
        }
    }

    /// Makes a call on the leader through every leader change for up to [`RETRY_FOR`]: a
    /// redirect is followed, and an answer that says no leader can serve it now (the
    /// coordinator is gone, an election, a new leader taking over) makes the call again
    /// on whichever coordinator leads next. Only for calls that may be made twice:
    /// reads, and writes that name what they create (a backup with its job id).
    pub async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, tonic::Status>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            let s = match f(self.client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            if self.follow_leader(&s).await {
                continue;
            }
            if !leader_may_change(&s) || tokio::time::Instant::now() >= deadline {
                return Err(s);
            }
            tracing::info!(coordinator = %self.url, error = %s.message(), "no leader serves this now; asking again");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Ok(c) = find_leader(self.urls.clone(), left).await {
                *self = c;
            }
        }
    }

    /// The storage nodes, as the coordinator knows them.
    pub async fn membership(&mut self) -> Result<(Membership, BTreeMap<NodeId, String>)> {
        let (m, addrs, _) = self.membership_of_cluster().await?;
        Ok((m, addrs))
    }

    /// The storage nodes and the cluster name they must answer with.
    async fn membership_of_cluster(
        &mut self,
    ) -> Result<(Membership, BTreeMap<NodeId, String>, String)> {
        let m = self
            .client
            .membership(MembershipRequest {})
            .await
            .map_err(|s| status_err("storage membership", s))?
            .into_inner();
        let replicas = NonZeroUsize::new(m.replicas as usize).unwrap_or(DEFAULT_REPLICAS);
        let ids = m.nodes.iter().map(|n| NodeId::from(n.id.as_str()));
        let membership = Membership::with_nodes(replicas, ids);
        let addrs = m
            .nodes
            .into_iter()
            .map(|n| (NodeId::from(n.id.as_str()), n.addr))
            .collect();
        Ok((membership, addrs, m.cluster))
    }

    /// A chunk store over the storage nodes (reads from any live replica).
    pub async fn store(&mut self) -> Result<Arc<PlacedChunkStore>> {
        let (m, addrs, cluster) = self.membership_of_cluster().await?;
        if m.is_empty() {
            bail!("the cluster has no storage nodes");
        }
        Ok(Arc::new(
            PlacedChunkStore::new(m, addrs).with_cluster(&cluster),
        ))
    }

    pub async fn snapshots(&mut self, vm: Option<&str>) -> Result<Vec<SnapshotMeta>> {
        let request = ListSnapshotsRequest {
            vm: vm.map(str::to_string),
        };
        let r = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.list_snapshots(request).await }
            })
            .await
            .map_err(|s| status_err("listing snapshots", s))?;
        r.snapshot_json.iter().map(|j| parse_meta(j)).collect()
    }

    /// Snapshot `id` (or `latest`) of `vm`.
    pub async fn snapshot(&mut self, vm: &str, id: &str) -> Result<SnapshotMeta> {
        let request = GetSnapshotRequest {
            vm: vm.to_string(),
            id: id.to_string(),
        };
        let r = self
            .call(|mut client| {
                let request = request.clone();
                async move { client.get_snapshot(request).await }
            })
            .await
            .map_err(|s| status_err(&format!("snapshot {id} of vm {vm}"), s))?;
        parse_meta(&r.snapshot_json)
    }
}

pub fn parse_meta(json: &str) -> Result<SnapshotMeta> {
    serde_json::from_str(json)
        .context("the coordinator sent a snapshot record this bora cannot read")
}
