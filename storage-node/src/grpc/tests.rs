use super::*;
use crate::backend::ObjectStoreBackend;
use crate::store::LocalChunkStore;
use bora_core::chunk::{ChunkError, encode};
use bytes::Bytes;
use tonic::Code;

fn service() -> (StorageService, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalChunkStore::open_with(
        &dir.path().join("index"),
        Arc::new(ObjectStoreBackend::in_memory()),
    )
    .expect("open");
    (StorageService::new(Arc::new(store)), dir)
}

fn wire(c: &EncodedChunk) -> ChunkRecord {
    ChunkRecord {
        digest: Bytes::copy_from_slice(c.digest.as_bytes()),
        record: Bytes::from(c.record.clone()),
    }
}

#[tokio::test]
async fn put_missing_read_in_process() {
    let (svc, _dir) = service();
    let c = encode(&b"a block of a disk ".repeat(500), 1).expect("encode");
    let digests = vec![Bytes::copy_from_slice(c.digest.as_bytes())];

    let missing = svc
        .missing(Request::new(MissingRequest {
            digests: digests.clone(),
        }))
        .await
        .expect("missing");
    assert_eq!(missing.into_inner().missing, vec![true]);

    let put = |chunks| svc.put(Request::new(PutRequest { chunks }));
    let first = put(vec![wire(&c), wire(&c)])
        .await
        .expect("put")
        .into_inner();
    assert_eq!((first.chunks_new, first.chunks_existing), (1, 1));
    assert_eq!(first.bytes_written, c.record.len() as u64);
    let again = put(vec![wire(&c)]).await.expect("put").into_inner();
    assert_eq!((again.chunks_new, again.chunks_existing), (0, 1));

    let missing = svc
        .missing(Request::new(MissingRequest { digests }))
        .await
        .expect("missing");
    assert_eq!(missing.into_inner().missing, vec![false]);

    let read = svc
        .read(Request::new(ReadRequest {
            digest: Bytes::copy_from_slice(c.digest.as_bytes()),
        }))
        .await
        .expect("read");
    assert_eq!(read.into_inner().data, b"a block of a disk ".repeat(500));
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let (svc, _dir) = service();
    let short = Bytes::from_static(&[1, 2, 3]);
    let e = svc
        .read(Request::new(ReadRequest {
            digest: short.clone(),
        }))
        .await
        .expect_err("short digest");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("3 bytes"), "{}", e.message());

    let e = svc
        .missing(Request::new(MissingRequest {
            digests: vec![Bytes::from_static(&[0; 32]), short],
        }))
        .await
        .expect_err("short digest");
    assert_eq!(e.code(), Code::InvalidArgument);

    let c = encode(b"x", 1).expect("encode");
    let mut garbage = wire(&c);
    garbage.record = Bytes::from_static(b"not a chunk record at all, just some bytes here....");
    let e = svc
        .put(Request::new(PutRequest {
            chunks: vec![garbage],
        }))
        .await
        .expect_err("garbage record");
    assert_eq!(e.code(), Code::InvalidArgument);

    let mut other = wire(&c);
    other.digest = Bytes::copy_from_slice(Digest::of(b"y").as_bytes());
    let e = svc
        .put(Request::new(PutRequest {
            chunks: vec![other],
        }))
        .await
        .expect_err("digest mismatch");
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = svc
        .read(Request::new(ReadRequest {
            digest: Bytes::copy_from_slice(c.digest.as_bytes()),
        }))
        .await
        .expect_err("not stored");
    assert_eq!(e.code(), Code::NotFound);
}

#[test]
fn errors_map_to_codes() {
    let d = Digest::of(b"d");
    let cases = [
        (StoreError::NotFound(d), Code::NotFound),
        (
            StoreError::Corrupt {
                digest: d,
                location: "pack 1 offset 6".into(),
                source: Box::new(ChunkError::TooShort(3)),
            },
            Code::DataLoss,
        ),
        (
            StoreError::SizeConflict {
                digest: d,
                existing: 1,
                new: 2,
            },
            Code::AlreadyExists,
        ),
        (StoreError::Invalid("x".into()), Code::InvalidArgument),
        (StoreError::Index("x".into()), Code::Internal),
        (StoreError::Backend("x".into()), Code::Unavailable),
    ];
    for (e, code) in cases {
        let msg = e.to_string();
        let status = to_status(e);
        assert_eq!(status.code(), code, "{msg}");
        assert_eq!(status.message(), msg);
    }
}

#[tokio::test]
async fn list_record_and_stats_in_process() {
    let (svc, _dir) = service();
    let c = encode(&b"listed ".repeat(300), 1).expect("encode");
    svc.put(Request::new(PutRequest {
        chunks: vec![wire(&c)],
    }))
    .await
    .expect("put");

    let list =
        |after: Bytes, limit| svc.list_digests(Request::new(ListDigestsRequest { after, limit }));
    let page = list(Bytes::new(), 0).await.expect("list").into_inner();
    assert_eq!(
        page.digests,
        vec![Bytes::copy_from_slice(c.digest.as_bytes())]
    );
    assert!(page.done);
    let page = list(Bytes::copy_from_slice(c.digest.as_bytes()), 5)
        .await
        .expect("list")
        .into_inner();
    assert!(page.digests.is_empty() && page.done);
    let e = list(Bytes::from_static(&[7; 5]), 5)
        .await
        .expect_err("short after");
    assert_eq!(e.code(), Code::InvalidArgument);

    let record = svc
        .read_record(Request::new(ReadRequest {
            digest: Bytes::copy_from_slice(c.digest.as_bytes()),
        }))
        .await
        .expect("read record")
        .into_inner();
    assert_eq!(record.record, c.record);
    let e = svc
        .read_record(Request::new(ReadRequest {
            digest: Bytes::copy_from_slice(Digest::of(b"absent").as_bytes()),
        }))
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);

    let stats = svc
        .stats(Request::new(StatsRequest {}))
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(
        (stats.chunks, stats.bytes_stored),
        (1, c.record.len() as u64)
    );
}
