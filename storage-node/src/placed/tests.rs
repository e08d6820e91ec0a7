//! `PlacedChunkStore` over real storage nodes on loopback gRPC.

use std::collections::BTreeSet;

use bora_core::store::{ChunkStore, StoreError};

use super::*;
use crate::testing::{HungNode, TestNode, chunks, digests, encoded, holders, placed, start_nodes};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_then_read_with_each_chunk_on_exactly_its_owners() {
    let nodes = start_nodes(3).await;
    let store = placed(&nodes, 2);
    let data = chunks("placed", 200);
    let ds = digests(&data);

    assert!(
        store
            .missing(&ds)
            .await
            .expect("missing")
            .iter()
            .all(|m| *m)
    );
    let out = store.put(encoded(&data)).await.expect("put");
    let record_bytes: u64 = data.iter().map(|(_, c)| c.record.len() as u64).sum();
    assert_eq!((out.chunks_new, out.chunks_existing), (200, 0));
    assert_eq!(out.bytes_written, 2 * record_bytes, "both copies written");
    assert!(store.bytes_sent() > 2 * record_bytes);
    assert!(
        store
            .missing(&ds)
            .await
            .expect("missing")
            .iter()
            .all(|m| !*m)
    );

    let again = store.put(encoded(&data[..10])).await.expect("put again");
    assert_eq!(
        (again.chunks_new, again.chunks_existing, again.bytes_written),
        (0, 10, 0)
    );

    for (plain, chunk) in &data {
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    let running: Vec<&TestNode> = nodes.iter().collect();
    let held = holders(&running, &ds).await;
    for (d, h) in ds.iter().zip(&held) {
        let owners: BTreeSet<NodeId> = store.membership().owners(d).into_iter().collect();
        assert_eq!(h, &owners, "chunk {d}");
    }
    let mut total = 0;
    for n in &nodes {
        total += n.client().await.stats().await.expect("stats").chunks;
    }
    assert_eq!(total, 400);
    assert_eq!(store.live_nodes().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_replica_is_skipped_on_read() {
    let mut nodes = start_nodes(2).await;
    nodes.push(TestNode::start_lying("sn-3").await);
    let store = placed(&nodes, 2);
    let data = chunks("corrupt", 100);
    store.put(encoded(&data)).await.expect("put");

    let liar = NodeId::from("sn-3");
    let mut liar_first = 0;
    for (plain, chunk) in &data {
        let ranking = store.membership().ranking(&chunk.digest);
        liar_first += usize::from(ranking[0] == liar);
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    assert!(
        liar_first > 10,
        "{liar_first} chunks read from the liar first"
    );
    assert!(
        store.is_live(&liar),
        "a corrupt copy does not make the node down"
    );

    // The liar's client sees the corruption itself.
    let d = data[0].1.digest;
    let liar_client = nodes[2].client().await;
    assert!(matches!(
        liar_client.read(&d).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        liar_client.read_record(&d).await,
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_mid_backup_is_skipped_and_chunks_go_to_the_next_nodes() {
    let mut nodes = start_nodes(3).await;
    let store = placed(&nodes, 2);
    let before = chunks("before", 100);
    store.put(encoded(&before)).await.expect("put");

    nodes[1].stop().await;
    let down = nodes[1].id.clone();
    let during = chunks("during", 100);
    let out = store
        .put(encoded(&during))
        .await
        .expect("put with a node down");
    assert_eq!(out.chunks_new, 100);
    assert!(!store.is_live(&down));
    assert_eq!(store.live_nodes().len(), 2);

    // Everything reads, including chunks whose first owner is the stopped node.
    for (plain, chunk) in before.iter().chain(&during) {
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    let ds = digests(&during);
    assert!(
        store
            .missing(&ds)
            .await
            .expect("missing")
            .iter()
            .all(|m| !*m)
    );
    // Chunks written meanwhile are on both live nodes.
    let live = [&nodes[0], &nodes[2]];
    for h in holders(&live, &ds).await {
        assert_eq!(h.len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fewer_live_nodes_than_copies_is_under_replicated_then_an_error() {
    let mut nodes = start_nodes(2).await;
    let store = placed(&nodes, 2);
    nodes[0].stop().await;
    let data = chunks("alone", 20);
    let out = store.put(encoded(&data)).await.expect("put on one node");
    assert_eq!(out.chunks_new, 20);
    for (plain, chunk) in &data {
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    let held = holders(&[&nodes[1]], &digests(&data)).await;
    assert!(held.iter().all(|h| h.len() == 1));

    nodes[1].stop().await;
    let e = store
        .put(encoded(&chunks("nowhere", 3)))
        .await
        .expect_err("no node");
    assert!(matches!(e, StoreError::Backend(_)), "{e}");
    let e = store.read(&data[0].1.digest).await.expect_err("no node");
    let msg = e.to_string();
    assert!(msg.contains("sn-1") && msg.contains("sn-2"), "{msg}");
    assert!(store.missing(&digests(&data)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_no_node_has_is_not_found() {
    let nodes = start_nodes(3).await;
    let store = placed(&nodes, 2);
    let absent = Digest::of(b"never stored");
    assert!(matches!(store.read(&absent).await, Err(StoreError::NotFound(d)) if d == absent));
    // A request error is not a node failure: nobody is marked down.
    let mut bad = encode_one(b"x");
    bad.digest = Digest::of(b"y");
    assert!(matches!(
        store.put(vec![bad]).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.live_nodes().len(), 3);
}

fn encode_one(data: &[u8]) -> EncodedChunk {
    bora_core::chunk::encode(data, 1).expect("encode")
}

#[test]
fn a_member_without_an_address_is_unreachable_and_non_members_are_refused() {
    let m = Membership::with_nodes(
        std::num::NonZeroUsize::MIN,
        [NodeId::from("a"), NodeId::from("b")],
    );
    let addrs = BTreeMap::from([(NodeId::from("a"), "127.0.0.1:1".to_string())]);
    let store = PlacedChunkStore::new(m, addrs);
    assert!(matches!(
        store.node(&"b".into()),
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.node(&"c".into()),
        Err(StoreError::Invalid(_))
    ));
    // Outside a runtime a client cannot be made; that is an error, not a panic.
    assert!(matches!(
        store.node(&"a".into()),
        Err(StoreError::Backend(_))
    ));
}

/// A store over `nodes` whose member `id` is reached at `addr` instead.
fn with_member_at(nodes: &[TestNode], replicas: usize, id: &str, addr: String) -> PlacedChunkStore {
    let mut ids: Vec<NodeId> = nodes.iter().map(|n| n.id.clone()).collect();
    ids.push(NodeId::from(id));
    let replicas = std::num::NonZeroUsize::new(replicas).expect("replicas > 0");
    let mut addrs = crate::testing::addrs(nodes);
    addrs.insert(NodeId::from(id), addr);
    PlacedChunkStore::new(Membership::with_nodes(replicas, ids), addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_answering_as_another_node_is_refused_and_never_written_to() {
    let nodes = start_nodes(2).await;
    // sn-9's address is sn-2's: sn-2 answers there.
    let store = with_member_at(&nodes[..1], 2, "sn-9", nodes[1].addr.to_string());
    let data = chunks("imposter", 20);
    let out = store.put(encoded(&data)).await.expect("put on sn-1 alone");
    assert_eq!(out.chunks_new, 20);
    let sn9 = NodeId::from("sn-9");
    assert!(!store.is_live(&sn9), "a node failure");
    assert_eq!(
        nodes[1].client().await.stats().await.expect("stats").chunks,
        0,
        "nothing was written to the node answering as sn-2"
    );
    for (plain, chunk) in &data {
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    let e = store.verified(&sn9).await.expect_err("not sn-9");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    let want = format!(
        "storage node at http://{} answers as node sn-2 of no cluster, expected node sn-9",
        nodes[1].addr
    );
    assert!(e.to_string().ends_with(&want), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_cluster_is_refused() {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let nodes = vec![TestNode::start_at("sn-1", Some("blue"), any).await];
    let sn1 = NodeId::from("sn-1");
    let blue = placed(&nodes, 1).with_cluster("blue");
    blue.verified(&sn1).await.expect("sn-1 of cluster blue");
    // Without a cluster name only the id is checked.
    placed(&nodes, 1).verified(&sn1).await.expect("sn-1");

    let green = placed(&nodes, 1).with_cluster("green");
    let e = green.verified(&sn1).await.expect_err("another cluster");
    assert!(
        e.to_string()
            .ends_with("answers as node sn-1 of cluster blue, expected node sn-1 of cluster green"),
        "{e}"
    );
    let (plain, chunk) = &chunks("blue", 1)[0];
    assert!(green.put(vec![chunk.clone()]).await.is_err());
    blue.put(vec![chunk.clone()]).await.expect("put");
    let e = green.read(&chunk.digest).await.expect_err("refused");
    assert!(e.to_string().contains("of cluster blue"), "{e}");
    assert_eq!(
        &blue.read(&chunk.digest).await.expect("read")[..],
        &plain[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_is_checked_again_after_a_reconnect() {
    let mut nodes = start_nodes(2).await;
    let store = placed(&nodes, 2);
    let before = chunks("before", 20);
    store.put(encoded(&before)).await.expect("put");

    // sn-1 stops and another node takes its port; sn-2 restarts as itself.
    nodes[0].stop().await;
    let imposter = TestNode::start_at("sn-x", None, nodes[0].addr).await;
    nodes[1].restart().await;
    let during = chunks("during", 20);
    store
        .put(encoded(&during))
        .await
        .expect("put on sn-2 alone");
    let (sn1, sn2) = (NodeId::from("sn-1"), NodeId::from("sn-2"));
    assert!(
        !store.is_live(&sn1),
        "the node at sn-1's address is not sn-1"
    );
    assert!(store.is_live(&sn2), "sn-2 restarted is still sn-2");
    for h in holders(&[&nodes[1]], &digests(&during)).await {
        assert_eq!(h.len(), 1, "on sn-2");
    }
    for (plain, chunk) in before.iter().chain(&during) {
        assert_eq!(
            &store.read(&chunk.digest).await.expect("read")[..],
            &plain[..]
        );
    }
    let e = store.verified(&sn1).await.expect_err("sn-x");
    assert!(e.to_string().contains("answers as node sn-x"), "{e}");
    drop(imposter);
}

/// Longest a read may take in the tests below; a hung node holds a request until the
/// client's HTTP/2 keep-alive gives up on it (15 s) or its request timeout (60 s).
const READ_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads every chunk through `store`, each within [`READ_BOUND`].
async fn read_all_quickly(store: &PlacedChunkStore, data: &[(Vec<u8>, EncodedChunk)]) {
    for (plain, chunk) in data {
        let read = tokio::time::timeout(READ_BOUND, store.read(&chunk.digest))
            .await
            .unwrap_or_else(|_| panic!("read of {} took over {READ_BOUND:?}", chunk.digest));
        assert_eq!(&read.expect("read")[..], &plain[..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_first_owner_does_not_hold_reads_up() {
    let nodes = start_nodes(2).await;
    let hung = HungNode::start().await;
    let store = with_member_at(&nodes, 2, "sn-hung", hung.addr.to_string());
    let data = chunks("hung", 60);
    // Put around the hung node, which would hold the put.
    for n in &nodes {
        n.client().await.put(encoded(&data)).await.expect("put");
    }
    let hung_id = NodeId::from("sn-hung");
    let hung_first: Vec<_> = data
        .iter()
        .filter(|(_, c)| store.membership().ranking(&c.digest)[0] == hung_id)
        .cloned()
        .collect();
    assert!(hung_first.len() >= 5, "{} chunks", hung_first.len());
    read_all_quickly(&store, &hung_first).await;
    // Concurrent reads too.
    let all = futures::future::join_all(hung_first.iter().map(|(_, c)| store.read(&c.digest)));
    let reads = tokio::time::timeout(READ_BOUND, all)
        .await
        .expect("concurrent reads in time");
    for (r, (plain, _)) in reads.into_iter().zip(&hung_first) {
        assert_eq!(&r.expect("read")[..], &plain[..]);
    }
    assert!(store.hedge_delay() <= HEDGE_MAX);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_copy_and_a_hung_node_do_not_stop_the_good_copy() {
    let nodes = vec![
        TestNode::start("sn-1").await,
        TestNode::start_lying("sn-2").await,
    ];
    let hung = HungNode::start().await;
    let store = with_member_at(&nodes, 3, "sn-hung", hung.addr.to_string());
    let data = chunks("good copy", 60);
    for n in &nodes {
        n.client().await.put(encoded(&data)).await.expect("put");
    }
    // Every order of the three shows up among 60 chunks.
    let orders: BTreeSet<Vec<NodeId>> = data
        .iter()
        .map(|(_, c)| store.membership().ranking(&c.digest))
        .collect();
    assert_eq!(orders.len(), 6);
    read_all_quickly(&store, &data).await;
    assert!(store.is_live(&NodeId::from("sn-2")), "corrupt is not down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_every_node_fails_says_which_nodes_were_tried_and_why() {
    let mut nodes = vec![
        TestNode::start("sn-1").await,
        TestNode::start_lying("sn-2").await,
        TestNode::start("sn-3").await,
    ];
    let store = placed(&nodes, 1);
    let (_, chunk) = &chunks("lost", 1)[0];
    nodes[1]
        .client()
        .await
        .put(vec![chunk.clone()])
        .await
        .expect("put on sn-2");
    nodes[0].stop().await;

    // sn-1 is down, sn-2 has a corrupt copy, sn-3 none.
    let e = store.read(&chunk.digest).await.expect_err("no good copy");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    for said in [
        "sn-1: ",
        "sn-2: ",
        "sn-3: ",
        "not in the store",
        "digest mismatch",
    ] {
        assert!(msg.contains(said), "{said:?} in {msg}");
    }
    // A chunk nobody has, with a node down: not a plain "not found".
    let absent = Digest::of(b"never stored");
    let e = store.read(&absent).await.expect_err("absent");
    assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    let msg = e.to_string();
    for said in ["sn-1: ", "sn-2: ", "sn-3: ", "not in the store"] {
        assert!(msg.contains(said), "{said:?} in {msg}");
    }
}

#[test]
fn the_hedge_delay_follows_read_latency_within_bounds() {
    let ms = std::time::Duration::from_millis;
    let latency = ReadLatency::default();
    assert_eq!(latency.hedge_delay(), HEDGE_MIN, "before any read");
    latency.record(ms(1));
    assert_eq!(latency.hedge_delay(), HEDGE_MIN, "fast reads");
    latency.record(ms(1000));
    let slower = latency.hedge_delay();
    assert!(slower > HEDGE_MIN, "{slower:?}");
    for _ in 0..100 {
        latency.record(ms(1000));
    }
    assert_eq!(latency.hedge_delay(), HEDGE_MAX, "slow reads");
    for _ in 0..100 {
        latency.record(ms(50));
    }
    let d = latency.hedge_delay();
    assert!(
        d > ms(140) && d < ms(160),
        "{HEDGE_FACTOR} × 50 ms, got {d:?}"
    );
}
