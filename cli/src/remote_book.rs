//! A cluster's remotes in its replicated catalog: [`RaftRemoteBook`], the
//! [`RemoteBook`] the coordinator process serves and replicates from. Each remote is kept
//! as its JSON (`bora_replica::remote::Remote`, validated here before it is proposed;
//! the coordinator crate keeps it opaque and knows nothing of the replica crate).
//!
//! Writes are proposals on the leader, reads are linearizable; on a coordinator that does
//! not lead both fail with the coordinator's own mapping of `NotLeader` (UNAVAILABLE, the
//! leader in `bora-leader`), which the CLI follows.
//!
//! **One-time import** ([`RaftRemoteBook::import_file`]): a coordinator whose data dir
//! has a `remotes.json` (kept there before remotes were replicated) adds them when it
//! leads, if the catalog has no remotes yet, then writes `data-dir/remotes-imported` and
//! never looks at the file again.

use std::path::Path;

use async_trait::async_trait;
use tracing::{info, warn};

use bora_coordinator::raft::{Command, RaftCatalog, RaftCatalogError, Refusal};
use bora_coordinator::service::{RequestError, to_status};
use bora_replica::book::{BookError, RemoteBook};
use bora_replica::remote::{self, Remote, RemoteError};

/// The marker written once a data dir's `remotes.json` was looked at by a leader.
pub const IMPORTED: &str = "remotes-imported";

/// The remotes of the replicated catalog this coordinator is a member of.
pub struct RaftRemoteBook {
    catalog: RaftCatalog,
}

/// A catalog error as the status its one mapping gives (`NotLeader` names the leader).
fn catalog_error(e: RaftCatalogError) -> BookError {
    BookError::Catalog(Box::new(to_status(RequestError::Raft(e))))
}

impl RaftRemoteBook {
    pub fn new(catalog: RaftCatalog) -> RaftRemoteBook {
        RaftRemoteBook { catalog }
    }

    /// Whether this coordinator leads now (a local check: no quorum round).
    pub fn leads(&self) -> bool {
        self.catalog.ensure_leading().is_ok()
    }

    /// Imports `dir`'s `remotes.json` once (see the module documentation): returns how
    /// many remotes were added. A remote already in the catalog is kept as it is.
    pub async fn import_file(&self, dir: &Path) -> Result<usize, BookError> {
        if dir.join(IMPORTED).exists() || !dir.join(remote::REMOTES_FILE).exists() {
            return Ok(0);
        }
        let from = dir.to_path_buf();
        let file = tokio::task::spawn_blocking(move || remote::load(&from))
            .await
            .map_err(|e| BookError::Task(e.to_string()))??;
        let mut added = 0;
        if self.list().await?.is_empty() {
            for r in file {
                let name = r.name.clone();
                match self.add(r, false).await {
                    Ok(()) => added += 1,
                    Err(BookError::Remote(e)) => {
                        warn!(remote = %name, error = %e, "remote of remotes.json not imported");
                    }
                    Err(e) => return Err(e),
                }
            }
            info!(dir = %dir.display(), remotes = added, "remotes.json imported into the replicated catalog");
        } else {
            info!(dir = %dir.display(), "the replicated catalog has remotes already; remotes.json not imported");
        }
        bora_core::fsutil::write_atomic(
            dir,
            IMPORTED,
            b"the remotes of remotes.json were offered to the replicated catalog\n",
        )
        .map_err(|e| {
            BookError::Remote(RemoteError::File {
                path: dir.join(IMPORTED),
                reason: e.to_string(),
            })
        })?;
        Ok(added)
    }
}

