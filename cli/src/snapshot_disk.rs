//! Finding one disk of one snapshot and loading its index: what every command that reads a
//! snapshot (restore, serve, files) starts with.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};

use bora_core::index::DiskIndex;
use bora_core::index_store::load_index;
use bora_core::snapshot::{DiskSnapshot, SnapshotMeta};
use bora_core::store::ChunkStore;

use crate::repo::Repo;

/// A disk of a snapshot with its loaded (verified) index.
pub struct SnapshotDisk {
    pub meta: SnapshotMeta,
    pub disk: DiskSnapshot,
    pub index: DiskIndex,
}

/// Opens disk `disk` of snapshot `snapshot` (an id or `latest`) of `vm`.
pub async fn open(repo: &Repo, snapshot: &str, vm: &str, disk: &str) -> Result<SnapshotDisk> {
    let meta = repo.catalog.get(vm, snapshot)?;
    let store: Arc<dyn ChunkStore> = repo.store.clone();
    open_in(store.as_ref(), meta, disk).await
}

/// Disk `disk` of the snapshot `meta`, its index loaded from `store`.
pub async fn open_in(
    store: &dyn ChunkStore,
    meta: SnapshotMeta,
    disk: &str,
) -> Result<SnapshotDisk> {
    let vm = meta.vm.clone();
    let d = meta.disk(disk).cloned().ok_or_else(|| {
        let names: Vec<&str> = meta.disks.iter().map(|d| d.disk.as_str()).collect();
        anyhow!(
            "snapshot {} of vm {vm} has no disk {disk:?} (it has: {})",
            meta.id,
            names.join(", ")
        )
    })?;
    let index = load_index(store, &d.index)
        .await
        .with_context(|| format!("loading the index of snapshot {} disk {disk}", meta.id))?;
    Ok(SnapshotDisk {
        meta,
        disk: d,
        index,
    })
}

/// Where a command finds snapshots: the local repository, or a cluster.
pub enum Location<'a> {
    Repo(&'a std::path::Path),
    Cluster(&'a str),
}

/// A snapshot disk opened for reading, with the store its chunks come from. Holds the
/// repository (and so its lock) for as long as it lives.
pub struct Opened {
    pub sd: SnapshotDisk,
    pub store: Arc<dyn ChunkStore>,
    /// The local repository, if that is where it came from.
    pub repo: Option<Repo>,
}

/// Opens disk `disk` of snapshot `snapshot` (an id or `latest`) of `vm` at `loc`.
pub async fn open_at(loc: &Location<'_>, snapshot: &str, vm: &str, disk: &str) -> Result<Opened> {
    match loc {
        Location::Repo(dir) => {
            let repo = Repo::open(dir, false, None)?;
            let sd = open(&repo, snapshot, vm, disk).await?;
            let store: Arc<dyn ChunkStore> = repo.store.clone();
            Ok(Opened {
                sd,
                store,
                repo: Some(repo),
            })
        }
        Location::Cluster(urls) => {
            let mut c = crate::cluster::connect(urls).await?;
            let meta = c.snapshot(vm, snapshot).await?;
            let store: Arc<dyn ChunkStore> = c.store().await?;
            let sd = open_in(store.as_ref(), meta, disk).await?;
            Ok(Opened {
                sd,
                store,
                repo: None,
            })
        }
    }
}
