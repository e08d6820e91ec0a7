//! The coordinator's config file (TOML, kebab-case keys, unknown keys refused):
//!
//! ```toml
//! id = "coord-1"
//! listen = "127.0.0.1:7100"
//! data-dir = "/var/lib/bora/coordinator"
//! # replicas = 2
//! # lease-ms = 30000
//! # max-attempts = 3
//! # per-host-limit = 4
//! # range-bytes = 1073741824
//!
//! [[storage-nodes]]
//! id = "sn-1"
//! addr = "10.0.0.11:7200"
//! ```
//!
//! `storage-nodes` (and `replicas`) seed the storage membership on a cluster's first start
//! only: the membership then lives in the replicated catalog (`data-dir/raft`) and is
//! changed through the `AddStorageNode` / `RemoveStorageNode` RPCs (edit it through the
//! RPCs, not here). A `membership.json` left by an older single coordinator seeds it
//! instead of this list. `replicas`, when set, applies on every start (proposed by the
//! leader; with several coordinators their configs should agree).
//!
//! `[raft]` (optional) names this coordinator's member id and every member's address;
//! without it the coordinator is a replicated cluster of one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use bora_core::snapshot::check_name;

use crate::planner::DEFAULT_RANGE_BYTES;

/// Shortest lease accepted: heartbeats must fit well inside one.
pub const MIN_LEASE_MS: u64 = 50;
/// Smallest range accepted (the smallest chunk size).
pub const MIN_RANGE_BYTES: u64 = 64 << 10;

/// The coordinator's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CoordinatorConfig {
    /// This coordinator's name in the cluster (shown by `Status`); 1-128 characters
    /// without '/'.
    pub id: String,
    /// Where to serve gRPC: `HOST:PORT` (only this address is bound). Port 0 picks a free
    /// port; `BoundCoordinator::local_addr` tells which.
    pub listen: String,
    /// The coordinator's state: the replicated catalog (`raft/`: snapshot records, hosts,
    /// storage membership) and the lease epoch (`epoch.json`). Created if missing.
    /// `snapshots/`, `hosts/` and `membership.json` of older versions are imported once.
    pub data_dir: PathBuf,
    /// The cluster's name (default none). A storage node whose config names another
    /// cluster is not taken for a member, even at a member's address (a port reused after
    /// a crash, another cluster on the same machine). `bora up` sets a random one.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Copies wanted of each chunk. Default 2; while there are fewer storage nodes, every
    /// node holds a copy (min(replicas, nodes)).
    #[serde(default)]
    pub replicas: Option<u32>,
    /// How long a worker's lease on a range lasts without a heartbeat, in milliseconds
    /// (default 30000, at least 50). A worker silent this long loses its range to another
    /// worker; workers count as down after 3 lease periods of silence.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Leases one range may be given before its job fails (default 3). Expired leases
    /// count, so a range that kills every worker reading it ends the job.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// At most this many ranges of one hypervisor host's jobs leased at once (default: no
    /// limit).
    #[serde(default)]
    pub per_host_limit: Option<usize>,
    /// About this many bytes per leased range, rounded up to whole chunks (default 1 GiB,
    /// at least 64 KiB).
    #[serde(default = "default_range_bytes")]
    pub range_bytes: u64,
    /// Storage nodes that seed the membership on the first start (see the module
    /// documentation).
    #[serde(default)]
    pub storage_nodes: Vec<StorageNodeEntry>,
    /// Receive second-site replication from other clusters on a listener of its own
    /// (default: off); see [`crate::replica_config`].
    #[serde(default)]
    pub replica: Option<crate::replica_config::ReplicaListenConfig>,
    /// The replicated catalog's cluster of coordinators (default: none, this coordinator
    /// is a Raft cluster of one, its member address the bound `listen` address).
    #[serde(default)]
    pub raft: Option<RaftSection>,
}

/// `[raft]`: this coordinator's member id and every member's address. Each member serves
/// the `Raft` service on its own `listen` address, which must be its entry in `members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaftSection {
    /// This member's id (a positive integer, never reused for another data dir).
    pub id: u64,
    /// Member id (as a string key: TOML keys are strings) → `HOST:PORT` of its coordinator.
    pub members: std::collections::BTreeMap<String, String>,
    /// Leader heartbeat interval, ms (default 100).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A follower that heard no leader for a random time in this range starts an
    /// election, ms (defaults 500 and 1000).
    #[serde(default = "default_election_min_ms")]
    pub election_min_ms: u64,
    #[serde(default = "default_election_max_ms")]
    pub election_max_ms: u64,
    /// A Raft snapshot of the catalog is built every this many log entries (default
    /// 10000)…
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// …and the log before it is purged but for the last `keep-logs` entries (default
    /// 1000): a member that was away for fewer entries catches up from the log, one away
    /// longer from the snapshot.
    #[serde(default = "default_keep_logs")]
    pub keep_logs: u64,
}

