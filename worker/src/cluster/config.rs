//! The worker's config file (TOML, kebab-case keys, unknown keys refused):
//!
//! ```toml
//! id = "worker-1"
//! coordinators = ["10.0.0.2:7100", "10.0.0.3:7100"]
//! # concurrency = 2
//! # heartbeat-ms = 1000
//! # read-limit-bytes-per-s = 104857600
//! # scratch-dir = "/var/tmp/bora"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bora_core::snapshot::check_name;

/// Most ranges one worker backs up at once.
pub const MAX_CONCURRENCY: usize = 64;
/// Shortest heartbeat period accepted.
pub const MIN_HEARTBEAT_MS: u64 = 10;

/// The worker's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WorkerConfig {
    /// This worker's name: leases are granted to it, so it must be unique in the cluster.
    pub id: String,
    /// Coordinators to ask for work, `HOST:PORT` each; when one is unreachable the next
    /// is tried, in turn.
    pub coordinators: Vec<String>,
    /// Ranges backed up at once (default 2, at most 64).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// How often the worker tells the coordinator it is alive and extends its leases, in
    /// milliseconds (default 1000; keep it well under the coordinator's `lease-ms`).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Caps each source's read rate in bytes per second (default: no cap), to make a
    /// benchmark cluster network-bound like a real one.
    #[serde(default)]
    pub read_limit_bytes_per_s: Option<u64>,
    /// Reserved for scratch images of live-VM backups; image and NBD sources do not use
    /// it. Created if missing.
    #[serde(default)]
    pub scratch_dir: Option<PathBuf>,
}

fn default_concurrency() -> usize {
    2
}

fn default_heartbeat_ms() -> u64 {
    1000
}

/// Why a worker config could not be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum WorkerConfigError {
    #[error("worker config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("worker config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("worker config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl WorkerConfig {
    /// A config with every optional key at its default.
    pub fn new(id: &str, coordinators: &[&str]) -> WorkerConfig {
        WorkerConfig {
            id: id.to_string(),
            coordinators: coordinators.iter().map(|c| c.to_string()).collect(),
            concurrency: default_concurrency(),
            heartbeat_ms: default_heartbeat_ms(),
            read_limit_bytes_per_s: None,
            scratch_dir: None,
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<WorkerConfig, WorkerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkerConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: WorkerConfig = toml::from_str(&text).map_err(|e| WorkerConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config
            .validate()
            .map_err(|reason| WorkerConfigError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(config)
    }

    /// Checks the values serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        check_name("worker id", &self.id)?;
        if self.coordinators.is_empty() {
            return Err("coordinators is empty: name at least one HOST:PORT".into());
        }
        for c in &self.coordinators {
            check_host_port(c)?;
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency is {}, expected 1 to {MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        if self.heartbeat_ms < MIN_HEARTBEAT_MS {
            return Err(format!(
                "heartbeat-ms is {}, at least {MIN_HEARTBEAT_MS}",
                self.heartbeat_ms
            ));
        }
        if self.read_limit_bytes_per_s == Some(0) {
            return Err(
                "read-limit-bytes-per-s must be more than 0 (leave it out for no cap)".into(),
            );
        }
        Ok(())
    }
}

/// `HOST:PORT` with a non-empty host (an IPv6 literal in brackets) and a numeric port.
fn check_host_port(s: &str) -> Result<(), String> {
    let bad = || format!("coordinator {s:?} is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.contains('/')
        && !host.chars().any(char::is_whitespace)
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WorkerConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, text).unwrap();
        WorkerConfig::load(&path).map_err(|e| {
            let e = e.to_string();
            assert!(e.contains("worker.toml"), "{e}");
            e
        })
    }

    #[test]
    fn defaults_and_every_key() {
        let c = load("id = \"w1\"\ncoordinators = [\"127.0.0.1:7100\"]\n").unwrap();
        assert_eq!(c, WorkerConfig::new("w1", &["127.0.0.1:7100"]));
        let c = load(
            "id = \"w1\"\ncoordinators = [\"a:1\", \"[::1]:2\"]\nconcurrency = 4\nheartbeat-ms = 250\nread-limit-bytes-per-s = 1000\nscratch-dir = \"/tmp/s\"\n",
        )
        .unwrap();
        assert_eq!((c.concurrency, c.heartbeat_ms), (4, 250));
        assert_eq!(c.read_limit_bytes_per_s, Some(1000));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let base = "id = \"w1\"\ncoordinators = [\"a:1\"]\n";
        for (extra, needle) in [
            ("heartbeat_ms = 5\n", "unknown field `heartbeat_ms`"),
            ("threads = 5\n", "unknown field `threads`"),
            ("concurrency = 0\n", "concurrency"),
            ("heartbeat-ms = 1\n", "heartbeat-ms"),
            ("read-limit-bytes-per-s = 0\n", "read-limit"),
        ] {
            let e = load(&format!("{base}{extra}")).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let e = load("id = \"w1\"\ncoordinators = []\n").unwrap_err();
        assert!(e.contains("coordinators is empty"), "{e}");
        let e = load("id = \"w1\"\ncoordinators = [\"http://a:1\"]\n").unwrap_err();
        assert!(e.contains("not HOST:PORT"), "{e}");
    }
}

/// The example in deploy/cluster/ is what operators copy: it must load, with every key set.
#[cfg(test)]
mod deploy_example {
    use super::*;

    #[test]
    fn the_deploy_example_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster/worker.toml");
        let c = WorkerConfig::load(&path).expect("deploy example");
        assert_eq!(c.read_limit_bytes_per_s, Some(104_857_600));
    }
}
