//! The `ChunkStore` behaviour suite, run against both pack backends (the RocksDB index is
//! always real, in a tempdir), plus what only the local filesystem can show.

use std::sync::Arc;

use bora_core::chunk::{CHUNK_HEADER_LEN, EncodedChunk, encode};
use bora_core::digest::Digest;
use bora_core::store::{ChunkStore, StoreError};
use tempfile::TempDir;

use super::LocalChunkStore;
use crate::backend::{ObjectStoreBackend, PackBackend};
use crate::pack;

struct Harness {
    store: LocalChunkStore,
    backend: Arc<dyn PackBackend>,
    dir: TempDir,
}

fn local() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalChunkStore::open(dir.path()).expect("open");
    let backend = Arc::new(ObjectStoreBackend::local(&dir.path().join("packs")).expect("packs"));
    Harness {
        store,
        backend,
        dir,
    }
}

fn memory() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn PackBackend> = Arc::new(ObjectStoreBackend::in_memory());
    let store =
        LocalChunkStore::open_with(&dir.path().join("index"), Arc::clone(&backend)).expect("open");
    Harness {
        store,
        backend,
        dir,
    }
}

/// Runs each listed case once per backend.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local_fs() {
                super::$case(super::local()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_memory() {
                super::$case(super::memory()).await
            }
        }
    )*};
}

on_both_backends!(
    put_then_missing_then_read,
    second_put_is_a_no_op,
    duplicates_in_a_batch_are_stored_once,
    records_that_disagree_are_rejected,
    same_digest_other_size_conflicts,
    unknown_digest_is_not_found,
    missing_pack_is_a_clear_error,
    concurrent_puts_of_the_same_chunks,
);

fn chunk(seed: u64, len: usize) -> EncodedChunk {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half random, half repetitive: exercises both codecs across seeds.
            if seed.is_multiple_of(2) {
                x as u8
            } else {
                (i % 7) as u8 ^ seed as u8
            }
        })
        .collect();
    encode(&data, 1).expect("encode")
}

async fn packs(h: &Harness) -> Vec<String> {
    h.backend.list("").await.expect("list")
}

async fn put_then_missing_then_read(h: Harness) {
    let chunks: Vec<_> = (0..5).map(|i| chunk(i, 10_000 + i as usize)).collect();
    let absent = Digest::of(b"never stored");
    let mut asked: Vec<_> = chunks.iter().map(|c| c.digest).collect();
    asked.push(absent);
    assert!(
        h.store
            .missing(&asked)
            .await
            .expect("missing")
            .iter()
            .all(|m| *m)
    );

    let outcome = h.store.put(chunks.clone()).await.expect("put");
    assert_eq!((outcome.chunks_new, outcome.chunks_existing), (5, 0));
    let record_bytes: u64 = chunks.iter().map(|c| c.record.len() as u64).sum();
    assert_eq!(outcome.bytes_written, record_bytes);
    assert_eq!(packs(&h).await.len(), 1, "one put, one pack");

    let missing = h.store.missing(&asked).await.expect("missing");
    assert_eq!(missing, vec![false, false, false, false, false, true]);
    for (i, c) in chunks.iter().enumerate() {
        let data = h.store.read(&c.digest).await.expect("read");
        assert_eq!(Digest::of(&data), c.digest);
        assert_eq!(data.len(), 10_000 + i);
    }
    let stats = h.store.stats().await.expect("stats");
    assert_eq!((stats.chunks, stats.record_bytes), (5, record_bytes));
    assert_eq!(h.store.chunk_count().await.expect("count"), 5);
    assert_eq!(h.store.bytes_stored().await.expect("bytes"), record_bytes);

    let empty = h.store.put(Vec::new()).await.expect("empty put");
    assert_eq!(empty.chunks_new + empty.chunks_existing, 0);
    assert_eq!(packs(&h).await.len(), 1, "an empty put writes no pack");
}

