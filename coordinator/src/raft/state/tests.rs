//! Tests of `CatalogState::apply`: examples of each command, and property tests over
//! random command sequences checking that a range is done once (the first result wins),
//! a committed snapshot is never lost or changed, a job commits only with every range,
//! and that apply is deterministic.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;

use bora_core::host::{HostSpec, QmpTarget};
use bora_core::snapshot::{DiskStats, SNAPSHOT_FORMAT_VERSION, SnapshotMeta};

use super::*;
use crate::raft::command::{JobDisk, JobEnd, JobStart, RangeDone};

pub(crate) fn meta(vm: &str, id: &str) -> SnapshotMeta {
    SnapshotMeta {
        format: SNAPSHOT_FORMAT_VERSION,
        id: id.parse().expect("test snapshot id"),
        vm: vm.into(),
        time: "2026-11-28T00:00:00Z".into(),
        parent: None,
        disks: vec![],
    }
}

pub(crate) fn start(id: &str, vm: &str, ranges: &[u32]) -> Command {
    Command::StartJob(JobStart {
        id: id.into(),
        vm: vm.into(),
        host: "h1".into(),
        disks: ranges
            .iter()
            .enumerate()
            .map(|(i, r)| JobDisk {
                name: format!("d{i}"),
                size: u64::from(*r) << 20,
                chunk_size: 1 << 20,
                source: format!("/img/{vm}-{i}"),
                ranges: *r,
                bitmap: None,
                parent: None,
                cbt: None,
            })
            .collect(),
        range_bytes: 1 << 20,
        live: false,
    })
}

pub(crate) fn accept(job: &str, disk: u32, index: u32, lease: u64) -> Command {
    Command::AcceptRange {
        job: job.into(),
        disk,
        index,
        result: RangeDone {
            worker: format!("w{lease}"),
            lease,
            chunks: 1,
            pieces: vec![],
            stats: DiskStats::default(),
        },
    }
}

pub(crate) fn commit(job: &str, vm: &str) -> Command {
    Command::EndJob {
        job: job.into(),
        end: JobEnd::Committed {
            meta: meta(vm, job),
        },
    }
}

#[test]
fn a_job_commits_once_every_range_has_its_first_result() {
    let mut s = CatalogState::default();
    assert_eq!(
        s.apply(&start("j1", "vm1", &[2, 1])).0,
        Ok(Applied::JobStarted { ranges: 3 })
    );
    assert!(matches!(
        s.apply(&start("j2", "vm1", &[1])).0,
        Err(Refusal::VmBusy { .. })
    ));
    assert_eq!(
        s.apply(&accept("j1", 0, 0, 1)).0,
        Ok(Applied::RangeAccepted { done: 1, total: 3 })
    );
    let (twice, touched) = s.apply(&accept("j1", 0, 0, 2));
    assert_eq!(
        twice,
        Err(Refusal::RangeDone {
            job: "j1".into(),
            disk: 0,
            index: 0,
            lease: 1
        })
    );
    assert!(touched.is_empty(), "a refusal touches nothing");
    assert!(matches!(
        s.apply(&accept("j1", 1, 1, 3)).0,
        Err(Refusal::NoSuchRange { .. })
    ));
    assert!(matches!(
        s.apply(&commit("j1", "vm1")).0,
        Err(Refusal::RangesMissing { missing: 2, .. })
    ));
    s.apply(&accept("j1", 0, 1, 4)).0.unwrap();
    s.apply(&accept("j1", 1, 0, 5)).0.unwrap();
    let Ok(Applied::JobEnded {
        status: JobStatus::Committed,
        snapshot: Some(m),
    }) = s.apply(&commit("j1", "vm1")).0
    else {
        panic!("job should commit");
    };
    assert_eq!(m.parent, None);
    assert_eq!(s.latest("vm1"), Some(&m));
    assert!(matches!(
        s.apply(&accept("j1", 0, 0, 6)).0,
        Err(Refusal::JobEnded { .. })
    ));
    // The next job of the VM gets the first snapshot as its parent.
    s.apply(&start("j3", "vm1", &[1])).0.unwrap();
    s.apply(&accept("j3", 0, 0, 7)).0.unwrap();
    let Ok(Applied::JobEnded {
        snapshot: Some(m3), ..
    }) = s.apply(&commit("j3", "vm1")).0
    else {
        panic!("job should commit");
    };
    assert_eq!(m3.parent.as_ref().map(|p| p.as_str()), Some("j1"));
    assert_eq!(s.list(Some("vm1")).len(), 2);
}

