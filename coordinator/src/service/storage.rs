//! The storage membership the coordinator keeps: which storage nodes hold chunks, where
//! they listen, and how many copies each chunk gets. It lives in the replicated catalog
//! (`CatalogState::storage`): changes are proposals (`AddStorageNode`,
//! `RemoveStorageNode`, `SetReplicas`). `membership.json` in the data directory (what
//! the single coordinator saved before the catalog was replicated) and the config's
//! `storage-nodes` only seed a new cluster, once (see `replicated::import`).
//!
//! The coordinator reaches the storage nodes only to store snapshot indexes at commit,
//! through a chunk store the [`StoreFactory`] builds for the current membership (built
//! again when the membership changes).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::info;

use bora_core::store::ChunkStore;

use super::error::{RequestError, ServiceError};
use crate::config::{CoordinatorConfig, StorageNodeEntry};
use crate::placement::{DEFAULT_REPLICAS, Membership, NodeId};
use crate::raft::command::{Applied, Command, StorageView};
use crate::raft::{RaftCatalog, RaftCatalogError};

/// Builds the chunk store over a membership's storage nodes (ids → addresses). The
/// coordinator uses it only to store snapshot indexes at commit; it never carries chunk
/// data.
pub type StoreFactory =
    Arc<dyn Fn(&Membership, &BTreeMap<NodeId, String>) -> Arc<dyn ChunkStore> + Send + Sync>;

pub(super) const FILE: &str = "membership.json";
const FORMAT: u32 = 1;

/// `membership.json` (read for the one-time import; written by the catalog export).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Saved {
    format: u32,
    replicas: u32,
    nodes: Vec<StorageNodeEntry>,
}

/// The membership as the RPCs report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MembershipView {
    pub(super) replicas: u32,
    /// `(id, addr)`, sorted by id.
    pub(super) nodes: Vec<(String, String)>,
}

/// The store built for one membership.
struct Built {
    view: StorageView,
    store: Arc<dyn ChunkStore>,
}

pub(super) struct Storage {
    factory: StoreFactory,
    catalog: RaftCatalog,
    built: Mutex<Option<Built>>,
}

fn replicas_of(n: u32) -> NonZeroUsize {
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .unwrap_or(DEFAULT_REPLICAS)
}

