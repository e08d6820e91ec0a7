//! A storage node's configuration file (TOML).
//!
//! ```toml
//! id = "sn-1"
//! listen = "127.0.0.1:7101"
//! data-dir = "/var/lib/bora/sn-1"
//! ```
//!
//! Unknown keys are refused, so a misspelt key is an error rather than a silently ignored
//! setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest node id accepted.
pub const MAX_ID_LEN: usize = 64;

/// One storage node's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageNodeConfig {
    /// The node's name in the cluster: 1–64 characters out of `A-Z a-z 0-9 _ . -`. Chunk
    /// placement is computed from it, so renaming a node moves its chunks: keep it stable.
    pub id: String,
    /// Address the gRPC service listens on, as `IP:PORT` (e.g. `"127.0.0.1:7101"` or
    /// `"[::]:7101"`); port 0 picks a free port. Only this address is bound.
    pub listen: String,
    /// Directory holding the node's chunk index (`index/`, RocksDB) and packs (`packs/`);
    /// created if missing. A relative path is taken relative to the directory of the
    /// config file.
    pub data_dir: PathBuf,
    /// The cluster's name (default none). A storage node whose config names another
    /// cluster is not taken for a member, even at a member's address (a port reused after
    /// a crash, another cluster on the same machine). `bora up` sets a random one.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// A setting that is not acceptable.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidConfig {
    /// The offending key, as written in the file.
    pub key: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read storage node config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (unknown key, missing key, wrong type).
    #[error("storage node config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A setting's value is not acceptable.
    #[error("storage node config {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: InvalidConfig,
    },
}

impl StorageNodeConfig {
    /// Reads, parses and validates the config file at `path`; a relative `data-dir` is
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<StorageNodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: StorageNodeConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.validate().map_err(|source| ConfigError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new(""));
            config.data_dir = base.join(&config.data_dir);
        }
        Ok(config)
    }

    /// Checks every setting (what [`Self::load`] does after parsing).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |key, reason: String| InvalidConfig { key, reason };
        if self.id.is_empty() || self.id.len() > MAX_ID_LEN {
            return Err(invalid(
                "id",
                format!(
                    "must be 1 to {MAX_ID_LEN} characters, got {}",
                    self.id.len()
                ),
            ));
        }
        if let Some(c) = self
            .id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(invalid(
                "id",
                format!("{:?} contains {c:?}; use only A-Z a-z 0-9 _ . -", self.id),
            ));
        }
        self.listen_addr()
            .map_err(|e| invalid("listen", format!("{:?} is not IP:PORT: {e}", self.listen)))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data-dir", "must not be empty".into()));
        }
        Ok(())
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        self.listen.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("storage-node.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn loads_a_config_and_resolves_a_relative_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "id = \"sn-1\"\nlisten = \"127.0.0.1:7101\"\ndata-dir = \"data/sn-1\"\n",
        );
        let config = StorageNodeConfig::load(&path).expect("load");
        assert_eq!(config.id, "sn-1");
        assert_eq!(config.listen_addr().expect("addr").port(), 7101);
        assert_eq!(config.data_dir, dir.path().join("data/sn-1"));

        let path = write(
            dir.path(),
            "id = \"a_b.c-9\"\nlisten = \"[::1]:0\"\ndata-dir = \"/srv/bora\"\n",
        );
        let config = StorageNodeConfig::load(&path).expect("load");
        assert_eq!(config.data_dir, PathBuf::from("/srv/bora"));
    }

    #[test]
    fn refuses_unknown_keys_and_bad_values_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (
                "id = \"sn-1\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"d\"\nreplicas = 3\n",
                "replicas",
            ),
            ("id = \"sn-1\"\nlisten = \"127.0.0.1:1\"\n", "data-dir"),
            (
                "id = \"sn-1\"\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n",
                "data_dir",
            ),
            (
                "id = \"\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"d\"\n",
                "id: must be 1 to 64",
            ),
            (
                "id = \"sn 1\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"d\"\n",
                "contains ' '",
            ),
            (
                "id = \"sn-1\"\nlisten = \"localhost:7101\"\ndata-dir = \"d\"\n",
                "listen: \"localhost:7101\" is not IP:PORT",
            ),
            (
                "id = \"sn-1\"\nlisten = \"127.0.0.1\"\ndata-dir = \"d\"\n",
                "listen",
            ),
            (
                "id = \"sn-1\"\nlisten = \"127.0.0.1:1\"\ndata-dir = \"\"\n",
                "data-dir: must not be empty",
            ),
        ];
        for (text, expected) in cases {
            let path = write(dir.path(), text);
            let e = StorageNodeConfig::load(&path).expect_err(text).to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
            assert!(e.contains("storage-node.toml"), "{e}");
        }
        let e = StorageNodeConfig::load(&dir.path().join("absent.toml")).expect_err("absent");
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("absent.toml"), "{e}");
    }
}

/// The example in deploy/cluster/ is what operators copy: it must load, with every key set.
#[cfg(test)]
mod deploy_example {
    use super::*;

    #[test]
    fn the_deploy_example_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/cluster/storage-node.toml");
        let c = StorageNodeConfig::load(&path).expect("deploy example");
        assert_eq!(c.id, "storage-1");
    }
}