#[test]
fn hosts_storage_and_snapshot_records() {
    let mut s = CatalogState::default();
    let h = HostSpec::new("h1".into(), QmpTarget::Dir("/run/qemu".into()), None);
    s.apply(&Command::AddHost {
        host: h.clone(),
        replace: false,
    })
    .0
    .unwrap();
    assert!(matches!(
        s.apply(&Command::AddHost {
            host: h.clone(),
            replace: false
        })
        .0,
        Err(Refusal::HostExists { .. })
    ));
    s.apply(&Command::RemoveHost { name: "h1".into() })
        .0
        .unwrap();
    assert!(s.hosts.is_empty());
    let add = Command::AddStorageNode {
        id: "sn1".into(),
        addr: "127.0.0.1:7001".into(),
    };
    let (_, touched) = s.apply(&add);
    assert_eq!(touched, vec![Key::StorageNode("sn1".into())]);
    let (_, touched) = s.apply(&add);
    assert!(touched.is_empty(), "the same address changes nothing");
    assert!(matches!(
        s.apply(&Command::AddStorageNode {
            id: "sn2".into(),
            addr: "no port".into()
        })
        .0,
        Err(Refusal::Invalid { .. })
    ));
    assert!(matches!(
        s.apply(&Command::SetReplicas { replicas: 0 }).0,
        Err(Refusal::Invalid { .. })
    ));
    let given = Command::CommitSnapshot {
        meta: meta("vm2", "s1"),
        parent: Parent::AsGiven,
    };
    s.apply(&given).0.unwrap();
    assert!(matches!(
        s.apply(&given).0,
        Err(Refusal::DuplicateSnapshot { .. })
    ));
    assert!(matches!(
        s.apply(&start("s1", "vm3", &[1])).0,
        Err(Refusal::DuplicateJob { .. })
    ));
}

#[test]
fn ended_jobs_beyond_the_limit_are_forgotten_oldest_first() {
    let mut s = CatalogState::default();
    for i in 0..KEEP_ENDED_JOBS + 2 {
        let id = format!("j{i}");
        s.apply(&start(&id, "vm", &[1])).0.unwrap();
        s.apply(&Command::EndJob {
            job: id,
            end: JobEnd::Cancelled,
        })
        .0
        .unwrap();
    }
    assert_eq!(s.jobs.len(), KEEP_ENDED_JOBS);
    assert!(!s.jobs.contains_key("j0") && !s.jobs.contains_key("j1"));
    assert!(s.jobs.contains_key("j2"));
}

#[derive(Clone, Debug)]
enum Op {
    Start {
        job: usize,
        vm: usize,
        ranges: Vec<u32>,
    },
    Accept {
        job: usize,
        disk: u32,
        index: u32,
    },
    Commit {
        job: usize,
        vm: usize,
    },
    Fail {
        job: usize,
    },
    Cancel {
        job: usize,
    },
    Push {
        id: usize,
        vm: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..6usize, 0..3usize, vec(1u32..4, 1..3))
            .prop_map(|(job, vm, ranges)| Op::Start { job, vm, ranges }),
        8 => (0..6usize, 0..3u32, 0..4u32).prop_map(|(job, disk, index)| Op::Accept { job, disk, index }),
        3 => (0..6usize, 0..3usize).prop_map(|(job, vm)| Op::Commit { job, vm }),
        1 => (0..6usize).prop_map(|job| Op::Fail { job }),
        1 => (0..6usize).prop_map(|job| Op::Cancel { job }),
        1 => (0..8usize, 0..3usize).prop_map(|(id, vm)| Op::Push { id, vm }),
    ]
}

