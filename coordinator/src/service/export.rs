//! `bora catalog export`: the replicated catalog written as the data-dir files a single
//! coordinator kept before the catalog was replicated — `snapshots/<seq>-<id>.json` (in
//! commit order), `hosts/<name>.json`, `membership.json` — which is exactly what the
//! one-time import (`replicated`) reads. So restoring the catalog is: make the exported
//! directory a fresh coordinator's `data-dir` and start it; it imports the files once.
//!
//! Every file is written to a temporary name, fsynced and renamed; the directories are
//! fsynced at the end. The export is then read back with the import's own readers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use bora_core::host::HostSpec;
use bora_core::snapshot::SnapshotMeta;
use bora_proto::coordinator as pb;

use super::storage;
use crate::catalog::Catalog;
use crate::config::StorageNodeEntry;
use crate::inventory::Inventory;

/// The file describing an export (not read by the import).
pub const EXPORT_INFO: &str = "catalog-export.json";
const EXPORT_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0} is not empty: export into a new directory")]
    NotEmpty(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator sent {what} this bora cannot read: {reason}")]
    BadRecord { what: String, reason: String },
    #[error("the export in {path} does not read back: {reason}")]
    ReadBack { path: PathBuf, reason: String },
}

/// The catalog at one point, as the leader answered `ExportCatalog`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogExport {
    /// In commit order, oldest first.
    pub snapshots: Vec<SnapshotMeta>,
    pub hosts: Vec<HostSpec>,
    pub replicas: u32,
    pub nodes: Vec<StorageNodeEntry>,
    pub term: u64,
    pub applied: Option<u64>,
}

impl TryFrom<pb::ExportCatalogResponse> for CatalogExport {
    type Error = ExportError;

    fn try_from(r: pb::ExportCatalogResponse) -> Result<CatalogExport, ExportError> {
        let bad = |what: &str, e: serde_json::Error| ExportError::BadRecord {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let snapshots = r
            .snapshot_json
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| bad("a snapshot record", e)))
            .collect::<Result<Vec<SnapshotMeta>, _>>()?;
        let hosts = r
            .host_json
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| bad("a host record", e)))
            .collect::<Result<Vec<HostSpec>, _>>()?;
        Ok(CatalogExport {
            snapshots,
            hosts,
            replicas: r.replicas,
            nodes: r
                .nodes
                .into_iter()
                .map(|n| StorageNodeEntry {
                    id: n.id,
                    addr: n.addr,
                })
                .collect(),
            term: r.term,
            applied: r.applied,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ExportInfo {
    format: u32,
    term: u64,
    applied: Option<u64>,
    snapshots: usize,
    hosts: usize,
    storage_nodes: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` as `dir/name`: a temporary file, fsynced, renamed (the directory is
/// fsynced by the caller once every file is in).
fn write_synced(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))
}

fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn pretty(what: &str, v: &impl Serialize) -> Result<Vec<u8>, ExportError> {
    serde_json::to_vec_pretty(v).map_err(|e| ExportError::BadRecord {
        what: what.to_string(),
        reason: e.to_string(),
    })
}

impl CatalogExport {
    /// Writes the export into `dir`, which must not exist or be empty, durably; then
    /// reads it back as the import will.
    pub fn write_to(&self, dir: &Path) -> Result<(), ExportError> {
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(ExportError::NotEmpty(dir.to_path_buf()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io(dir))?;
            }
            Err(e) => return Err(io(dir)(e)),
        }
        let snaps = dir.join("snapshots");
        fs::create_dir_all(&snaps).map_err(io(&snaps))?;
        for (i, meta) in self.snapshots.iter().enumerate() {
            let name = format!("{:012}-{}.json", i + 1, meta.id);
            write_synced(
                &snaps,
                &name,
                &pretty(&format!("snapshot {}", meta.id), meta)?,
            )?;
        }
        sync_dir(&snaps)?;
        let hosts = dir.join("hosts");
        fs::create_dir_all(&hosts).map_err(io(&hosts))?;
        for h in &self.hosts {
            let name = format!("{}.json", h.name);
            write_synced(&hosts, &name, &pretty(&format!("host {}", h.name), h)?)?;
        }
        sync_dir(&hosts)?;
        let membership = storage::saved(self.replicas, self.nodes.clone());
        write_synced(
            dir,
            storage::FILE,
            &pretty("the storage membership", &membership)?,
        )?;
        let info = ExportInfo {
            format: EXPORT_FORMAT,
            term: self.term,
            applied: self.applied,
            snapshots: self.snapshots.len(),
            hosts: self.hosts.len(),
            storage_nodes: self.nodes.len(),
        };
        write_synced(dir, EXPORT_INFO, &pretty("the export info", &info)?)?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        self.check(dir)
    }

    /// Reads `dir` back with the import's readers: the same records in the same order.
    fn check(&self, dir: &Path) -> Result<(), ExportError> {
        let fail = |reason: String| ExportError::ReadBack {
            path: dir.to_path_buf(),
            reason,
        };
        let listed = Catalog::open(dir)
            .and_then(|c| c.list(None))
            .map_err(|e| fail(e.to_string()))?;
        if listed != self.snapshots {
            return Err(fail("the snapshot records differ".into()));
        }
        let mut hosts = Inventory::open(dir)
            .and_then(|i| i.list())
            .map_err(|e| fail(e.to_string()))?;
        let mut expected = self.hosts.clone();
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        if hosts != expected {
            return Err(fail("the host records differ".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CoordinatorConfig;
    use crate::raft::command::Command;
    use bora_core::host::QmpTarget;

    fn meta(vm: &str, id: &str, parent: Option<&str>) -> SnapshotMeta {
        SnapshotMeta {
            parent: parent.map(|p| p.parse().unwrap()),
            ..crate::raft::state::tests::meta(vm, id)
        }
    }

    #[test]
    fn an_export_reads_back_as_the_import_reads_a_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let host = HostSpec::new("h1".into(), QmpTarget::Dir("/run/qemu-server".into()), None);
        let export = CatalogExport {
            // Not sorted by id: commit order must be kept.
            snapshots: vec![
                meta("web", "s2", None),
                meta("db", "s1", None),
                meta("web", "s3", Some("s2")),
            ],
            hosts: vec![host.clone()],
            replicas: 2,
            nodes: vec![StorageNodeEntry {
                id: "sn-1".into(),
                addr: "127.0.0.1:7101".into(),
            }],
            term: 3,
            applied: Some(42),
        };
        let dir = tmp.path().join("export");
        export.write_to(&dir).unwrap();
        let listed = Catalog::open(&dir).unwrap().list(None).unwrap();
        assert_eq!(listed, export.snapshots);
        assert_eq!(Inventory::open(&dir).unwrap().list().unwrap(), vec![host]);
        let config = CoordinatorConfig::new("c", "127.0.0.1:0", &dir);
        let seed = storage::seed(&config).unwrap();
        assert_eq!(
            seed,
            vec![
                Command::AddStorageNode {
                    id: "sn-1".into(),
                    addr: "127.0.0.1:7101".into()
                },
                Command::SetReplicas { replicas: 2 },
            ]
        );
        let e = export.write_to(&dir).unwrap_err();
        assert!(matches!(e, ExportError::NotEmpty(_)), "{e}");
    }
}
