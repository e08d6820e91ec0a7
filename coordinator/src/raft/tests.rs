//! In-process cluster tests of the replicated catalog: three (or four) members with real
//! RocksDB stores, talking through the in-memory network with lost, delayed and
//! partitioned messages and restarted members. Invariants checked: one leader per term;
//! committed snapshot records are never lost; a range's result is accepted once; a
//! minority cannot commit; a member whose log was compacted away catches up from a
//! snapshot. One test runs three members over real gRPC on 127.0.0.1.

mod grpc;
mod harness;

use std::time::Duration;

use harness::{Cluster, WAIT, snapshot_ids};

use crate::raft::command::{Applied, Command, JobStatus, Refusal};
use crate::raft::state::tests::{accept, commit, start};
use crate::raft::{RaftCatalogConfig, RaftCatalogError};

fn defaults(_: &mut RaftCatalogConfig) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_term_while_messages_are_lost_and_delayed() {
    let mut c = Cluster::start(3, 0x5eed_0001, defaults).await;
    c.router.set_loss(100);
    c.router.set_delay(0, 20);
    let mut ids = Vec::new();
    for round in 0..3 {
        for i in 0..5 {
            let id = format!("r{round}-{i}");
            c.commit_snapshot("vm1", &id).await;
            ids.push(id);
        }
        // Force an election: the leader goes down and comes back.
        let leader = c.leader().await;
        c.stop(leader).await;
        c.commit_snapshot("vm1", &format!("r{round}-x")).await;
        ids.push(format!("r{round}-x"));
        c.restart(leader).await;
    }
    c.router.set_loss(0);
    c.router.set_delay(0, 0);
    let state = c.converged().await;
    let (delivered, lost) = c.router.counts();
    assert!(
        lost > 0 && delivered > lost,
        "faults were injected: {delivered} delivered, {lost} lost"
    );
    assert!(
        c.leaders.lock().unwrap().len() >= 3,
        "several terms were led"
    );
    c.assert_one_leader_per_term();
    let present = snapshot_ids(&state);
    for id in &ids {
        assert!(present.contains(id), "committed snapshot {id} was lost");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_snapshots_survive_leader_changes_and_restarts() {
    let mut c = Cluster::start(3, 0x5eed_0002, defaults).await;
    let mut ids = Vec::new();
    for step in 0..3 {
        for i in 0..4 {
            let id = format!("s{step}-{i}");
            c.commit_snapshot(&format!("vm{i}"), &id).await;
            ids.push(id);
        }
        let leader = c.leader().await;
        c.stop(leader).await;
        c.restart(leader).await;
    }
    // Every member down at once, then back: everything committed is still there.
    for id in c.ids.clone() {
        c.stop(id).await;
    }
    for id in c.ids.clone() {
        c.restart(id).await;
    }
    c.commit_snapshot("vm0", "after").await;
    ids.push("after".into());
    let state = c.converged().await;
    assert_eq!(snapshot_ids(&state), ids.iter().cloned().collect());
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit() {
    let c = Cluster::start(3, 0x5eed_0003, defaults).await;
    c.commit_snapshot("vm1", "before").await;
    let old = c.leader().await;
    c.router.isolate(&[old], &c.ids.clone());
    // The isolated leader cannot get its entry committed...
    let lonely = c.nodes[&old]
        .propose(Command::CommitSnapshot {
            meta: crate::raft::state::tests::meta("vm1", "minority"),
            parent: crate::raft::command::Parent::AsGiven,
        })
        .await;
    assert!(
        matches!(
            lonely,
            Err(RaftCatalogError::Uncertain(_) | RaftCatalogError::NotLeader { .. })
        ),
        "{lonely:?}"
    );
    assert!(!snapshot_ids(&c.nodes[&old].read_local(|s| s.clone())).contains("minority"));
    // ...nor confirm a linearizable read...
    assert!(c.nodes[&old].read(|s| s.list(None).len()).await.is_err());
    // ...while the majority elects a leader and commits.
    let majority: Vec<_> = c.ids.iter().copied().filter(|id| *id != old).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let new = loop {
        let leaders: Vec<_> = majority
            .iter()
            .filter(|id| c.nodes[id].status().state == "leader")
            .collect();
        if let Some(id) = leaders.first() {
            break **id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the majority elected no leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.nodes[&new]
        .propose(Command::CommitSnapshot {
            meta: crate::raft::state::tests::meta("vm1", "majority"),
            parent: crate::raft::command::Parent::AsGiven,
        })
        .await
        .expect("the majority commits");
    c.router.heal();
    let state = c.converged().await;
    let ids = snapshot_ids(&state);
    assert!(ids.contains("before") && ids.contains("majority"));
    assert!(
        !ids.contains("minority"),
        "the minority's entry was discarded"
    );
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_result_applied_twice_is_refused_even_after_a_leader_change() {
    let mut c = Cluster::start(3, 0x5eed_0004, defaults).await;
    assert_eq!(
        c.propose(start("j1", "vm1", &[2])).await,
        Ok(Applied::JobStarted { ranges: 2 })
    );
    c.propose(accept("j1", 0, 0, 1))
        .await
        .expect("first result");
    let refused = Err(Refusal::RangeDone {
        job: "j1".into(),
        disk: 0,
        index: 0,
        lease: 1,
    });
    assert_eq!(c.propose(accept("j1", 0, 0, 2)).await, refused);
    let leader = c.leader().await;
    c.stop(leader).await;
    assert_eq!(c.propose(accept("j1", 0, 0, 3)).await, refused);
    c.propose(accept("j1", 0, 1, 4))
        .await
        .expect("second range");
    let Ok(Applied::JobEnded {
        status: JobStatus::Committed,
        snapshot: Some(_),
    }) = c.propose(commit("j1", "vm1")).await
    else {
        panic!("the job commits");
    };
    c.restart(leader).await;
    let state = c.converged().await;
    assert_eq!(
        state.jobs["j1"].done[&(0, 0)].lease,
        1,
        "the first result stands"
    );
    assert!(snapshot_ids(&state).contains("j1"));
    c.shutdown().await;
}

fn compact_often(c: &mut RaftCatalogConfig) {
    c.snapshot_every = 10;
    c.keep_logs = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_catches_up_from_a_snapshot_when_its_log_was_compacted() {
    let mut c = Cluster::start(3, 0x5eed_0005, compact_often).await;
    c.commit_snapshot("vm1", "early").await;
    let leader = c.leader().await;
    let lagging = c.ids.iter().copied().find(|id| *id != leader).unwrap_or(3);
    let behind = c.nodes[&lagging].status().last_log;
    c.stop(lagging).await;
    for i in 0..30 {
        c.commit_snapshot(&format!("vm{}", i % 3), &format!("late{i}"))
            .await;
    }
    // Wait until the leader has purged past what the stopped member holds.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let purged = c.nodes[&c.leader().await].status().purged;
        if purged > behind {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the leader never purged its log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.restart(lagging).await;
    let state = c.converged().await;
    assert_eq!(snapshot_ids(&state).len(), 31);
    let s = c.nodes[&lagging].status();
    assert!(
        s.snapshot.is_some(),
        "the member installed a snapshot: {s:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_online() {
    let mut c = Cluster::start(3, 0x5eed_0006, defaults).await;
    c.commit_snapshot("vm1", "one").await;
    c.spawn(4).await;
    let leader = c.leader().await;
    c.nodes[&leader]
        .add_member(4, "mem-4".into(), WAIT)
        .await
        .expect("add member 4");
    // Adding it again changes nothing; its id at another address is refused.
    c.nodes[&leader]
        .add_member(4, "mem-4".into(), WAIT)
        .await
        .expect("add member 4 again");
    let e = c.nodes[&leader]
        .add_member(4, "elsewhere".into(), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, RaftCatalogError::MemberConflict { id: 4, .. }),
        "{e}"
    );
    let gone = c
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader && *id != 4)
        .unwrap_or(1);
    c.nodes[&leader]
        .remove_member(gone)
        .await
        .expect("remove a member");
    c.stop(gone).await;
    c.ids.retain(|id| *id != gone);
    c.commit_snapshot("vm1", "two").await;
    let state = c.converged().await;
    assert_eq!(snapshot_ids(&state).len(), 2);
    let status = c.nodes[&4].status();
    let voters: Vec<_> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| m.id)
        .collect();
    assert_eq!(voters.len(), 3, "{status:?}");
    assert!(voters.contains(&4) && !voters.contains(&gone));
    c.assert_one_leader_per_term();
    c.shutdown().await;
}

/// The leader removes itself: it steps down once the change is committed, another member
/// leads and commits. Removing down to one voter works; the last voter is refused, and an
/// unknown id is named as such. A follower refuses membership changes as not the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_leader_steps_down_and_the_last_voter_stays() {
    let mut c = Cluster::start(3, 0x5eed_0007, defaults).await;
    c.commit_snapshot("vm1", "one").await;
    let first = c.leader().await;
    let follower = c.ids.iter().copied().find(|id| *id != first).unwrap_or(1);
    let e = c.nodes[&follower].remove_member(first).await.unwrap_err();
    assert!(matches!(e, RaftCatalogError::NotLeader { .. }), "{e}");
    let e = c.nodes[&first].remove_member(9).await.unwrap_err();
    assert!(
        matches!(e, RaftCatalogError::UnknownMember { id: 9 }),
        "{e}"
    );

    c.nodes[&first]
        .remove_member(first)
        .await
        .expect("the leader removes itself");
    c.stop(first).await;
    c.ids.retain(|id| *id != first);
    c.commit_snapshot("vm1", "two").await;
    let second = c.leader().await;
    assert_ne!(second, first);
    let other = c.ids.iter().copied().find(|id| *id != second).unwrap_or(1);
    c.nodes[&second]
        .remove_member(other)
        .await
        .expect("down to one voter");
    c.stop(other).await;
    c.ids.retain(|id| *id != other);
    let e = c.nodes[&second].remove_member(second).await.unwrap_err();
    assert!(
        matches!(e, RaftCatalogError::LastVoter { id } if id == second),
        "{e}"
    );
    c.commit_snapshot("vm1", "three").await;
    let state = c.converged().await;
    assert_eq!(snapshot_ids(&state).len(), 3);
    c.assert_one_leader_per_term();
    c.shutdown().await;
}