fn command(op: &Op, lease: u64) -> Command {
    let job = |j: &usize| format!("j{j}");
    match op {
        Op::Start { job: j, vm, ranges } => start(&job(j), &format!("vm{vm}"), ranges),
        Op::Accept {
            job: j,
            disk,
            index,
        } => accept(&job(j), *disk, *index, lease),
        Op::Commit { job: j, vm } => commit(&job(j), &format!("vm{vm}")),
        Op::Fail { job: j } => Command::EndJob {
            job: job(j),
            end: JobEnd::Failed {
                error: "boom".into(),
            },
        },
        Op::Cancel { job: j } => Command::EndJob {
            job: job(j),
            end: JobEnd::Cancelled,
        },
        Op::Push { id, vm } => Command::CommitSnapshot {
            meta: meta(&format!("vm{vm}"), &format!("p{id}")),
            parent: Parent::Latest,
        },
    }
}

proptest! {
    #[test]
    fn ranges_are_done_once_and_committed_snapshots_stay(ops in vec(op(), 0..200)) {
        let mut s = CatalogState::default();
        let mut replay = CatalogState::default();
        // (job, disk, index) → the lease whose result was accepted first.
        let mut first: BTreeMap<(String, u32, u32), u64> = BTreeMap::new();
        let mut committed: BTreeMap<String, SnapshotMeta> = BTreeMap::new();
        for (n, op) in ops.iter().enumerate() {
            let c = command(op, n as u64 + 1);
            let (outcome, touched) = s.apply(&c);
            prop_assert_eq!(&replay.apply(&c).0, &outcome, "apply is deterministic");
            if outcome.is_err() {
                prop_assert!(touched.is_empty());
            }
            if let Command::AcceptRange { job, disk, index, result } = &c {
                let key = (job.clone(), *disk, *index);
                match (&outcome, first.get(&key)) {
                    (Ok(_), None) => { first.insert(key, result.lease); }
                    (Ok(_), Some(l)) => prop_assert!(false, "range {:?} accepted twice (first lease {})", key, l),
                    (Err(Refusal::RangeDone { lease, .. }), Some(l)) => prop_assert_eq!(lease, l),
                    (Err(Refusal::RangeDone { .. }), None) => prop_assert!(false, "refused a range never done"),
                    (Err(_), _) => {}
                }
            }
            match &outcome {
                Ok(Applied::Snapshot { meta }) | Ok(Applied::JobEnded { snapshot: Some(meta), .. }) => {
                    prop_assert!(committed.insert(meta.id.to_string(), meta.clone()).is_none());
                }
                _ => {}
            }
            if let Command::EndJob { job, end: JobEnd::Committed { .. } } = &c
                && outcome.is_ok()
            {
                let j = &s.jobs[job];
                prop_assert_eq!(j.done.len() as u64, j.total());
            }
            for m in committed.values() {
                prop_assert_eq!(s.get(&m.vm, m.id.as_str()), Some(m), "snapshot lost or changed");
            }
        }
        prop_assert_eq!(&s, &replay);
        let text = serde_json::to_vec(&s).unwrap();
        prop_assert_eq!(serde_json::from_slice::<CatalogState>(&text).unwrap(), s);
    }
}

#[test]
fn forgetting_snapshots_removes_only_the_vms_named_records() {
    let mut s = CatalogState::default();
    for (vm, id) in [("a", "s1"), ("a", "s2"), ("b", "s3"), ("a", "s4")] {
        s.apply(&Command::CommitSnapshot {
            meta: meta(vm, id),
            parent: Parent::AsGiven,
        })
        .0
        .unwrap();
    }
    let (outcome, touched) = s.apply(&Command::ForgetSnapshots {
        vm: "a".into(),
        ids: vec!["s1".into(), "s3".into(), "s9".into()],
    });
    assert_eq!(
        outcome,
        Ok(Applied::Forgotten {
            ids: vec!["s1".into()]
        }),
        "s3 is vm b's, s9 does not exist"
    );
    assert_eq!(
        touched,
        vec![Key::Snapshot {
            vm: "a".into(),
            id: "s1".into()
        }]
    );
    let left: Vec<String> = s.list(None).iter().map(|m| m.id.to_string()).collect();
    assert_eq!(left, ["s2", "s3", "s4"]);
    s.apply(&Command::ForgetSnapshots {
        vm: "b".into(),
        ids: vec!["s3".into()],
    })
    .0
    .unwrap();
    assert!(
        !s.snapshots.contains_key("b"),
        "a VM with none left is gone"
    );
}

