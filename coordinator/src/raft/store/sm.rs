//! The state machine (openraft's `RaftStateMachine`): the catalog in memory for reads,
//! its records in RocksDB rows for durability, and state-machine snapshots (the whole
//! catalog, encoded) for compaction and for members that fell behind the purged log.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use rocksdb::WriteBatch;
use tracing::{debug, info};

use super::{CF_SM, CF_SNAPSHOT, Db, StoreError, blocking, rows, to_raft};
use crate::raft::command::{Applied, Outcome};
use crate::raft::state::CatalogState;
use crate::raft::{Entry, Node, NodeId, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAP_META: &[u8] = b"current-meta";
const KEY_SNAP_DATA: &[u8] = b"current-data";

/// What the state machine holds in memory.
pub struct AppliedState {
    pub state: CatalogState,
    pub applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, Node>,
}

/// A read handle on the applied state, for the facade's reads.
#[derive(Clone)]
pub struct StateReader(Arc<RwLock<AppliedState>>);

impl StateReader {
    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        // Every change is made whole under the lock (no call inside can panic halfway),
        // so a poisoned lock still guards a consistent state.
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The state machine. Cloning shares it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    inner: Arc<RwLock<AppliedState>>,
    /// Snapshots built by this process, for unique snapshot ids.
    built: Arc<AtomicU64>,
}

impl StateMachine {
    pub(super) fn load(db: Arc<Db>) -> Result<StateMachine, StoreError> {
        let state = rows::load(&db)?;
        let applied = match db.get(CF_SM, KEY_APPLIED)? {
            Some(v) => db.decode("applied", &v)?,
            None => None,
        };
        let membership = match db.get(CF_SM, KEY_MEMBERSHIP)? {
            Some(v) => db.decode("membership", &v)?,
            None => StoredMembership::default(),
        };
        Ok(StateMachine {
            db,
            inner: Arc::new(RwLock::new(AppliedState {
                state,
                applied,
                membership,
            })),
            built: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn reader(&self) -> StateReader {
        StateReader(self.inner.clone())
    }

    /// Tells when the database is closed (every clone of the store dropped).
    pub fn closed(&self) -> super::ClosedWatch {
        super::ClosedWatch(self.db.closed.0.clone())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppliedState> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the applied id and membership to `batch`.
    fn put_applied(&self, a: &AppliedState, batch: &mut WriteBatch) -> Result<(), StoreError> {
        let cf = self.db.cf(CF_SM)?;
        batch.put_cf(cf, KEY_APPLIED, self.db.encode("applied", &a.applied)?);
        batch.put_cf(
            cf,
            KEY_MEMBERSHIP,
            self.db.encode("membership", &a.membership)?,
        );
        Ok(())
    }

    fn put_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        data: &[u8],
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        let cf = self.db.cf(CF_SNAPSHOT)?;
        batch.put_cf(cf, KEY_SNAP_META, self.db.encode("snapshot meta", meta)?);
        batch.put_cf(cf, KEY_SNAP_DATA, data);
        Ok(())
    }

    async fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let db = self.db.clone();
        blocking(move || db.write_synced(batch)).await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let fail = to_raft(ErrorSubject::StateMachine, ErrorVerb::Read);
        let (data, meta) = {
            let a = self.read();
            let data = self.db.encode("snapshot", &a.state).map_err(fail)?;
            let n = self.built.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &a.applied {
                Some(id) => format!("{}-{}-{n}", id.leader_id, id.index),
                None => format!("empty-{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id: a.applied,
                last_membership: a.membership.clone(),
                snapshot_id,
            };
            (data, meta)
        };
        let mut batch = WriteBatch::default();
        self.put_snapshot(&meta, &data, &mut batch)
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        self.write_synced(batch)
            .await
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write))?;
        info!(snapshot = %meta.snapshot_id, bytes = data.len(), "catalog snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let a = self.read();
        Ok((a.applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let fail = to_raft(ErrorSubject::StateMachine, ErrorVerb::Write);
        let mut outcomes = Vec::new();
        let mut batch = WriteBatch::default();
        {
            let mut a = self.write();
            let mut touched = BTreeSet::new();
            for entry in entries {
                a.applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Ok(Applied::Nothing),
                    EntryPayload::Normal(command) => {
                        let (outcome, keys) = a.state.apply(&command);
                        debug!(index = entry.log_id.index, ?outcome, "applied");
                        touched.extend(keys);
                        outcome
                    }
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(Applied::Nothing)
                    }
                };
                outcomes.push(outcome);
            }
            rows::write_touched(&self.db, &a.state, &touched, &mut batch).map_err(fail)?;
            self.put_applied(&a, &mut batch)
                .map_err(to_raft(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        }
        self.write_synced(batch)
            .await
            .map_err(to_raft(ErrorSubject::StateMachine, ErrorVerb::Write))?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let state: CatalogState = self
            .db
            .decode("received snapshot", &data)
            .map_err(to_raft(subject(), ErrorVerb::Read))?;
        let mut batch = WriteBatch::default();
        let next = AppliedState {
            state,
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        rows::replace_all(&self.db, &next.state, &mut batch)
            .and_then(|()| self.put_applied(&next, &mut batch))
            .and_then(|()| self.put_snapshot(meta, &data, &mut batch))
            .map_err(to_raft(subject(), ErrorVerb::Write))?;
        self.write_synced(batch)
            .await
            .map_err(to_raft(subject(), ErrorVerb::Write))?;
        *self.write() = next;
        info!(snapshot = %meta.snapshot_id, "catalog snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let fail = to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read);
        let (Some(meta), Some(data)) = (
            self.db.get(CF_SNAPSHOT, KEY_SNAP_META).map_err(fail)?,
            self.db
                .get(CF_SNAPSHOT, KEY_SNAP_DATA)
                .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, Node> = self
            .db
            .decode("snapshot meta", &meta)
            .map_err(to_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
