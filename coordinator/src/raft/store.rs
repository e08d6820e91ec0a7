//! The replicated catalog's storage: one RocksDB database per coordinator holding the Raft
//! log and vote ([`LogStore`]) and the state machine ([`StateMachine`]) in column families.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | log index, 8 bytes big-endian | an openraft `Entry` (codec) |
//! | `raft` | `vote`, `committed`, `purged` | codec |
//! | `sm` | `format`, `applied`, `membership`, `counters` | codec |
//! | `snapshot` | `current` | the last built or installed snapshot (meta + data, codec) |
//! | `snapshots` | `vm/id` | a snapshot record with its commit sequence (JSON) |
//! | `hosts` | host name | `HostSpec` (JSON) |
//! | `storage` | storage node id | its address |
//! | `jobs` | job id | the job's header (JSON, without its ranges) |
//! | `ranges` | `job/disk/index` (zero-padded) | the accepted `RangeDone` (JSON) |
//! | `remotes` | remote name | its definition (JSON, with its token) |
//!
//! A store made before a column family existed (`remotes`) gains it empty when opened
//! (`create_missing_column_families`).
//!
//! **Durability: every write is a synced RocksDB write** (`WriteOptions::set_sync`: the
//! WAL is fsynced before the call returns). A log append is acknowledged to openraft only
//! after its sync, so a vote or an entry this member answered for survives a power cut.
//! Each apply writes the touched records, the applied log id and the membership in one
//! synced batch, so the state machine never runs ahead of or behind its applied id, and a
//! log purge (which follows a snapshot of applied state) can never lose an entry whose
//! effect is not durable. The one unsynced write is the committed index, a hint: after a
//! crash a member re-learns it from the leader.

mod log;
mod rows;
mod sm;

#[cfg(test)]
mod tests;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, DB, Options, WriteBatch, WriteOptions};

pub use log::LogStore;
pub use sm::{StateMachine, StateReader};

use super::NodeId;
use super::codec::CodecError;

/// Version of this database's layout.
pub const STORE_FORMAT_VERSION: u32 = 1;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_SNAPSHOT: &str = "snapshot";
pub(crate) const CF_SNAPSHOTS: &str = "snapshots";
pub(crate) const CF_HOSTS: &str = "hosts";
pub(crate) const CF_STORAGE: &str = "storage";
pub(crate) const CF_JOBS: &str = "jobs";
pub(crate) const CF_RANGES: &str = "ranges";
pub(crate) const CF_REMOTES: &str = "remotes";

const ALL_CFS: [&str; 10] = [
    CF_LOG,
    CF_RAFT,
    CF_SM,
    CF_SNAPSHOT,
    CF_SNAPSHOTS,
    CF_HOSTS,
    CF_STORAGE,
    CF_JOBS,
    CF_RANGES,
    CF_REMOTES,
];

/// The column families holding the catalog's records (replaced whole by a snapshot).
pub(crate) const STATE_CFS: [&str; 6] = [
    CF_SNAPSHOTS,
    CF_HOSTS,
    CF_STORAGE,
    CF_JOBS,
    CF_RANGES,
    CF_REMOTES,
];

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("raft store {path}: rocksdb {op}: {source}")]
    Rocks {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error(
        "raft store {path}: format version {found} is newer than this build ({STORE_FORMAT_VERSION}); upgrade bora"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("raft store {path}: record {what} is unreadable: {source}")]
    Decode {
        path: PathBuf,
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("raft store {path}: cannot encode {what}: {source}")]
    Encode {
        path: PathBuf,
        what: String,
        #[source]
        source: CodecError,
    },
    #[error("raft store {path}: record {what} is unreadable: {reason}")]
    BadRecord {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("raft store {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raft store {path}: no column family {name:?}")]
    MissingColumnFamily { path: PathBuf, name: &'static str },
    #[error("raft store: blocking task: {0}")]
    Task(String),
}

/// The database shared by the log store and the state machine.
pub(crate) struct Db {
    // Fields drop in order: the database closes (and unlocks its directory) before
    // `closed` says so.
    db: DB,
    path: PathBuf,
    closed: SetOnDrop,
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Db {
    fn open(path: &Path) -> Result<Db, StoreError> {
        // Private to the coordinator's user: the catalog holds the remotes' tokens.
        let dir_err = |source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(dir_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Rocks {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
        Ok(Db {
            db,
            path: path.to_path_buf(),
            closed: SetOnDrop(Arc::new(AtomicBool::new(false))),
        })
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::MissingColumnFamily {
                path: self.path.clone(),
                name,
            })
    }

    pub(crate) fn rocks(&self, op: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError + '_ {
        move |source| StoreError::Rocks {
            path: self.path.clone(),
            op,
            source,
        }
    }

    pub(crate) fn get(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf)?, key).map_err(self.rocks("get"))
    }

    /// Writes `batch` durably (the WAL is fsynced before this returns).
    pub(crate) fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(self.rocks("write"))
    }

    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: impl Into<String>,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        super::codec::decode(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            what: what.into(),
            source,
        })
    }

    pub(crate) fn encode<T: serde::Serialize + ?Sized>(
        &self,
        what: impl Into<String>,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        super::codec::encode(value).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            what: what.into(),
            source,
        })
    }

    /// Writes `batch` to the WAL without waiting for an fsync (for hints that may be
    /// lost in a crash, such as the committed index).
    pub(crate) fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.db.write(batch).map_err(self.rocks("write"))
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.get(CF_SM, b"format")? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_SM)?,
                    b"format",
                    self.encode("format", &STORE_FORMAT_VERSION)?,
                );
                self.write_synced(batch)
            }
            Some(v) => {
                let found: u32 = self.decode("format", &v)?;
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::NewerFormat {
                        path: self.path.clone(),
                        found,
                    });
                }
                Ok(())
            }
        }
    }
}

/// Tells whether the database was closed: after a member shut down, openraft's tasks
/// (replication streams hold log readers) drop their handles a little later, and RocksDB
/// keeps the directory locked until the last one goes.
pub struct ClosedWatch(Arc<AtomicBool>);

impl ClosedWatch {
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Opens (creating if missing) the store at `path`: the log store and the state machine
/// (its state loaded from the database). Refuses a store of a newer format.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), StoreError> {
    let db = Arc::new(Db::open(path)?);
    db.check_format()?;
    let sm = StateMachine::load(db.clone())?;
    Ok((LogStore::new(db), sm))
}

/// Runs a blocking RocksDB call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// A store error as openraft takes it (openraft stops the member on any storage error: a
/// broken disk is fatal, not a failed request).
pub(crate) fn to_raft(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(StoreError) -> StorageError<NodeId> {
    move |e| StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}