async fn second_put_is_a_no_op(h: Harness) {
    let chunks: Vec<_> = (0..3).map(|i| chunk(i, 4096)).collect();
    h.store.put(chunks.clone()).await.expect("put");
    let before = packs(&h).await;
    let again = h.store.put(chunks).await.expect("put again");
    assert_eq!((again.chunks_new, again.chunks_existing), (0, 3));
    assert_eq!(again.bytes_written, 0);
    assert_eq!(packs(&h).await, before, "no new pack");
    assert_eq!(h.store.chunk_count().await.expect("count"), 3);
}

async fn duplicates_in_a_batch_are_stored_once(h: Harness) {
    let (a, b) = (chunk(1, 3000), chunk(2, 3000));
    let outcome = h
        .store
        .put(vec![a.clone(), b.clone(), a.clone(), a.clone()])
        .await
        .expect("put");
    assert_eq!((outcome.chunks_new, outcome.chunks_existing), (2, 2));
    let names = packs(&h).await;
    assert_eq!(names.len(), 1);
    let bytes = h.backend.get(&names[0]).await.expect("get pack");
    let records = pack::scan(&bytes).expect("scan");
    let digests: Vec<_> = records.iter().map(|r| r.digest).collect();
    assert_eq!(digests, vec![a.digest, b.digest]);
}

async fn records_that_disagree_are_rejected(h: Harness) {
    let good = chunk(3, 2000);
    let other = chunk(4, 2000);
    let mut cases = Vec::new();
    // Header names another chunk.
    let mut c = good.clone();
    c.record[16..CHUNK_HEADER_LEN].copy_from_slice(other.digest.as_bytes());
    cases.push(("header digest", c));
    // Request names another chunk than the record.
    let mut c = good.clone();
    c.digest = other.digest;
    cases.push(("request digest", c));
    // Record truncated.
    let mut c = good.clone();
    c.record.pop();
    cases.push(("truncated", c));
    // Plaintext length disagrees with the header.
    let mut c = good.clone();
    c.raw_len += 1;
    cases.push(("raw_len", c));
    // Payload tampered with: header is consistent, data does not hash to the digest.
    let mut c = good.clone();
    let last = c.record.len() - 1;
    c.record[last] ^= 0x40;
    cases.push(("payload", c));
    // The reserved zero digest.
    let mut c = good.clone();
    c.digest = Digest::ZERO;
    c.record[16..CHUNK_HEADER_LEN].fill(0);
    cases.push(("zero digest", c));

    for (what, bad) in cases {
        match h.store.put(vec![other.clone(), bad]).await {
            Err(StoreError::Invalid(msg)) => assert!(msg.contains("rejected"), "{what}: {msg}"),
            res => panic!("{what}: expected Invalid, got {res:?}"),
        }
    }
    assert!(
        packs(&h).await.is_empty(),
        "a rejected batch writes nothing"
    );
    assert_eq!(
        h.store.missing(&[other.digest]).await.expect("missing"),
        vec![true]
    );
}

async fn same_digest_other_size_conflicts(h: Harness) {
    let good = chunk(5, 1000);
    h.store.put(vec![good.clone()]).await.expect("put");
    // A consistent record that claims another plaintext size under the same digest.
    let mut liar = good.clone();
    liar.raw_len += 10;
    liar.record[8..12].copy_from_slice(&liar.raw_len.to_le_bytes());
    match h.store.put(vec![liar.clone()]).await {
        Err(StoreError::SizeConflict {
            digest,
            existing,
            new,
        }) => assert_eq!((digest, existing, new), (good.digest, 1000, 1010)),
        res => panic!("expected SizeConflict, got {res:?}"),
    }
    let fresh = chunk(6, 1000);
    let mut liar2 = fresh.clone();
    liar2.raw_len += 1;
    liar2.record[8..12].copy_from_slice(&liar2.raw_len.to_le_bytes());
    assert!(matches!(
        h.store.put(vec![fresh, liar2]).await,
        Err(StoreError::SizeConflict { .. })
    ));
    assert_eq!(h.store.read(&good.digest).await.expect("read").len(), 1000);
}

