//! The catalog's records as RocksDB rows: writes the rows [`CatalogState::apply`] touched
//! (or every row, for a snapshot install) and loads the whole state back at open.

use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::{
    CF_HOSTS, CF_JOBS, CF_RANGES, CF_REMOTES, CF_SM, CF_SNAPSHOTS, CF_STORAGE, Db, StoreError,
};
use crate::raft::command::{JobDisk, JobStatus, RangeDone};
use crate::raft::state::{CatalogState, Counters, JobState, Key, StoredSnapshot};

const KEY_COUNTERS: &[u8] = b"counters";

/// A RocksDB row as iterated: key and value.
type Row = (Box<[u8]>, Box<[u8]>);

/// The `counters` row: sequence counters and the replica count.
#[derive(Serialize, Deserialize)]
struct CountersRow {
    counters: Counters,
    replicas: u32,
}

/// A job's row, without its ranges (each range is a row of its own, so accepting one
/// writes one small row).
#[derive(Serialize, Deserialize)]
struct JobRow {
    vm: String,
    host: String,
    disks: Vec<JobDisk>,
    status: JobStatus,
    ended: Option<u64>,
    #[serde(default)]
    range_bytes: u64,
    #[serde(default)]
    live: bool,
}

fn range_key(job: &str, disk: u32, index: u32) -> String {
    format!("{job}/{disk:010}/{index:010}")
}

fn json<T: Serialize>(db: &Db, what: &str, v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::BadRecord {
        path: db.path.clone(),
        what: what.into(),
        reason: e.to_string(),
    })
}

fn unjson<T: serde::de::DeserializeOwned>(
    db: &Db,
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::BadRecord {
        path: db.path.clone(),
        what: what.into(),
        reason: e.to_string(),
    })
}

/// Adds to `batch` the current form of each touched record (a delete if it is gone).
pub(super) fn write_touched<'a>(
    db: &Db,
    state: &CatalogState,
    keys: impl IntoIterator<Item = &'a Key>,
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    for k in keys {
        match k {
            Key::Snapshot { vm, id } => {
                let cf = db.cf(CF_SNAPSHOTS)?;
                let row = format!("{vm}/{id}");
                match state
                    .snapshots
                    .get(vm)
                    .and_then(|s| s.iter().find(|s| s.meta.id.as_str() == id))
                {
                    Some(s) => batch.put_cf(cf, row, json(db, "snapshot", s)?),
                    None => batch.delete_cf(cf, row),
                }
            }
            Key::Host(name) => {
                let cf = db.cf(CF_HOSTS)?;
                match state.hosts.get(name) {
                    Some(h) => batch.put_cf(cf, name, json(db, "host", h)?),
                    None => batch.delete_cf(cf, name),
                }
            }
            Key::Remote(name) => {
                let cf = db.cf(CF_REMOTES)?;
                match state.remotes.get(name) {
                    Some(r) => batch.put_cf(cf, name, r),
                    None => batch.delete_cf(cf, name),
                }
            }
            Key::StorageNode(id) => {
                let cf = db.cf(CF_STORAGE)?;
                match state.storage.nodes.get(id) {
                    Some(addr) => batch.put_cf(cf, id, addr),
                    None => batch.delete_cf(cf, id),
                }
            }
            Key::Counters => {
                let row = CountersRow {
                    counters: state.counters,
                    replicas: state.storage.replicas,
                };
                batch.put_cf(db.cf(CF_SM)?, KEY_COUNTERS, json(db, "counters", &row)?);
            }
            Key::Job(id) => {
                let cf = db.cf(CF_JOBS)?;
                match state.jobs.get(id) {
                    Some(j) => {
                        let row = JobRow {
                            vm: j.vm.clone(),
                            host: j.host.clone(),
                            disks: j.disks.clone(),
                            status: j.status.clone(),
                            ended: j.ended,
                            range_bytes: j.range_bytes,
                            live: j.live,
                        };
                        batch.put_cf(cf, id, json(db, "job", &row)?);
                    }
                    None => {
                        batch.delete_cf(cf, id);
                        // Every range row of the job: `job/` up to `job0` ('0' follows '/').
                        batch.delete_range_cf(
                            db.cf(CF_RANGES)?,
                            format!("{id}/"),
                            format!("{id}0"),
                        );
                    }
                }
            }
            Key::Range { job, disk, index } => {
                let cf = db.cf(CF_RANGES)?;
                let row = range_key(job, *disk, *index);
                match state
                    .jobs
                    .get(job)
                    .and_then(|j| j.done.get(&(*disk, *index)))
                {
                    Some(r) => batch.put_cf(cf, row, json(db, "range", r)?),
                    None => batch.delete_cf(cf, row),
                }
            }
        }
    }
    Ok(())
}

