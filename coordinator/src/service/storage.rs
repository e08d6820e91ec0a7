//! The storage membership the coordinator keeps: which storage nodes hold chunks, where
//! they listen, and how many copies each chunk gets. Saved in the data directory
//! (`membership.json`, written atomically) on every change, so it survives a restart; the
//! config's `storage-nodes` only seed it on the first start.
//!
//! The coordinator reaches the storage nodes only to store snapshot indexes at commit,
//! through a chunk store the [`StoreFactory`] builds for the current membership (built
//! again when the membership changes).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::info;

use bora_core::store::ChunkStore;

use super::error::{RequestError, ServiceError};
use crate::config::{CoordinatorConfig, StorageNodeEntry};
use crate::fsutil::write_atomic;
use crate::placement::{DEFAULT_REPLICAS, Membership, NodeId};

/// Builds the chunk store over a membership's storage nodes (ids → addresses). The
/// coordinator uses it only to store snapshot indexes at commit; it never carries chunk
/// data.
pub type StoreFactory =
    Arc<dyn Fn(&Membership, &BTreeMap<NodeId, String>) -> Arc<dyn ChunkStore> + Send + Sync>;

const FILE: &str = "membership.json";
const FORMAT: u32 = 1;

/// `membership.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
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

struct Current {
    membership: Membership,
    addrs: BTreeMap<NodeId, String>,
    /// The store for this membership, built on first use.
    store: Option<Arc<dyn ChunkStore>>,
}

pub(super) struct Storage {
    dir: PathBuf,
    factory: StoreFactory,
    current: Mutex<Current>,
}

fn replicas_of(n: u32) -> NonZeroUsize {
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .unwrap_or(DEFAULT_REPLICAS)
}

impl Storage {
    /// Loads the saved membership, or seeds it from the config on the first start.
    /// `replicas` from the config, when set, replaces the saved one.
    pub(super) fn open(
        config: &CoordinatorConfig,
        factory: StoreFactory,
    ) -> Result<Storage, ServiceError> {
        let dir = config.data_dir.clone();
        let path = dir.join(FILE);
        let state = |reason: String| ServiceError::State {
            path: path.clone(),
            reason,
        };
        let saved = match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes)
                    .map_err(|e| state(format!("unreadable: {e}")))?;
                if saved.format != FORMAT {
                    return Err(state(format!(
                        "format version {} is not supported (this build reads {FORMAT})",
                        saved.format
                    )));
                }
                for n in &saved.nodes {
                    crate::config::check_node(&n.id, &n.addr).map_err(state)?;
                }
                Some(saved)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(state(e.to_string())),
        };
        let default_replicas = u32::try_from(DEFAULT_REPLICAS.get()).unwrap_or(2);
        let (nodes, replicas) = match &saved {
            Some(s) => (s.nodes.clone(), config.replicas.unwrap_or(s.replicas)),
            None => (
                config.storage_nodes.clone(),
                config.replicas.unwrap_or(default_replicas),
            ),
        };
        if saved.is_some() && !config.storage_nodes.is_empty() {
            info!(
                path = %path.display(),
                "storage membership loaded from the data directory; the config's storage-nodes only seed a first start"
            );
        }
        let changed = saved
            .as_ref()
            .is_none_or(|s| s.replicas != replicas || s.nodes != nodes);
        let current = Current {
            membership: Membership::with_nodes(
                replicas_of(replicas),
                nodes.iter().map(|n| NodeId(n.id.clone())),
            ),
            addrs: nodes.into_iter().map(|n| (NodeId(n.id), n.addr)).collect(),
            store: None,
        };
        let storage = Storage {
            dir,
            factory,
            current: Mutex::new(current),
        };
        if changed {
            let current = storage.lock();
            storage
                .save(&current.membership, &current.addrs)
                .map_err(|e| state(e.to_string()))?;
        }
        Ok(storage)
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn save(
        &self,
        membership: &Membership,
        addrs: &BTreeMap<NodeId, String>,
    ) -> Result<(), RequestError> {
        let saved = Saved {
            format: FORMAT,
            replicas: u32::try_from(membership.replicas().get()).unwrap_or(u32::MAX),
            nodes: addrs
                .iter()
                .map(|(id, addr)| StorageNodeEntry {
                    id: id.0.clone(),
                    addr: addr.clone(),
                })
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&saved)
            .map_err(|e| RequestError::Internal(format!("encoding {FILE}: {e}")))?;
        write_atomic(&self.dir, FILE, &text).map_err(|source| RequestError::Persist {
            path: self.path(),
            source,
        })
    }

    pub(super) fn view(&self) -> MembershipView {
        view_of(&self.lock())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().membership.is_empty()
    }

    /// Adds a node, or changes a member's address. Saved before it takes effect. Blocks
    /// on the file write: call it off the async workers.
    pub(super) fn add(&self, id: &str, addr: &str) -> Result<MembershipView, RequestError> {
        let mut current = self.lock();
        let id = NodeId(id.to_string());
        if current.addrs.get(&id).is_some_and(|a| a == addr) {
            return Ok(view_of(&current));
        }
        let mut membership = current.membership.clone();
        membership.add(id.clone());
        let mut addrs = current.addrs.clone();
        let old = addrs.insert(id.clone(), addr.to_string());
        self.save(&membership, &addrs)?;
        match old {
            Some(old) => info!(node = %id, from = %old, to = %addr, "storage node address changed"),
            None => info!(node = %id, addr = %addr, "storage node added"),
        }
        *current = Current {
            membership,
            addrs,
            store: None,
        };
        Ok(view_of(&current))
    }

    /// Removes a node. Saved before it takes effect. Blocks on the file write.
    pub(super) fn remove(&self, id: &str) -> Result<MembershipView, RequestError> {
        let mut current = self.lock();
        let id = NodeId(id.to_string());
        if !current.membership.contains(&id) {
            return Err(RequestError::UnknownNode(id.0));
        }
        let mut membership = current.membership.clone();
        membership.remove(&id);
        let mut addrs = current.addrs.clone();
        addrs.remove(&id);
        self.save(&membership, &addrs)?;
        info!(node = %id, "storage node removed");
        *current = Current {
            membership,
            addrs,
            store: None,
        };
        Ok(view_of(&current))
    }

    /// The chunk store over the current membership.
    pub(super) fn store(&self) -> Result<Arc<dyn ChunkStore>, RequestError> {
        let mut current = self.lock();
        if current.membership.is_empty() {
            return Err(RequestError::NoStorageNodes);
        }
        if let Some(s) = &current.store {
            return Ok(s.clone());
        }
        let store = (self.factory)(&current.membership, &current.addrs);
        current.store = Some(store.clone());
        Ok(store)
    }
}

