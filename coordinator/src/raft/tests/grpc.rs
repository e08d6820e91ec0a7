//! Three members over the real `Raft` gRPC service on 127.0.0.1: election, a commit,
//! a linearizable read on the leader, and followers answering with the leader's address.

use std::collections::BTreeMap;
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::raft::command::{Command, Parent};
use crate::raft::network::grpc::{GrpcNetwork, RaftService};
use crate::raft::state::tests::meta;
use crate::raft::{RaftCatalog, RaftCatalogConfig, RaftCatalogError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_over_grpc_elect_commit_and_redirect() {
    let (stop, stopped) = watch::channel(false);
    let mut dirs = Vec::new();
    let mut listeners = Vec::new();
    let mut addrs = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
        dirs.push(TempDir::new().unwrap());
    }
    let mut nodes = BTreeMap::new();
    for ((id, addr), (listener, dir)) in addrs.iter().zip(listeners.into_iter().zip(&dirs)) {
        let mut config = RaftCatalogConfig::new(*id, addr.clone(), dir.path().join("raft"));
        config.heartbeat_ms = 50;
        config.election_min_ms = 300;
        config.election_max_ms = 600;
        config.propose_timeout_ms = 5_000;
        let node = RaftCatalog::open(&config, GrpcNetwork).await.unwrap();
        let mut stopped = stopped.clone();
        let server = tonic::transport::Server::builder()
            .add_service(RaftService::server(node.raft().clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.wait_for(|s| *s).await;
            });
        tokio::spawn(server);
        nodes.insert(*id, node);
    }
    nodes[&1].initialize(addrs.clone()).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(n) = nodes.values().find(|n| n.status().state == "leader") {
            break n.id();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader over grpc"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nodes[&leader]
        .propose(Command::CommitSnapshot {
            meta: meta("vm1", "s1"),
            parent: Parent::AsGiven,
        })
        .await
        .unwrap();
    // Read-your-writes (linearizable) on the leader.
    let n = nodes[&leader].read(|s| s.list(None).len()).await.unwrap();
    assert_eq!(n, 1);

    let follower = nodes.values().find(|n| n.id() != leader).unwrap();
    let expected = Some((leader, addrs[&leader].clone()));
    match follower
        .propose(Command::CommitSnapshot {
            meta: meta("vm1", "s2"),
            parent: Parent::AsGiven,
        })
        .await
    {
        Err(RaftCatalogError::NotLeader { leader }) => assert_eq!(leader, expected),
        other => panic!("a follower must redirect writes: {other:?}"),
    }
    assert!(matches!(
        follower.read(|s| s.list(None).len()).await,
        Err(RaftCatalogError::NotLeader { .. })
    ));
    let applied = nodes[&leader].status().applied.unwrap_or(0);
    follower
        .wait_applied(applied, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(follower.read_local(|s| s.list(None).len()), 1);

    // The leader reports every member's log position once each has answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = nodes[&leader].status();
        assert_eq!(status.members.len(), 3);
        assert!(status.term >= 1 && status.members.iter().all(|m| m.voter));
        if status.members.iter().all(|m| m.matched == status.last_log) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for n in nodes.values() {
        n.shutdown().await.unwrap();
    }
    stop.send_replace(true);
}