/// The commands that seed a new cluster's storage membership: the saved
/// `membership.json` if there is one, else the config's `storage-nodes`; the config's
/// `replicas`, when set, wins.
pub(super) fn seed(config: &CoordinatorConfig) -> Result<Vec<Command>, ServiceError> {
    let path = config.data_dir.join(FILE);
    let state = |reason: String| ServiceError::State {
        path: path.clone(),
        reason,
    };
    let saved = match std::fs::read(&path) {
        Ok(bytes) => {
            let saved: Saved =
                serde_json::from_slice(&bytes).map_err(|e| state(format!("unreadable: {e}")))?;
            if saved.format != FORMAT {
                return Err(state(format!(
                    "format version {} is not supported (this build reads {FORMAT})",
                    saved.format
                )));
            }
            Some(saved)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(state(e.to_string())),
    };
    let (nodes, replicas) = match saved {
        Some(s) => (s.nodes, config.replicas.or(Some(s.replicas))),
        None => (config.storage_nodes.clone(), config.replicas),
    };
    let mut commands: Vec<Command> = nodes
        .into_iter()
        .map(|n| Command::AddStorageNode {
            id: n.id,
            addr: n.addr,
        })
        .collect();
    if let Some(replicas) = replicas {
        commands.push(Command::SetReplicas { replicas });
    }
    Ok(commands)
}

/// `membership.json`'s content for a membership (the catalog export writes it).
pub(super) fn saved(replicas: u32, nodes: Vec<StorageNodeEntry>) -> Saved {
    Saved {
        format: FORMAT,
        replicas,
        nodes,
    }
}

/// Whether `dir` holds a `membership.json`.
pub(super) fn has_saved(dir: &Path) -> bool {
    dir.join(FILE).exists()
}

impl Storage {
    pub(super) fn new(catalog: RaftCatalog, factory: StoreFactory) -> Storage {
        Storage {
            factory,
            catalog,
            built: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Built>> {
        self.built.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This member's applied membership (the leader's is current).
    fn local(&self) -> StorageView {
        self.catalog.read_local(|s| s.storage.clone())
    }

    /// The membership as this member applied it (for status pages and quick checks).
    pub(super) fn view(&self) -> MembershipView {
        view_of(&self.local())
    }

    /// The membership, read linearizably (`NotLeader` on a follower).
    pub(super) async fn read(&self) -> Result<MembershipView, RequestError> {
        let view = self.catalog.read(|s| s.storage.clone()).await?;
        Ok(view_of(&view))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.catalog.read_local(|s| s.storage.nodes.is_empty())
    }

    async fn propose(&self, command: Command) -> Result<MembershipView, RequestError> {
        match self.catalog.propose(command).await? {
            Applied::Storage { view } => Ok(view_of(&view)),
            other => Err(RequestError::Internal(format!(
                "a storage change was applied as {other:?}"
            ))),
        }
    }

    /// Adds a node, or changes a member's address: committed before it takes effect.
    pub(super) async fn add(&self, id: &str, addr: &str) -> Result<MembershipView, RequestError> {
        let view = self
            .propose(Command::AddStorageNode {
                id: id.to_string(),
                addr: addr.to_string(),
            })
            .await?;
        info!(node = %id, addr = %addr, "storage node added");
        Ok(view)
    }

    /// Removes a node: committed before it takes effect.
    pub(super) async fn remove(&self, id: &str) -> Result<MembershipView, RequestError> {
        let view = self
            .propose(Command::RemoveStorageNode { id: id.to_string() })
            .await
            .map_err(|e| match e {
                RequestError::Raft(RaftCatalogError::Refused(
                    crate::raft::Refusal::UnknownNode { id },
                )) => RequestError::UnknownNode(id),
                e => e,
            })?;
        info!(node = %id, "storage node removed");
        Ok(view)
    }

    /// The chunk store over the current membership.
    pub(super) fn store(&self) -> Result<Arc<dyn ChunkStore>, RequestError> {
        let view = self.local();
        if view.nodes.is_empty() {
            return Err(RequestError::NoStorageNodes);
        }
        let mut built = self.lock();
        if let Some(b) = built.as_ref().filter(|b| b.view == view) {
            return Ok(b.store.clone());
        }
        let membership = Membership::with_nodes(
            replicas_of(view.replicas),
            view.nodes.keys().map(|id| NodeId(id.clone())),
        );
        let addrs: BTreeMap<NodeId, String> = view
            .nodes
            .iter()
            .map(|(id, addr)| (NodeId(id.clone()), addr.clone()))
            .collect();
        let store = (self.factory)(&membership, &addrs);
        *built = Some(Built {
            view,
            store: store.clone(),
        });
        Ok(store)
    }
}

fn view_of(view: &StorageView) -> MembershipView {
    MembershipView {
        replicas: view.replicas,
        nodes: view
            .nodes
            .iter()
            .map(|(id, addr)| (id.clone(), addr.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, nodes: &[(&str, &str)]) -> CoordinatorConfig {
        let mut c = CoordinatorConfig::new("c", "127.0.0.1:0", dir);
        c.storage_nodes = nodes
            .iter()
            .map(|(id, addr)| StorageNodeEntry {
                id: id.to_string(),
                addr: addr.to_string(),
            })
            .collect();
        c
    }

    #[test]
    fn the_saved_membership_seeds_before_the_config_and_replicas_from_the_config_win() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), &[("a", "h:1")]);
        assert_eq!(
            seed(&c).unwrap(),
            vec![Command::AddStorageNode {
                id: "a".into(),
                addr: "h:1".into()
            }]
        );
        std::fs::write(
            dir.path().join(FILE),
            r#"{"format":1,"replicas":3,"nodes":[{"id":"b","addr":"h:2"}]}"#,
        )
        .unwrap();
        assert!(has_saved(dir.path()));
        assert_eq!(
            seed(&c).unwrap(),
            vec![
                Command::AddStorageNode {
                    id: "b".into(),
                    addr: "h:2".into()
                },
                Command::SetReplicas { replicas: 3 }
            ]
        );
        let mut c = c;
        c.replicas = Some(1);
        assert_eq!(
            seed(&c).unwrap().last(),
            Some(&Command::SetReplicas { replicas: 1 })
        );
        std::fs::write(dir.path().join(FILE), "{").unwrap();
        assert!(seed(&c).is_err());
    }
}