fn default_snapshot_every() -> u64 {
    10_000
}

fn default_keep_logs() -> u64 {
    1_000
}

fn default_heartbeat_ms() -> u64 {
    100
}

fn default_election_min_ms() -> u64 {
    500
}

fn default_election_max_ms() -> u64 {
    1000
}

impl RaftSection {
    /// The members with their ids parsed.
    pub fn member_map(&self) -> Result<std::collections::BTreeMap<u64, String>, String> {
        self.members
            .iter()
            .map(|(id, addr)| {
                let id: u64 =
                    id.parse().ok().filter(|i| *i > 0).ok_or_else(|| {
                        format!("raft member id {id:?} is not a positive integer")
                    })?;
                check_host_port(&format!("raft member {id} address"), addr)?;
                Ok((id, addr.clone()))
            })
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        let members = self.member_map()?;
        if !members.contains_key(&self.id) {
            return Err(format!("raft id {} is not among raft members", self.id));
        }
        if self.heartbeat_ms == 0 || self.election_min_ms <= self.heartbeat_ms {
            return Err(
                "raft election-min-ms must be above heartbeat-ms (and both above 0)".into(),
            );
        }
        if self.election_max_ms <= self.election_min_ms {
            return Err("raft election-max-ms must be above election-min-ms".into());
        }
        if self.snapshot_every == 0 {
            return Err("raft snapshot-every must be at least 1".into());
        }
        Ok(())
    }
}

/// One storage node of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageNodeEntry {
    /// The node's name: its chunks' placement depends on it, so it must never change.
    pub id: String,
    /// Where its Storage service listens: `HOST:PORT` (or `http://HOST:PORT`).
    pub addr: String,
}

fn default_lease_ms() -> u64 {
    30_000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_range_bytes() -> u64 {
    DEFAULT_RANGE_BYTES
}

/// Why a config could not be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("coordinator config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("coordinator config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl CoordinatorConfig {
    /// A config with every optional key at its default.
    pub fn new(id: &str, listen: &str, data_dir: &Path) -> CoordinatorConfig {
        CoordinatorConfig {
            id: id.to_string(),
            listen: listen.to_string(),
            data_dir: data_dir.to_path_buf(),
            replicas: None,
            lease_ms: default_lease_ms(),
            max_attempts: default_max_attempts(),
            per_host_limit: None,
            range_bytes: default_range_bytes(),
            storage_nodes: Vec::new(),
            cluster: None,
            replica: None,
            raft: None,
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: CoordinatorConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }

    /// Checks the values serde cannot: names, addresses and ranges.
    pub fn validate(&self) -> Result<(), String> {
        check_name("coordinator id", &self.id)?;
        check_host_port("listen", &self.listen)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err("data-dir is empty".into());
        }
        if self.replicas == Some(0) {
            return Err("replicas must be at least 1".into());
        }
        if self.lease_ms < MIN_LEASE_MS {
            return Err(format!(
                "lease-ms is {}, at least {MIN_LEASE_MS}",
                self.lease_ms
            ));
        }
        if self.max_attempts == 0 {
            return Err("max-attempts must be at least 1".into());
        }
        if self.range_bytes < MIN_RANGE_BYTES {
            return Err(format!(
                "range-bytes is {}, at least {MIN_RANGE_BYTES}",
                self.range_bytes
            ));
        }
        for (i, n) in self.storage_nodes.iter().enumerate() {
            check_node(&n.id, &n.addr)?;
            if self.storage_nodes[..i].iter().any(|m| m.id == n.id) {
                return Err(format!("storage node {} is listed twice", n.id));
            }
        }
        if let Some(r) = &self.replica {
            r.validate()?;
        }
        if let Some(r) = &self.raft {
            r.validate()?;
        }
        Ok(())
    }
}

/// A storage node's id and address, as the config and `AddStorageNode` accept them.
pub(crate) fn check_node(id: &str, addr: &str) -> Result<(), String> {
    check_name("storage node", id)?;
    let bare = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    check_host_port(&format!("storage node {id} address"), bare)
}

