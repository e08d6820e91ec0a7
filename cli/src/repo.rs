//! A local repository: the embedded default's catalog and chunk store in one directory,
//! held by one process at a time.
//!
//! ```text
//! REPO/bora-repo.json   format version and chunk size
//! REPO/lock             flock()ed by the process using the repository; holds its pid
//! REPO/catalog/         snapshot records and registered hosts (bora-coordinator)
//! REPO/scratch/         fleecing scratch images during live VM backups (default)
//! REPO/store/           chunk store: RocksDB index + pack objects (bora-storage-node)
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use bora_coordinator::catalog::Catalog;
use bora_coordinator::inventory::Inventory;
use bora_core::index::check_chunk_size;
use bora_storage_node::LocalChunkStore;

pub const REPO_FORMAT_VERSION: u32 = 1;
pub use bora_core::index::DEFAULT_CHUNK_SIZE;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RepoConfig {
    /// Repository format version.
    pub format: u32,
    /// Chunk size of new snapshot indexes, in bytes.
    pub chunk_size: u32,
}

pub struct Repo {
    pub dir: PathBuf,
    pub config: RepoConfig,
    pub catalog: Catalog,
    pub inventory: Inventory,
    pub store: Arc<LocalChunkStore>,
    _lock: File,
}

/// The default repository: `$XDG_DATA_HOME/bora`, else `~/.local/share/bora`.
pub fn default_repo_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("bora");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/bora")
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let pid = pid.trim();
            let pid = if pid.is_empty() { "?" } else { pid };
            bail!(
                "repository {} is locked by pid {pid}; wait for that bora command to finish (or stop it) and retry",
                dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    f.flush()?;
    Ok(f)
}

impl Repo {
    /// Opens the repository in `dir`, creating it (with `chunk_size`, or the default)
    /// when it does not exist and `create` is set.
    pub fn open(dir: &Path, create: bool, chunk_size: Option<u32>) -> Result<Repo> {
        let config_path = dir.join("bora-repo.json");
        if !config_path.exists() {
            if !create {
                bail!(
                    "no repository at {} (back something up first, or pass --repo)",
                    dir.display()
                );
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create repository {}", dir.display()))?;
        }
        let lock = lock(dir)?;
        let config = if config_path.exists() {
            let text = std::fs::read(&config_path)
                .with_context(|| format!("cannot read {}", config_path.display()))?;
            let config: RepoConfig = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a repository config", config_path.display()))?;
            if config.format > REPO_FORMAT_VERSION {
                bail!(
                    "repository {} has format {}, newer than this bora reads ({REPO_FORMAT_VERSION}); upgrade bora",
                    dir.display(),
                    config.format
                );
            }
            config
        } else {
            let config = RepoConfig {
                format: REPO_FORMAT_VERSION,
                chunk_size: chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
            };
            check_chunk_size(config.chunk_size)?;
            let tmp = dir.join(".bora-repo.json.tmp");
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&config)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &config_path)?;
            File::open(dir)?.sync_all()?;
            config
        };
        let catalog = Catalog::open(&dir.join("catalog"))?;
        let inventory = Inventory::open(&dir.join("catalog"))?;
        // In-process: the worker hashed the very bytes it hands the store (see verify_puts).
        let store = LocalChunkStore::open(&dir.join("store"))
            .with_context(|| format!("cannot open the chunk store of {}", dir.display()))?
            .verify_puts(false);
        Ok(Repo {
            dir: dir.to_path_buf(),
            config,
            catalog,
            inventory,
            store: Arc::new(store),
            _lock: lock,
        })
    }
}
