//! The host inventory of the embedded default: one JSON record per registered host in
//! `catalog/hosts/`, written atomically. (The cluster keeps the same records in its
//! replicated state.)

use std::fs;
use std::path::{Path, PathBuf};

use bora_core::host::{HOST_FORMAT_VERSION, HostSpec};
use bora_core::snapshot::check_name;

use crate::catalog::{CatalogError, io};
use crate::fsutil::write_atomic;

pub struct Inventory {
    dir: PathBuf,
}

impl Inventory {
    pub fn open(catalog_dir: &Path) -> Result<Inventory, CatalogError> {
        let dir = catalog_dir.join("hosts");
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Inventory { dir })
    }

    /// Registers `host`, replacing a host of the same name only with `replace`.
    pub fn add(&self, host: &HostSpec, replace: bool) -> Result<(), CatalogError> {
        check_name("host", &host.name).map_err(|reason| CatalogError::BadRecord {
            path: self.dir.join(&host.name),
            reason,
        })?;
        let name = format!("{}.json", host.name);
        let path = self.dir.join(&name);
        if path.exists() && !replace {
            return Err(CatalogError::HostExists(host.name.clone()));
        }
        let text = serde_json::to_vec_pretty(host).map_err(|e| CatalogError::BadRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.dir, &name, &text).map_err(io(&path))
    }

    /// Every registered host, by name.
    pub fn list(&self) -> Result<Vec<HostSpec>, CatalogError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = e.map_err(io(&self.dir))?.path();
            let is_record = path.extension().is_some_and(|x| x == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            let text = fs::read(&path).map_err(io(&path))?;
            let host: HostSpec =
                serde_json::from_slice(&text).map_err(|e| CatalogError::BadRecord {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if host.format > HOST_FORMAT_VERSION {
                return Err(CatalogError::BadRecord {
                    path,
                    reason: format!("format version {} is newer than this build", host.format),
                });
            }
            out.push(host);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<HostSpec, CatalogError> {
        self.list()?
            .into_iter()
            .find(|h| h.name == name)
            .ok_or_else(|| CatalogError::NoHost(name.to_string()))
    }

    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        let path = self.dir.join(format!("{name}.json"));
        if !path.exists() {
            return Err(CatalogError::NoHost(name.to_string()));
        }
        fs::remove_file(&path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::host::QmpTarget;

    #[test]
    fn add_list_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(dir.path()).unwrap();
        let h = HostSpec::new("h1".into(), QmpTarget::Dir("/run/qemu-server".into()), None);
        inv.add(&h, false).unwrap();
        assert!(matches!(
            inv.add(&h, false),
            Err(CatalogError::HostExists(_))
        ));
        inv.add(&h, true).unwrap();
        assert_eq!(inv.list().unwrap(), vec![h.clone()]);
        assert_eq!(inv.get("h1").unwrap(), h);
        assert!(matches!(inv.get("h2"), Err(CatalogError::NoHost(_))));
        inv.remove("h1").unwrap();
        assert!(inv.list().unwrap().is_empty());
        let bad = HostSpec::new("a/b".into(), QmpTarget::Socket("/x".into()), None);
        assert!(inv.add(&bad, false).is_err());
    }
}
