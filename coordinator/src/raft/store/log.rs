//! The Raft log and vote in RocksDB (openraft's `RaftLogStorage`). Entries are keyed by
//! their index (big-endian, so RocksDB's order is the log's order). Every write is synced
//! before it is acknowledged (see the module documentation of `store`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::{CF_LOG, CF_RAFT, Db, StoreError, blocking, to_raft};
use crate::raft::{Entry, NodeId, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log store: cheap to clone (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(super) fn new(db: Arc<Db>) -> LogStore {
        LogStore { db }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
    ) -> Result<Option<T>, StoreError> {
        match self.db.get(CF_RAFT, key)? {
            None => Ok(None),
            Some(v) => Ok(Some(self.db.decode(String::from_utf8_lossy(key), &v)?)),
        }
    }

    /// Writes one metadata record; `synced`: fsynced before this returns.
    async fn write_meta<T: serde::Serialize + Send + Sync + 'static>(
        &self,
        key: &'static [u8],
        value: T,
        synced: bool,
    ) -> Result<(), StoreError> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(
                db.cf(CF_RAFT)?,
                key,
                db.encode(String::from_utf8_lossy(key), &value)?,
            );
            if synced {
                db.write_synced(batch)
            } else {
                db.write_unsynced(batch)
            }
        })
        .await
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let cf = self.db.cf(CF_LOG)?;
        let Some(item) = self.db.db.iterator_cf(cf, IteratorMode::End).next() else {
            return Ok(None);
        };
        let (_, v) = item.map_err(self.db.rocks("iterate log"))?;
        let entry: Entry = self.db.decode("last log entry", &v)?;
        Ok(Some(entry.log_id))
    }

    fn entries(&self, start: u64, end: Bound<u64>) -> Result<Vec<Entry>, StoreError> {
        let cf = self.db.cf(CF_LOG)?;
        let from = key(start);
        let mut out = Vec::new();
        for item in self
            .db
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (k, v) = item.map_err(self.db.rocks("iterate log"))?;
            let index = <[u8; 8]>::try_from(&*k)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::BadRecord {
                    path: self.db.path.clone(),
                    what: "log key".into(),
                    reason: format!("{} bytes, expected 8", k.len()),
                })?;
            let past = match end {
                Bound::Included(e) => index > e,
                Bound::Excluded(e) => index >= e,
                Bound::Unbounded => false,
            };
            if past {
                break;
            }
            let entry: Entry = self.db.decode(format!("log entry {index}"), &v)?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        self.entries(start, end)
            .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let read = to_raft(ErrorSubject::Logs, ErrorVerb::Read);
        let purged: Option<LogId<NodeId>> = self.read_meta(KEY_PURGED).map_err(read)?;
        let last = self
            .last_entry_id()
            .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Read))?
            .or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(KEY_VOTE, *vote, true)
            .await
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(KEY_VOTE)
            .map_err(to_raft(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write_meta(KEY_COMMITTED, committed, false)
            .await
            .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)
            .map_err(to_raft(ErrorSubject::Store, ErrorVerb::Read))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.db.clone();
        let written = blocking(move || {
            let cf = db.cf(CF_LOG)?;
            let mut batch = WriteBatch::default();
            for e in &entries {
                let value = db.encode(format!("log entry {}", e.log_id.index), e)?;
                batch.put_cf(cf, key(e.log_id.index), value);
            }
            db.write_synced(batch)
        })
        .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(to_raft(ErrorSubject::Logs, ErrorVerb::Write)(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(db.cf(CF_LOG)?, key(log_id.index), key(u64::MAX));
            db.write_synced(batch)
        })
        .await
        .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let db = self.db.clone();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(db.cf(CF_RAFT)?, KEY_PURGED, db.encode("purged", &log_id)?);
            batch.delete_range_cf(db.cf(CF_LOG)?, key(0), key(log_id.index.saturating_add(1)));
            db.write_synced(batch)
        })
        .await
        .map_err(to_raft(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
