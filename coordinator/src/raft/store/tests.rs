//! The store against openraft's storage conformance suite, and the catalog's rows across
//! a reopen and a snapshot install (real RocksDB in temp dirs).

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError};
use tempfile::TempDir;

use super::*;
use crate::raft::command::Command;
use crate::raft::state::tests::{accept, commit, start};
use crate::raft::{Entry, NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open(dir.path()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(1, 0, index),
        payload: EntryPayload::Normal(command),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_survives_a_reopen_and_travels_in_a_snapshot() {
    let dir = TempDir::new().unwrap();
    let commands = vec![
        start("j1", "vm1", &[2]),
        accept("j1", 0, 0, 1),
        accept("j1", 0, 0, 2), // refused: first result wins
        accept("j1", 0, 1, 3),
        commit("j1", "vm1"),
        Command::AddStorageNode {
            id: "sn1".into(),
            addr: "127.0.0.1:7001".into(),
        },
        Command::SetReplicas { replicas: 3 },
        Command::AddRemote {
            name: "dr".into(),
            remote: r#"{"name":"dr","url":"https://dr:7300"}"#.into(),
            replace: false,
        },
        start("j2", "vm2", &[3]),
        accept("j2", 0, 2, 4),
    ];
    let entries: Vec<Entry> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64 + 1, c))
        .collect();
    let (log, mut sm) = open(dir.path()).unwrap();
    let outcomes = sm.apply(entries.clone()).await.unwrap();
    assert!(outcomes[2].is_err());
    assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 1);
    let before = sm.reader().read().state.clone();
    assert_eq!(before.latest("vm1").map(|m| m.id.as_str()), Some("j1"));
    assert_eq!(before.jobs["j2"].done.len(), 1);
    assert_eq!(before.remotes.len(), 1);
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    drop((log, sm));

    let (mut log2, mut sm2) = open(dir.path()).unwrap();
    assert_eq!(
        sm2.reader().read().state,
        before,
        "rows reload to the same state"
    );
    let (applied, _) = sm2.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 0, 10)));
    let current = sm2.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snapshot.meta);
    log2.purge(log_id(1, 0, 5)).await.unwrap();
    let state = log2.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 0, 5)));

    // A fresh member installs the snapshot and holds the same catalog, durably.
    let other = TempDir::new().unwrap();
    let (_, mut sm3) = open(other.path()).unwrap();
    sm3.apply(vec![entry(1, start("zz", "vm9", &[1]))])
        .await
        .unwrap();
    sm3.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(
        sm3.reader().read().state,
        before,
        "install replaces everything"
    );
    drop(sm3);
    let (_, sm3) = open(other.path()).unwrap();
    assert_eq!(sm3.reader().read().state, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_before_remotes_were_replicated_opens_privately_and_keeps_them() {
    let dir = TempDir::new().unwrap();
    {
        // The column families of a store written by an earlier build.
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let old: Vec<&str> = ALL_CFS.into_iter().filter(|c| *c != CF_REMOTES).collect();
        let db = rocksdb::DB::open_cf(&opts, dir.path(), old).unwrap();
        assert!(db.cf_handle(CF_REMOTES).is_none());
    }
    let (log, mut sm) = open(dir.path()).unwrap();
    assert!(sm.reader().read().state.remotes.is_empty());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the store holds tokens: private");
    let add = Command::AddRemote {
        name: "dr".into(),
        remote: r#"{"name":"dr","url":"https://dr:7300"}"#.into(),
        replace: false,
    };
    assert!(sm.apply(vec![entry(1, add)]).await.unwrap()[0].is_ok());
    drop((log, sm));
    let (_, sm) = open(dir.path()).unwrap();
    assert_eq!(
        sm.reader().read().state.remotes["dr"],
        r#"{"name":"dr","url":"https://dr:7300"}"#
    );
}