/// A remote's definition as the replica crate would write it (opaque to the catalog).
fn remote_json(name: &str, url: &str) -> String {
    serde_json::json!({ "name": name, "url": url, "token": "t0ken" }).to_string()
}

fn add_remote(name: &str, url: &str, replace: bool) -> Command {
    Command::AddRemote {
        name: name.into(),
        remote: remote_json(name, url),
        replace,
    }
}

#[test]
fn remotes_are_replaced_only_when_asked_and_removed_only_when_there() {
    let mut s = CatalogState::default();
    assert_eq!(
        s.apply(&add_remote("dr", "https://a:1", false)),
        (Ok(Applied::Remote), vec![Key::Remote("dr".into())])
    );
    assert_eq!(
        s.apply(&add_remote("dr", "https://b:1", false)).0,
        Err(Refusal::RemoteExists { name: "dr".into() })
    );
    assert_eq!(s.remotes["dr"], remote_json("dr", "https://a:1"));
    assert!(s.apply(&add_remote("dr", "https://b:1", true)).0.is_ok());
    assert_eq!(s.remotes["dr"], remote_json("dr", "https://b:1"));
    assert_eq!(
        s.apply(&Command::RemoveRemote { name: "x".into() }).0,
        Err(Refusal::NoRemote { name: "x".into() })
    );
    assert_eq!(
        s.apply(&Command::RemoveRemote { name: "dr".into() }),
        (Ok(Applied::Remote), vec![Key::Remote("dr".into())])
    );
    assert!(s.remotes.is_empty());
    // What the catalog checks itself: the name, and a JSON object of that name.
    for (name, remote) in [
        ("bad/name", remote_json("bad/name", "https://a:1")),
        ("dr", "not json".to_string()),
        ("dr", remote_json("other", "https://a:1")),
        ("dr", "{}".to_string()),
    ] {
        let c = Command::AddRemote {
            name: name.into(),
            remote,
            replace: true,
        };
        assert!(
            matches!(s.apply(&c), (Err(Refusal::Invalid { .. }), ref t) if t.is_empty()),
            "{c:?} accepted"
        );
    }
    assert!(s.remotes.is_empty());
}

#[test]
fn a_state_saved_before_remotes_were_replicated_loads_without_them() {
    let mut s = CatalogState::default();
    assert!(s.apply(&start("j1", "vm1", &[1])).0.is_ok());
    let mut value = serde_json::to_value(&s).unwrap();
    value.as_object_mut().unwrap().remove("remotes");
    let old: CatalogState = serde_json::from_value(value).unwrap();
    assert_eq!(old, s);
    assert!(old.remotes.is_empty());
}

proptest! {
    #[test]
    fn remotes_follow_a_model_of_adds_replaces_and_removes(
        ops in vec((0..4usize, 0..3u8, any::<bool>(), any::<bool>()), 0..60)
    ) {
        let mut s = CatalogState::default();
        let mut model: BTreeMap<String, String> = BTreeMap::new();
        for (n, (name, version, remove, replace)) in ops.into_iter().enumerate() {
            let name = format!("r{name}");
            let c = match remove {
                true => Command::RemoveRemote { name: name.clone() },
                false => add_remote(&name, &format!("https://h{version}:{n}"), replace),
            };
            let (outcome, touched) = s.apply(&c);
            let existed = model.contains_key(&name);
            match &c {
                Command::RemoveRemote { .. } => {
                    prop_assert_eq!(outcome.is_ok(), existed);
                    model.remove(&name);
                }
                Command::AddRemote { remote, .. } => {
                    prop_assert_eq!(outcome.is_ok(), !existed || replace);
                    if outcome.is_ok() {
                        model.insert(name.clone(), remote.clone());
                    }
                }
                _ => unreachable!(),
            }
            match outcome {
                Ok(_) => prop_assert_eq!(touched, vec![Key::Remote(name)]),
                Err(_) => prop_assert!(touched.is_empty()),
            }
            prop_assert_eq!(&s.remotes, &model);
        }
        let text = serde_json::to_vec(&s).unwrap();
        prop_assert_eq!(serde_json::from_slice::<CatalogState>(&text).unwrap(), s);
    }
}