/// `HOST:PORT` with a non-empty host (an IPv6 literal in brackets) and a numeric port.
pub(crate) fn check_host_port(what: &str, s: &str) -> Result<(), String> {
    let bad = || format!("{what} {s:?} is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.contains('/')
        && !host.chars().any(char::is_whitespace)
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn a_minimal_file_takes_the_defaults() {
        let (_d, path) = write("id = \"c1\"\nlisten = \"127.0.0.1:0\"\ndata-dir = \"/tmp/x\"\n");
        let c = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(
            c,
            CoordinatorConfig::new("c1", "127.0.0.1:0", Path::new("/tmp/x"))
        );
        assert_eq!((c.lease_ms, c.max_attempts), (30_000, 3));
    }

    #[test]
    fn every_key_parses() {
        let (_d, path) = write(
            r#"
id = "c1"
listen = "[::1]:7100"
data-dir = "/tmp/x"
replicas = 3
lease-ms = 500
max-attempts = 5
per-host-limit = 2
range-bytes = 1048576
[[storage-nodes]]
id = "sn-1"
addr = "127.0.0.1:7201"
[[storage-nodes]]
id = "sn-2"
addr = "http://localhost:7202"
"#,
        );
        let c = CoordinatorConfig::load(&path).unwrap();
        assert_eq!(c.replicas, Some(3));
        assert_eq!(c.per_host_limit, Some(2));
        assert_eq!(c.storage_nodes.len(), 2);
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file() {
        let (_d, path) =
            write("id = \"c1\"\nlisten = \"127.0.0.1:0\"\ndata-dir = \"/tmp/x\"\nlease_ms = 5\n");
        let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("coordinator.toml"), "{e}");
        assert!(e.contains("unknown field `lease_ms`"), "{e}");
        let (_d, path) = write(
            "id = \"c1\"\nlisten = \"127.0.0.1:0\"\ndata-dir = \"/x\"\n[[storage-nodes]]\nid = \"a\"\naddr = \"h:1\"\nweight = 2\n",
        );
        let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field `weight`"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        let base = "id = \"c1\"\ndata-dir = \"/tmp/x\"\n";
        for (extra, needle) in [
            ("listen = \"127.0.0.1\"\n", "not HOST:PORT"),
            ("listen = \"h:99999\"\n", "not HOST:PORT"),
            ("listen = \"h:1\"\nlease-ms = 1\n", "lease-ms"),
            ("listen = \"h:1\"\nreplicas = 0\n", "replicas"),
            ("listen = \"h:1\"\nmax-attempts = 0\n", "max-attempts"),
            (
                "listen = \"h:1\"\n[[storage-nodes]]\nid = \"a\"\naddr = \"h:1\"\n[[storage-nodes]]\nid = \"a\"\naddr = \"h:2\"\n",
                "listed twice",
            ),
            (
                "listen = \"h:1\"\n[[storage-nodes]]\nid = \"a/b\"\naddr = \"h:1\"\n",
                "storage node",
            ),
            (
                "listen = \"h:1\"\n[raft]\nid = 2\nmembers = { 1 = \"h:1\" }\n",
                "not among raft members",
            ),
            (
                "listen = \"h:1\"\n[raft]\nid = 1\nmembers = { x = \"h:1\" }\n",
                "positive integer",
            ),
        ] {
            let (_d, path) = write(&format!("{base}{extra}"));
            let e = CoordinatorConfig::load(&path).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
            assert!(e.contains("coordinator.toml"), "{e}");
        }
        let missing = CoordinatorConfig::load(Path::new("/nonexistent/c.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/c.toml"));
    }
}

/// The example in deploy/cluster/ is what operators copy: it must load, with every key set.
#[cfg(test)]
mod deploy_example {
    use super::*;

    #[test]
    fn the_deploy_example_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/cluster/coordinator.toml");
        let c = CoordinatorConfig::load(&path).expect("deploy example");
        assert_eq!(c.storage_nodes.len(), 3);
        assert_eq!(c.per_host_limit, Some(4));
        assert!(c.replica.is_some_and(|r| r.tls_cert.is_some()));
        let raft = c.raft.expect("[raft] in the deploy example");
        assert_eq!(raft.id, 1);
        assert_eq!(raft.member_map().unwrap().len(), 3);
    }
}