/// Adds to `batch` the removal of every catalog row and the rows of `state`.
pub(super) fn replace_all(
    db: &Db,
    state: &CatalogState,
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    for name in super::STATE_CFS {
        let cf = db.cf(name)?;
        for item in db.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.map_err(db.rocks("iterate"))?;
            batch.delete_cf(cf, k);
        }
    }
    let mut keys = vec![Key::Counters];
    for (vm, snaps) in &state.snapshots {
        keys.extend(snaps.iter().map(|s| Key::Snapshot {
            vm: vm.clone(),
            id: s.meta.id.to_string(),
        }));
    }
    keys.extend(state.hosts.keys().map(|h| Key::Host(h.clone())));
    keys.extend(state.remotes.keys().map(|r| Key::Remote(r.clone())));
    keys.extend(
        state
            .storage
            .nodes
            .keys()
            .map(|n| Key::StorageNode(n.clone())),
    );
    for (id, job) in &state.jobs {
        keys.push(Key::Job(id.clone()));
        keys.extend(job.done.keys().map(|(disk, index)| Key::Range {
            job: id.clone(),
            disk: *disk,
            index: *index,
        }));
    }
    write_touched(db, state, &keys, batch)
}

/// Loads the whole catalog from its rows.
pub(super) fn load(db: &Db) -> Result<CatalogState, StoreError> {
    let mut state = CatalogState::default();
    if let Some(v) = db.get(CF_SM, KEY_COUNTERS)? {
        let row: CountersRow = unjson(db, "counters", &v)?;
        state.counters = row.counters;
        state.storage.replicas = row.replicas;
    }
    let rows = |name: &'static str| -> Result<Vec<Row>, StoreError> {
        db.db
            .iterator_cf(db.cf(name)?, IteratorMode::Start)
            .map(|item| item.map_err(db.rocks("iterate")))
            .collect()
    };
    let text = |what: &str, b: &[u8]| -> Result<String, StoreError> {
        String::from_utf8(b.to_vec()).map_err(|e| StoreError::BadRecord {
            path: db.path.clone(),
            what: what.into(),
            reason: e.to_string(),
        })
    };
    for (_, v) in rows(CF_SNAPSHOTS)? {
        let s: StoredSnapshot = unjson(db, "snapshot", &v)?;
        state
            .snapshots
            .entry(s.meta.vm.clone())
            .or_default()
            .push(s);
    }
    for snaps in state.snapshots.values_mut() {
        snaps.sort_by_key(|s| s.seq);
    }
    for (k, v) in rows(CF_HOSTS)? {
        state
            .hosts
            .insert(text("host name", &k)?, unjson(db, "host", &v)?);
    }
    for (k, v) in rows(CF_REMOTES)? {
        state
            .remotes
            .insert(text("remote name", &k)?, text("remote", &v)?);
    }
    for (k, v) in rows(CF_STORAGE)? {
        state.storage.nodes.insert(
            text("storage node id", &k)?,
            text("storage node address", &v)?,
        );
    }
    for (k, v) in rows(CF_JOBS)? {
        let row: JobRow = unjson(db, "job", &v)?;
        state.jobs.insert(
            text("job id", &k)?,
            JobState {
                vm: row.vm,
                host: row.host,
                disks: row.disks,
                status: row.status,
                ended: row.ended,
                range_bytes: row.range_bytes,
                live: row.live,
                done: Default::default(),
            },
        );
    }
    for (k, v) in rows(CF_RANGES)? {
        let key = text("range key", &k)?;
        let bad = || StoreError::BadRecord {
            path: db.path.clone(),
            what: format!("range {key}"),
            reason: "key is not job/disk/index of a known job".into(),
        };
        let mut parts = key.rsplitn(3, '/');
        let (Some(index), Some(disk), Some(job)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (disk, index): (u32, u32) = match (disk.parse(), index.parse()) {
            (Ok(d), Ok(i)) => (d, i),
            _ => return Err(bad()),
        };
        let r: RangeDone = unjson(db, "range", &v)?;
        let Some(j) = state.jobs.get_mut(job) else {
            return Err(bad());
        };
        j.done.insert((disk, index), r);
    }
    Ok(state)
}
