//! Coordinators joining and leaving a running cluster over real gRPC on 127.0.0.1
//! (`AddCoordinator`, `RemoveCoordinator`, `RaftView`, `ExportCatalog`), and join safety:
//! a member with the lowest id and an empty store does not make a second cluster while
//! the configured members answer as part of one.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::RaftSection;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn member_config(dir: &Path, id: u64, members: &BTreeMap<u64, String>) -> CoordinatorConfig {
    let mut cfg = config(dir);
    cfg.id = format!("c{id}");
    cfg.listen = members[&id].clone();
    cfg.raft = Some(RaftSection {
        id,
        members: members
            .iter()
            .map(|(i, a)| (i.to_string(), a.clone()))
            .collect(),
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        snapshot_every: 10_000,
        keep_logs: 1_000,
    });
    cfg
}

async fn view(c: &mut Client) -> pb::RaftStatus {
    c.raft_view(pb::RaftViewRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The member of `nodes` that leads and serves (it has imported the storage seed).
async fn leader(nodes: &mut BTreeMap<u64, Node>) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (id, n) in nodes.iter_mut() {
            if view(&mut n.client).await.state == "leader"
                && n.client
                    .membership(pb::MembershipRequest {})
                    .await
                    .is_ok_and(|m| !m.into_inner().nodes.is_empty())
            {
                return *id;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn voters(v: &pb::RaftStatus) -> Vec<u64> {
    v.members.iter().filter(|m| m.voter).map(|m| m.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_member_waits_to_be_added_and_members_change_online() {
    let store = Arc::new(MemoryChunkStore::default());
    let mut members: BTreeMap<u64, String> = (1..=3).map(|i| (i, free_addr())).collect();
    let dirs: BTreeMap<u64, _> = (1..=4).map(|i| (i, tempfile::tempdir().unwrap())).collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        let cfg = member_config(dirs[&id].path(), id, &members);
        nodes.insert(id, start(cfg, store.clone()).await);
    }
    let first = leader(&mut nodes).await;

    // Member 1 (the lowest id) is removed, as an operator does with a dead member...
    let e = {
        let follower = *nodes.keys().find(|id| **id != first).unwrap();
        nodes
            .get_mut(&follower)
            .unwrap()
            .client
            .remove_coordinator(pb::RemoveCoordinatorRequest { id: 1 })
            .await
            .unwrap_err()
    };
    assert_eq!(
        e.code(),
        Code::Unavailable,
        "a follower does not change members"
    );
    assert!(e.metadata().get(LEADER_METADATA).is_some(), "{e:?}");
    let after = nodes
        .get_mut(&first)
        .unwrap()
        .client
        .remove_coordinator(pb::RemoveCoordinatorRequest { id: 1 })
        .await
        .unwrap()
        .into_inner();
    assert!(!after.members.iter().any(|m| m.id == 1), "{after:?}");
    nodes.remove(&1).unwrap().stop().await;

    // ...and comes back with an empty store and its old config: it asks the others,
    // they answer as part of a cluster, so it makes no cluster of its own.
    let empty = tempfile::tempdir().unwrap();
    let mut again = start(member_config(empty.path(), 1, &members), store.clone()).await;
    let v = view(&mut again.client).await;
    assert!(v.members.is_empty(), "member 1 made a cluster: {v:?}");
    assert_ne!(v.state, "leader");
    again.stop().await;

    // A new member (id 4, empty store) waits to be added, then is added online.
    members.insert(4, free_addr());
    let mut four = start(member_config(dirs[&4].path(), 4, &members), store.clone()).await;
    assert!(view(&mut four.client).await.members.is_empty());
    nodes.insert(4, four);
    let leader_id = leader(&mut nodes).await;
    let bad = nodes
        .get_mut(&leader_id)
        .unwrap()
        .client
        .add_coordinator(pb::AddCoordinatorRequest {
            id: 0,
            addr: members[&4].clone(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let added = nodes
        .get_mut(&leader_id)
        .unwrap()
        .client
        .add_coordinator(pb::AddCoordinatorRequest {
            id: 4,
            addr: members[&4].clone(),
            wait_ms: 20_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(voters(&added).len(), 3, "{added:?}");
    assert!(voters(&added).contains(&4), "{added:?}");
    let clash = nodes
        .get_mut(&leader_id)
        .unwrap()
        .client
        .add_coordinator(pb::AddCoordinatorRequest {
            id: 4,
            addr: "127.0.0.1:9".into(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "{clash:?}");

    // The leader removes itself: another member leads, member 4 among the voters.
    let commit = |vm: &str| pb::CommitSnapshotRequest {
        snapshot_json: serde_json::to_string(&crate::raft::state::tests::meta(
            vm,
            &format!("{vm}-1"),
        ))
        .unwrap(),
    };
    nodes
        .get_mut(&leader_id)
        .unwrap()
        .client
        .commit_snapshot(commit("before"))
        .await
        .unwrap();
    nodes
        .get_mut(&leader_id)
        .unwrap()
        .client
        .remove_coordinator(pb::RemoveCoordinatorRequest { id: leader_id })
        .await
        .unwrap();
    nodes.remove(&leader_id).unwrap().stop().await;
    let next = leader(&mut nodes).await;
    assert_ne!(next, leader_id);
    let c = &mut nodes.get_mut(&next).unwrap().client;
    c.commit_snapshot(commit("after")).await.unwrap();
    let v = view(c).await;
    assert_eq!(voters(&v).len(), 2, "{v:?}");
    assert!(voters(&v).contains(&4), "{v:?}");
    let export = c
        .export_catalog(pb::ExportCatalogRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.snapshot_json.len(), 2);
    assert_eq!(export.nodes.len(), 1);
    for n in nodes.into_values() {
        n.stop().await;
    }
}
