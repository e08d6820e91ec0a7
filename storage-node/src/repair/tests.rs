//! Repair over real storage nodes on loopback gRPC: a restarted node, a new node, a
//! chunk whose only copy is corrupt.

use std::collections::BTreeSet;

use bora_core::placement::moves;
use bora_core::store::ChunkStore;

use super::*;
use crate::testing::{TestNode, chunks, digests, encoded, holders, placed, start_nodes};

/// Every digest is on each of its owners (and maybe elsewhere).
async fn on_all_owners(store: &PlacedChunkStore, nodes: &[&TestNode], ds: &[Digest]) {
    for (d, h) in ds.iter().zip(holders(nodes, ds).await) {
        let owners: BTreeSet<NodeId> = store.membership().owners(d).into_iter().collect();
        assert!(
            h.is_superset(&owners),
            "chunk {d}: on {h:?}, owners {owners:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_gets_the_chunks_it_owns_written_while_it_was_down() {
    let mut nodes = start_nodes(3).await;
    let store = placed(&nodes, 2);
    let before = chunks("before", 100);
    store.put(encoded(&before)).await.expect("put");

    nodes[1].stop().await;
    let during = chunks("during", 150);
    store
        .put(encoded(&during))
        .await
        .expect("put with a node down");
    nodes[1].restart().await;

    let down = nodes[1].id.clone();
    let owned_by_down = digests(&during)
        .iter()
        .filter(|d| store.membership().is_owner(d, &down))
        .count() as u64;
    assert!(owned_by_down > 0);

    let report = repair(&store).await.expect("repair");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.copies_made, owned_by_down);
    // The distinct digests: nothing is listed twice however many nodes hold it.
    assert_eq!(report.digests_seen, 250);
    assert!(report.bytes_copied > 0);
    assert!(store.is_live(&down));

    let all: Vec<&TestNode> = nodes.iter().collect();
    let mut ds = digests(&before);
    ds.extend(digests(&during));
    on_all_owners(&store, &all, &ds).await;

    // A second run finds nothing to do.
    let again = repair(&store).await.expect("repair again");
    assert_eq!((again.copies_made, again.digests_seen), (0, 250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_gets_only_the_digests_it_owns() {
    let mut nodes = start_nodes(3).await;
    let old = placed(&nodes, 2);
    let data = chunks("grow", 300);
    old.put(encoded(&data)).await.expect("put");
    let ds = digests(&data);

    nodes.push(TestNode::start("sn-4").await);
    let new = placed(&nodes, 2);
    let mut counts_before = Vec::new();
    for n in &nodes {
        counts_before.push(n.client().await.stats().await.expect("stats").chunks);
    }
    let moved: Vec<Digest> = ds
        .iter()
        .copied()
        .filter(|d| moves(old.membership(), new.membership(), d))
        .collect();
    assert!(!moved.is_empty());

    let report = repair(&new).await.expect("repair");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.copies_made, moved.len() as u64);
    assert_eq!(report.digests_seen, 300);

    // Only the new node received anything, and exactly what it owns.
    for (i, n) in nodes.iter().enumerate().take(3) {
        let now = n.client().await.stats().await.expect("stats").chunks;
        assert_eq!(now, counts_before[i], "{}", n.id);
    }
    let sn4 = NodeId::from("sn-4");
    let held = holders(&[&nodes[3]], &ds).await;
    for (d, h) in ds.iter().zip(&held) {
        assert_eq!(h.contains(&sn4), new.membership().is_owner(d, &sn4), "{d}");
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    on_all_owners(&new, &all, &ds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_whose_only_copy_is_corrupt_is_reported_unrecoverable() {
    let mut nodes = start_nodes(2).await;
    nodes.push(TestNode::start_lying("sn-3").await);
    let store = placed(&nodes, 2);
    let liar = NodeId::from("sn-3");
    // Chunks put on the liar alone: with 2 copies over 3 nodes each has a healthy owner
    // lacking it, and no good copy to give it.
    let data = chunks("lonely", 30);
    nodes[2]
        .client()
        .await
        .put(encoded(&data))
        .await
        .expect("put on the liar");
    let report = repair(&store).await.expect("repair");
    let expected: BTreeSet<Digest> = digests(&data).into_iter().collect();
    let got: BTreeSet<Digest> = report.unrecoverable.iter().copied().collect();
    assert_eq!(got, expected);
    assert_eq!(report.copies_made, 0);

    // Owned by sn-1 and the liar, held by the liar and sn-2 (a handed-off copy): the
    // liar ranks before sn-2 but its copy does not verify, so sn-2's is copied to sn-1.
    let sn1 = nodes[0].id.clone();
    let fallback: Vec<_> = chunks("fallback", 60)
        .into_iter()
        .filter(|(_, c)| {
            let owners: BTreeSet<NodeId> =
                store.membership().owners(&c.digest).into_iter().collect();
            owners == BTreeSet::from([sn1.clone(), liar.clone()])
        })
        .collect();
    assert!(!fallback.is_empty());
    for node in [&nodes[1], &nodes[2]] {
        node.client()
            .await
            .put(encoded(&fallback))
            .await
            .expect("put");
    }
    let report = repair(&store).await.expect("repair");
    assert_eq!(report.copies_made, fallback.len() as u64, "{report:?}");
    let sn1_client = nodes[0].client().await;
    for (plain, chunk) in &fallback {
        assert_eq!(
            &sn1_client.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_nodes_are_reported_and_skipped() {
    let mut nodes = start_nodes(3).await;
    let store = placed(&nodes, 2);
    store.put(encoded(&chunks("x", 20))).await.expect("put");
    nodes[2].stop().await;
    let report = repair(&store).await.expect("repair");
    assert_eq!(report.nodes_unreachable, vec![nodes[2].id.clone()]);
    assert_eq!(report.copies_made, 0);
    assert!(!report.is_complete());

    nodes[0].stop().await;
    nodes[1].stop().await;
    assert!(matches!(
        repair(&store).await,
        Err(RepairError::NoNodes { .. })
    ));
}