fn view_of(current: &Current) -> MembershipView {
    MembershipView {
        replicas: u32::try_from(current.membership.replicas().get()).unwrap_or(u32::MAX),
        nodes: current
            .addrs
            .iter()
            .map(|(id, addr)| (id.0.clone(), addr.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::store::memory::MemoryChunkStore;
    use std::path::Path;

    fn factory() -> StoreFactory {
        Arc::new(|_m: &Membership, _a: &BTreeMap<NodeId, String>| {
            Arc::new(MemoryChunkStore::default()) as Arc<dyn ChunkStore>
        })
    }

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
    fn the_config_seeds_the_first_start_and_the_saved_membership_wins_after() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&config(dir.path(), &[("a", "h:1")]), factory()).unwrap();
        assert_eq!(s.view().replicas, 2);
        s.add("b", "h:2").unwrap();
        s.remove("a").unwrap();
        assert!(matches!(s.remove("a"), Err(RequestError::UnknownNode(_))));
        drop(s);
        let s = Storage::open(&config(dir.path(), &[("a", "h:1")]), factory()).unwrap();
        assert_eq!(s.view().nodes, vec![("b".to_string(), "h:2".to_string())]);
        assert!(dir.path().join(FILE).exists());
        let mut c = config(dir.path(), &[]);
        c.replicas = Some(3);
        let s = Storage::open(&c, factory()).unwrap();
        assert_eq!(s.view().replicas, 3);
    }

    #[test]
    fn the_store_is_built_once_per_membership() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&config(dir.path(), &[]), factory()).unwrap();
        assert!(matches!(s.store(), Err(RequestError::NoStorageNodes)));
        s.add("a", "h:1").unwrap();
        let one = s.store().unwrap();
        assert!(Arc::ptr_eq(&one, &s.store().unwrap()));
        s.add("a", "h:1").unwrap();
        assert!(
            Arc::ptr_eq(&one, &s.store().unwrap()),
            "no change, same store"
        );
        s.add("a", "h:9").unwrap();
        assert!(!Arc::ptr_eq(&one, &s.store().unwrap()));
    }
}