#[async_trait]
impl RemoteBook for RaftRemoteBook {
    async fn list(&self) -> Result<Vec<Remote>, BookError> {
        let stored = self
            .catalog
            .read(|s| s.remotes.clone())
            .await
            .map_err(catalog_error)?;
        stored
            .into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json).map_err(|e| {
                    BookError::Remote(RemoteError::Invalid {
                        name,
                        reason: format!("kept in the catalog in a form this bora cannot read: {e}"),
                    })
                })
            })
            .collect()
    }

    async fn add(&self, r: Remote, replace: bool) -> Result<(), BookError> {
        r.validate()?;
        let json = serde_json::to_string(&r).map_err(|e| RemoteError::Invalid {
            name: r.name.clone(),
            reason: e.to_string(),
        })?;
        let command = Command::AddRemote {
            name: r.name.clone(),
            remote: json,
            replace,
        };
        match self.catalog.propose(command).await {
            Ok(_) => Ok(()),
            Err(RaftCatalogError::Refused(Refusal::RemoteExists { name })) => {
                Err(RemoteError::Exists(name).into())
            }
            Err(RaftCatalogError::Refused(Refusal::Invalid { reason })) => {
                Err(RemoteError::Invalid {
                    name: r.name,
                    reason,
                }
                .into())
            }
            Err(e) => Err(catalog_error(e)),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), BookError> {
        let command = Command::RemoveRemote {
            name: name.to_string(),
        };
        match self.catalog.propose(command).await {
            Ok(_) => Ok(()),
            Err(RaftCatalogError::Refused(Refusal::NoRemote { .. })) => {
                Err(remote::unknown(name, &self.list().await?).into())
            }
            Err(e) => Err(catalog_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use bora_coordinator::raft::RaftCatalogConfig;
    use bora_coordinator::raft::network::grpc::GrpcNetwork;
    use bora_coordinator::service::LEADER_METADATA;
    use bora_replica::book::conformance;
    use bora_replica::remotes_service::book_status;

    use super::*;

    /// A catalog of one member (it needs no network) in `dir`, leading.
    async fn catalog(dir: &Path) -> RaftCatalog {
        let mut rc = RaftCatalogConfig::new(1, "127.0.0.1:1", dir.join("raft"));
        rc.heartbeat_ms = 50;
        rc.election_min_ms = 150;
        rc.election_max_ms = 300;
        let c = RaftCatalog::open(&rc, GrpcNetwork).await.expect("open");
        c.initialize(BTreeMap::from([(1, "127.0.0.1:1".to_string())]))
            .await
            .expect("initialize");
        let mut leading = c.leadership();
        tokio::time::timeout(Duration::from_secs(10), async {
            while leading.term().is_none() {
                leading.changed().await;
            }
        })
        .await
        .expect("a cluster of one leads");
        c
    }

    fn remote(name: &str) -> Remote {
        Remote {
            name: name.into(),
            url: format!("https://{name}.example:7300"),
            fingerprint: Some("cd".repeat(32)),
            ca_pem: None,
            token: Some("secret".into()),
            insecure: false,
            vms: vec![],
            auto: true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raft_book_conforms_and_keeps_remotes_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = catalog(dir.path()).await;
        let book = RaftRemoteBook::new(c.clone());
        assert!(book.leads());
        conformance::check(&book).await.unwrap();
        c.shutdown().await.unwrap();
        let book = RaftRemoteBook::new(catalog(dir.path()).await);
        let names: Vec<String> = book
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["dr2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remotes_json_is_imported_once_and_only_into_a_catalog_without_remotes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        remote::add(data, remote("dr"), false).unwrap();
        remote::add(data, remote("dr2"), false).unwrap();
        let book = RaftRemoteBook::new(catalog(data).await);
        assert_eq!(book.import_file(data).await.unwrap(), 2);
        assert_eq!(book.find("dr").await.unwrap(), remote("dr"), "token kept");
        book.remove("dr2").await.unwrap();
        // Once imported, the file is not read again: what was removed stays removed.
        assert_eq!(book.import_file(data).await.unwrap(), 0);
        assert_eq!(book.list().await.unwrap(), vec![remote("dr")]);

        // Another coordinator's file, offered to a catalog that has remotes: not taken.
        let other = tempfile::tempdir().unwrap();
        remote::add(other.path(), remote("old"), false).unwrap();
        assert_eq!(book.import_file(other.path()).await.unwrap(), 0);
        assert!(other.path().join(IMPORTED).exists());
        assert!(book.find("old").await.is_err());
        // No file: nothing to do, nothing written.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(book.import_file(empty.path()).await.unwrap(), 0);
        assert!(!empty.path().join(IMPORTED).exists());
    }

    #[test]
    fn not_leading_is_unavailable_naming_the_leader() {
        let e = catalog_error(RaftCatalogError::NotLeader {
            leader: Some((2, "127.0.0.1:7102".into())),
        });
        let s = book_status(e);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("2@127.0.0.1:7102")
        );
        assert_eq!(
            crate::cluster::leader_url(&s).as_deref(),
            Some("http://127.0.0.1:7102"),
            "the CLI follows it"
        );
    }
}
