//! Placement: owners are well formed, membership changes move only what they must, the
//! spread is even, and the score never changes by accident.

use std::collections::BTreeMap;

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use super::*;

fn n(k: usize) -> NonZeroUsize {
    NonZeroUsize::new(k).unwrap()
}

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|s| NodeId::from(*s)).collect()
}

/// `count` digests derived from `seed`.
fn digests(seed: u64, count: u64) -> impl Iterator<Item = Digest> {
    (0..count).map(move |i| Digest::of(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
}

/// 1–7 distinct node names.
fn node_names() -> impl Strategy<Value = Vec<NodeId>> {
    btree_set("[a-z0-9-]{1,12}", 1..=7).prop_map(|s| s.into_iter().map(NodeId).collect())
}

/// Changing the score moves nearly every stored chunk: these values must never change.
#[test]
fn the_score_is_pinned() {
    let m = Membership::with_nodes(n(2), ids(&["sn-1", "sn-2", "sn-3", "sn-4"]));
    let owners: Vec<Vec<String>> = [b"bora".as_slice(), b"b", b"c"]
        .iter()
        .map(|data| {
            let o = m.owners(&Digest::of(data));
            o.into_iter().map(|n| n.0).collect()
        })
        .collect();
    assert_eq!(
        owners,
        [["sn-2", "sn-1"], ["sn-4", "sn-3"], ["sn-2", "sn-4"]]
    );
    assert_eq!(
        Node::new("sn-1".into()).score(&Digest::of(b"bora")),
        13_047_137_844_626_112_756
    );
}

#[test]
fn there_are_never_more_owners_than_nodes() {
    let d = Digest::of(b"x");
    let mut m = Membership::default();
    assert_eq!(m.replicas(), n(2));
    assert!(m.owners(&d).is_empty());
    assert_eq!(m.primary(&d), None);
    assert!(m.add("a".into()));
    assert!(!m.add("a".into()));
    assert_eq!(m.owners(&d), ids(&["a"]));
    m.add("b".into());
    m.add("c".into());
    assert_eq!((m.len(), m.copies()), (3, 2));
    assert!(m.remove(&"a".into()));
    assert!(!m.remove(&"a".into()));
    assert_eq!(m.nodes().cloned().collect::<Vec<_>>(), ids(&["b", "c"]));
}

#[test]
fn the_order_nodes_were_added_in_does_not_matter() {
    let a = Membership::with_nodes(n(3), ids(&["x", "y", "z", "w"]));
    let b = Membership::with_nodes(n(3), ids(&["w", "z", "y", "x"]));
    assert_eq!(a, b);
    for d in digests(1, 100) {
        assert_eq!(a.owners(&d), b.owners(&d));
    }
}

#[test]
fn a_change_of_replicas_is_a_movement_too() {
    let old = Membership::with_nodes(n(1), ids(&["a", "b", "c"]));
    let new = Membership::with_nodes(n(2), ids(&["a", "b", "c"]));
    for d in digests(2, 50) {
        let mv = movement(&old, &new, &d);
        assert_eq!(mv.gained, new.owners(&d)[1..]);
        assert!(mv.lost.is_empty() && mv.moves());
    }
}

proptest! {
    #[test]
    fn owners_are_distinct_members_as_many_as_copies(
        nodes in node_names(),
        replicas in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let m = Membership::with_nodes(n(replicas), nodes.clone());
        for d in digests(seed, 50) {
            let owners = m.owners(&d);
            prop_assert_eq!(owners.len(), replicas.min(nodes.len()));
            let mut sorted = owners.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), owners.len());
            prop_assert!(owners.iter().all(|o| m.contains(o) && m.is_owner(&d, o)));
            prop_assert_eq!(m.primary(&d), owners.first());
        }
    }

    /// A new node takes only chunks it now owns: every other owner keeps its place.
    #[test]
    fn adding_a_node_moves_only_what_it_now_owns(
        nodes in node_names(),
        extra in "[A-Z]{1,8}",
        replicas in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let old = Membership::with_nodes(n(replicas), nodes);
        let mut new = old.clone();
        let x = NodeId(extra);
        prop_assert!(new.add(x.clone()));
        for d in digests(seed, 200) {
            let (before, after) = (old.owners(&d), new.owners(&d));
            let kept: Vec<_> = after.iter().filter(|o| **o != x).cloned().collect();
            prop_assert!(before.starts_with(&kept), "{before:?} -> {after:?}");
            let mv = movement(&old, &new, &d);
            if after.contains(&x) {
                prop_assert_eq!(&mv.gained, &vec![x.clone()]);
                prop_assert!(mv.lost.len() <= 1);
            } else {
                prop_assert_eq!(&before, &after);
                prop_assert!(!moves(&old, &new, &d));
            }
        }
    }

    /// A removed node's chunks move; every other chunk keeps its owners.
    #[test]
    fn removing_a_node_moves_only_what_it_owned(
        nodes in node_names(),
        pick in any::<usize>(),
        replicas in 1usize..=3,
        seed in any::<u64>(),
    ) {
        let old = Membership::with_nodes(n(replicas), nodes.clone());
        let x = nodes[pick % nodes.len()].clone();
        let mut new = old.clone();
        prop_assert!(new.remove(&x));
        for d in digests(seed, 200) {
            let (before, after) = (old.owners(&d), new.owners(&d));
            let rest: Vec<_> = before.iter().filter(|o| **o != x).cloned().collect();
            prop_assert!(after.starts_with(&rest), "{before:?} -> {after:?}");
            let mv = movement(&old, &new, &d);
            if before.contains(&x) {
                prop_assert_eq!(&mv.lost, &vec![x.clone()]);
                prop_assert!(mv.gained.len() <= 1);
            } else {
                prop_assert_eq!(&before, &after);
                prop_assert!(!mv.moves());
            }
        }
    }
}

