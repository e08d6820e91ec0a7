//! The snapshot catalog of the embedded default: one JSON document per committed snapshot.
//!
//! A snapshot is committed by writing its record to a temp file, fsyncing it, renaming it
//! into place and fsyncing the directory: the rename is the commit point, so a crash leaves
//! either no snapshot or a whole one. Records are named `<sequence>-<id>.json`; the
//! sequence orders snapshots oldest first. The caller holds the repository lock, so one
//! writer at a time. (The cluster replaces this with Raft-replicated state holding the
//! same records.)

use std::fs;
use std::path::{Path, PathBuf};

use bora_core::snapshot::{SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta};

use crate::fsutil::write_atomic;

/// Why the catalog could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog record {path} is unreadable: {reason}")]
    BadRecord { path: PathBuf, reason: String },
    #[error("snapshot {0} already exists")]
    Duplicate(SnapshotId),
    #[error("no snapshot {id} of vm {vm}")]
    NotFound { vm: String, id: String },
    #[error("vm {0} has no snapshots")]
    NoSnapshots(String),
    #[error("host {0} is already registered (bora host add --replace to change it)")]
    HostExists(String),
    #[error("no host {0} is registered (see bora host list)")]
    NoHost(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Catalog {
    dir: PathBuf,
    /// Commits from concurrent backups in one process take their sequence numbers one at
    /// a time (other processes are kept out by the repository lock).
    commit_lock: std::sync::Mutex<()>,
}

/// A snapshot record on disk with its position in commit order.
struct Entry {
    seq: u64,
    meta: SnapshotMeta,
}

impl Catalog {
    /// Opens (creating if needed) the catalog in `dir`.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let snaps = dir.join("snapshots");
        fs::create_dir_all(&snaps).map_err(io(&snaps))?;
        Ok(Catalog {
            dir: snaps,
            commit_lock: std::sync::Mutex::new(()),
        })
    }

    fn entries(&self) -> Result<Vec<Entry>, CatalogError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let e = e.map_err(io(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // temp files and strangers
            };
            let path = e.path();
            let bad = |reason: String| CatalogError::BadRecord {
                path: path.clone(),
                reason,
            };
            let seq = stem
                .split_once('-')
                .and_then(|(s, _)| s.parse::<u64>().ok())
                .ok_or_else(|| bad("name is not <sequence>-<id>.json".into()))?;
            let text = fs::read(&path).map_err(io(&path))?;
            let meta: SnapshotMeta =
                serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
            if meta.format > SNAPSHOT_FORMAT_VERSION {
                return Err(bad(format!(
                    "format version {} is newer than this build reads ({SNAPSHOT_FORMAT_VERSION})",
                    meta.format
                )));
            }
            out.push(Entry { seq, meta });
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Every snapshot (of `vm`, if given), oldest first.
    pub fn list(&self, vm: Option<&str>) -> Result<Vec<SnapshotMeta>, CatalogError> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|e| e.meta)
            .filter(|m| vm.is_none_or(|v| m.vm == v))
            .collect())
    }

    /// The newest snapshot of `vm`, if any.
    pub fn latest(&self, vm: &str) -> Result<Option<SnapshotMeta>, CatalogError> {
        Ok(self.list(Some(vm))?.pop())
    }

    /// A snapshot of `vm` by id, or its newest for `"latest"`.
    pub fn get(&self, vm: &str, id: &str) -> Result<SnapshotMeta, CatalogError> {
        if id == "latest" {
            return self
                .latest(vm)?
                .ok_or_else(|| CatalogError::NoSnapshots(vm.to_string()));
        }
        self.list(Some(vm))?
            .into_iter()
            .find(|m| m.id.as_str() == id)
            .ok_or_else(|| CatalogError::NotFound {
                vm: vm.to_string(),
                id: id.to_string(),
            })
    }

    /// Forgets snapshots `ids` of `vm` (`bora prune`): their records are removed and the
    /// directory fsynced. Their chunks stay until garbage collection; other snapshots do
    /// not depend on them (every index is whole). Returns the ids that were there.
    pub fn forget(&self, vm: &str, ids: &[SnapshotId]) -> Result<Vec<SnapshotId>, CatalogError> {
        let _one_at_a_time = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut gone = Vec::new();
        for e in self.entries()? {
            if e.meta.vm == vm && ids.contains(&e.meta.id) {
                let path = self.dir.join(format!("{:012}-{}.json", e.seq, e.meta.id));
                fs::remove_file(&path).map_err(io(&path))?;
                gone.push(e.meta.id);
            }
        }
        if !gone.is_empty() {
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(gone)
    }

    /// Commits a snapshot record durably. Its chunks and index must already be stored.
    pub fn commit(&self, meta: &SnapshotMeta) -> Result<(), CatalogError> {
        let _one_at_a_time = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = self.entries()?;
        if entries.iter().any(|e| e.meta.id == meta.id) {
            return Err(CatalogError::Duplicate(meta.id.clone()));
        }
        let seq = entries.last().map_or(1, |e| e.seq + 1);
        let name = format!("{seq:012}-{}.json", meta.id);
        let path = self.dir.join(&name);
        let text = serde_json::to_vec_pretty(meta).map_err(|e| CatalogError::BadRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.dir, &name, &text).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::snapshot::now_rfc3339;

    fn meta(vm: &str, id: &str) -> SnapshotMeta {
        SnapshotMeta {
            format: SNAPSHOT_FORMAT_VERSION,
            id: id.parse().unwrap(),
            vm: vm.into(),
            time: now_rfc3339(),
            parent: None,
            disks: vec![],
        }
    }

    #[test]
    fn commit_list_latest() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        assert!(c.latest("a").unwrap().is_none());
        for id in ["s1", "s2", "s3"] {
            c.commit(&meta("a", id)).unwrap();
        }
        c.commit(&meta("b", "s4")).unwrap();
        let ids: Vec<_> = c
            .list(Some("a"))
            .unwrap()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(ids, ["s1", "s2", "s3"]);
        assert_eq!(c.get("a", "latest").unwrap().id.as_str(), "s3");
        assert_eq!(c.list(None).unwrap().len(), 4);
        assert!(matches!(
            c.get("a", "s4"),
            Err(CatalogError::NotFound { .. })
        ));
        assert!(matches!(
            c.get("zz", "latest"),
            Err(CatalogError::NoSnapshots(_))
        ));
        assert!(matches!(
            c.commit(&meta("a", "s1")),
            Err(CatalogError::Duplicate(_))
        ));
    }

    #[test]
    fn forget_removes_only_the_vms_named_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        for (vm, id) in [("a", "s1"), ("a", "s2"), ("b", "s3"), ("a", "s4")] {
            c.commit(&meta(vm, id)).unwrap();
        }
        let ids =
            |v: &[&str]| -> Vec<SnapshotId> { v.iter().map(|i| i.parse().unwrap()).collect() };
        let gone = c.forget("a", &ids(&["s1", "s3", "s9"])).unwrap();
        assert_eq!(gone, ids(&["s1"]), "s3 is vm b's, s9 does not exist");
        let left: Vec<String> = c
            .list(None)
            .unwrap()
            .iter()
            .map(|m| m.id.to_string())
            .collect();
        assert_eq!(left, ["s2", "s3", "s4"]);
        c.commit(&meta("a", "s5")).unwrap();
        assert_eq!(c.get("a", "latest").unwrap().id.as_str(), "s5");
    }

    #[test]
    fn leftover_temp_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        fs::write(dir.path().join("snapshots/.000000000001-x.json.tmp"), b"{").unwrap();
        assert!(c.list(None).unwrap().is_empty());
    }
}