async fn unknown_digest_is_not_found(h: Harness) {
    let d = Digest::of(b"nothing");
    assert!(matches!(h.store.read(&d).await, Err(StoreError::NotFound(x)) if x == d));
}

async fn missing_pack_is_a_clear_error(h: Harness) {
    let c = chunk(7, 5000);
    h.store.put(vec![c.clone()]).await.expect("put");
    let location = h
        .store
        .locate(&c.digest)
        .await
        .expect("locate")
        .expect("indexed");
    h.backend
        .delete(&location.pack.object_name())
        .await
        .expect("delete pack");
    match h.store.read(&c.digest).await {
        Err(StoreError::Backend(msg)) => {
            assert!(msg.contains(&c.digest.to_string()), "{msg}");
            assert!(msg.contains(&location.pack.to_string()), "{msg}");
            assert!(msg.contains("not found"), "{msg}");
        }
        res => panic!("expected a backend error, got {res:?}"),
    }
}

async fn concurrent_puts_of_the_same_chunks(h: Harness) {
    let chunks: Vec<_> = (10..18).map(|i| chunk(i, 20_000)).collect();
    let puts = (0..4).map(|_| h.store.put(chunks.clone()));
    let outcomes = futures::future::try_join_all(puts).await.expect("puts");
    let new: u64 = outcomes.iter().map(|o| o.chunks_new).sum();
    assert_eq!(new, 8, "each chunk is new exactly once: {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o.chunks_new + o.chunks_existing == 8)
    );
    assert_eq!(h.store.chunk_count().await.expect("count"), 8);
    for c in &chunks {
        assert_eq!(
            Digest::of(&h.store.read(&c.digest).await.expect("read")),
            c.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_on_disk_is_corrupt() {
    let h = local();
    let c = chunk(8, 50_000);
    let other = chunk(9, 50_000);
    h.store
        .put(vec![other.clone(), c.clone()])
        .await
        .expect("put");
    let location = h
        .store
        .locate(&c.digest)
        .await
        .expect("locate")
        .expect("indexed");
    let path = h.dir.path().join("packs").join(location.pack.object_name());
    let mut bytes = std::fs::read(&path).expect("read pack");
    let at = location.offset as usize + CHUNK_HEADER_LEN + 100;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).expect("write pack");

    match h.store.read(&c.digest).await {
        Err(StoreError::Corrupt {
            digest,
            location: l,
            ..
        }) => {
            assert_eq!(digest, c.digest);
            assert_eq!(
                l,
                format!("pack {} offset {}", location.pack, location.offset)
            );
        }
        res => panic!("expected Corrupt, got {res:?}"),
    }
    // The other chunk in the same pack is unharmed.
    assert_eq!(
        Digest::of(&h.store.read(&other.digest).await.expect("read")),
        other.digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen() {
    let h = local();
    let chunks: Vec<_> = (20..23).map(|i| chunk(i, 7000)).collect();
    h.store.put(chunks.clone()).await.expect("put");
    let stats = h.store.stats().await.expect("stats");
    let Harness { store, dir, .. } = h;
    drop(store);

    let store = LocalChunkStore::open(dir.path()).expect("reopen");
    assert_eq!(store.stats().await.expect("stats"), stats);
    let digests: Vec<_> = chunks.iter().map(|c| c.digest).collect();
    assert_eq!(
        store.missing(&digests).await.expect("missing"),
        vec![false; 3]
    );
    for c in &chunks {
        assert_eq!(
            Digest::of(&store.read(&c.digest).await.expect("read")),
            c.digest
        );
    }
    let again = store.put(chunks).await.expect("put again");
    assert_eq!(again.chunks_new, 0);
}

#[tokio::test]
async fn a_second_open_of_the_same_index_fails_cleanly() {
    let h = local();
    match LocalChunkStore::open(h.dir.path()) {
        Err(e) => assert!(e.to_string().contains("index"), "{e}"),
        Ok(_) => panic!("two stores on one index"),
    }
}
