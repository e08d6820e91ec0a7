use super::*;
use crate::pack::PackId;

fn loc(pack: u128, offset: u64) -> ChunkLocation {
    ChunkLocation {
        pack: PackId(pack),
        offset,
        length: 100,
        raw_len: 1000,
        created: 1_700_000_000,
    }
}

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

#[test]
fn insert_then_get_many_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = RocksIndex::open(dir.path()).expect("open");
    assert_eq!(index.get_many(&[d(1)]).expect("get"), vec![None]);

    let inserted = index
        .insert_batch(&[(d(1), loc(1, 6)), (d(2), loc(1, 106)), (d(1), loc(1, 206))])
        .expect("insert");
    assert_eq!(inserted, vec![true, true, false]);
    let inserted = index
        .insert_batch(&[(d(2), loc(2, 6)), (d(3), loc(2, 106))])
        .expect("insert");
    assert_eq!(inserted, vec![false, true]);

    let got = index.get_many(&[d(3), d(9), d(1), d(2)]).expect("get");
    assert_eq!(
        got,
        vec![Some(loc(2, 106)), None, Some(loc(1, 6)), Some(loc(1, 106))]
    );
    assert_eq!(
        index.stats().expect("stats"),
        IndexStats {
            chunks: 3,
            record_bytes: 300
        }
    );
    assert!(index.get_many(&[]).expect("empty").is_empty());
    assert_eq!(index.insert_batch(&[]).expect("empty"), Vec::<bool>::new());
}

#[test]
fn reopen_keeps_entries_and_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = RocksIndex::open(dir.path()).expect("open");
        index.insert_batch(&[(d(1), loc(1, 6))]).expect("insert");
    }
    let index = RocksIndex::open(dir.path()).expect("reopen");
    assert_eq!(index.get_many(&[d(1)]).expect("get"), vec![Some(loc(1, 6))]);
    assert_eq!(index.stats().expect("stats").chunks, 1);
    assert!(index.estimated_chunks().expect("estimate") <= 1);
}

#[test]
fn refuses_newer_format_and_unknown_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let index = RocksIndex::open(dir.path()).expect("open");
        let meta = index.cf(CF_META).expect("meta");
        index
            .db
            .put_cf(meta, KEY_FORMAT, 2u32.to_le_bytes())
            .expect("put");
        let chunks = index.cf(CF_CHUNKS).expect("chunks");
        let mut v2 = loc(1, 6).encode();
        v2[0] = 2;
        index.db.put_cf(chunks, d(5).as_bytes(), v2).expect("put");
        match index.get_many(&[d(5)]) {
            Err(IndexError::BadEntry { digest, .. }) => assert_eq!(digest, d(5)),
            other => panic!("expected BadEntry, got {other:?}"),
        }
        // A column family only a newer build knows about.
        let mut db = index.db;
        db.create_cf("future", &Options::default())
            .expect("create cf");
    }
    match RocksIndex::open(dir.path()) {
        Err(IndexError::NewerFormat {
            found: 2,
            supported: 1,
        }) => {}
        other => panic!("expected NewerFormat, got {other:?}"),
    }
}

#[test]
fn list_after_pages_through_digests_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = RocksIndex::open(dir.path()).expect("open");
    assert!(index.list_after(None, 10).expect("list").is_empty());
    let entries: Vec<_> = (0..50u8).map(|n| (d(n), loc(1, u64::from(n)))).collect();
    index.insert_batch(&entries).expect("insert");
    let mut all: Vec<Digest> = entries.iter().map(|(d, _)| *d).collect();
    all.sort();

    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = index.list_after(after.as_ref(), 7).expect("list");
        assert!(page.len() <= 7);
        let Some(last) = page.last().copied() else {
            break;
        };
        listed.extend(page);
        after = Some(last);
    }
    assert_eq!(listed, all);
    // `after` need not be indexed itself; it is exclusive when it is.
    assert_eq!(index.list_after(Some(&all[3]), 2).expect("list"), all[4..6]);
    let absent = Digest::of(b"not indexed");
    let next: Vec<Digest> = all
        .iter()
        .copied()
        .filter(|d| *d > absent)
        .take(3)
        .collect();
    assert_eq!(index.list_after(Some(&absent), 3).expect("list"), next);
    assert!(index.list_after(all.last(), 5).expect("list").is_empty());
    assert!(index.list_after(None, 0).expect("list").is_empty());
}