proptest! {
    /// The ranking orders every member once; owners are its head; removing a node leaves
    /// the others' order unchanged (what hinted handoff relies on).
    #[test]
    fn owners_are_the_head_of_the_ranking(
        nodes in node_names(),
        pick in any::<usize>(),
        replicas in 1usize..=4,
        seed in any::<u64>(),
    ) {
        let m = Membership::with_nodes(n(replicas), nodes.clone());
        let x = nodes[pick % nodes.len()].clone();
        let mut without = m.clone();
        without.remove(&x);
        for d in digests(seed, 50) {
            let ranking = m.ranking(&d);
            let mut sorted = ranking.clone();
            sorted.sort();
            prop_assert_eq!(&sorted, &nodes);
            prop_assert_eq!(&ranking[..m.copies()], &m.owners(&d)[..]);
            let rest: Vec<_> = ranking.iter().filter(|o| **o != x).cloned().collect();
            prop_assert_eq!(without.ranking(&d), rest);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Over 10,000 digests each of 3–5 nodes is first owner of, and holds a copy of, its
    /// share within ±10% (about 7 standard deviations), and a new node takes about its
    /// share.
    #[test]
    fn the_spread_is_even(nodes in vec("[a-z0-9-]{1,12}", 3..=5), seed in any::<u64>()) {
        let nodes: Vec<NodeId> = nodes.into_iter().map(NodeId).collect();
        let m = Membership::with_nodes(DEFAULT_REPLICAS, nodes);
        prop_assume!(m.len() >= 3);
        const N: u64 = 10_000;
        let mut first: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut held: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut bigger = m.clone();
        bigger.add("NEW".into());
        let mut moved = 0;
        for d in digests(seed, N) {
            let owners = m.owners(&d);
            *first.entry(owners[0].clone()).or_default() += 1;
            for o in owners {
                *held.entry(o).or_default() += 1;
            }
            moved += u64::from(moves(&m, &bigger, &d));
        }
        let nodes = m.len() as f64;
        for (counts, total) in [(&first, N as f64), (&held, 2.0 * N as f64)] {
            prop_assert_eq!(counts.len(), m.len());
            for (node, &c) in counts {
                let share = c as f64 / (total / nodes);
                prop_assert!((0.9..=1.1).contains(&share), "{node}: {c} of {total}");
            }
        }
        // The new node owns about 2 copies in nodes + 1 digests.
        let expected = 2.0 * N as f64 / (nodes + 1.0);
        prop_assert!((moved as f64 / expected - 1.0).abs() <= 0.1, "{moved} moved");
    }
}
