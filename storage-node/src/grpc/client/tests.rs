//! The client over real gRPC against a real storage node (RocksDB in a temp dir) on
//! 127.0.0.1.

use bora_core::chunk::encode;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::LocalChunkStore;
use crate::grpc::StorageService;

/// A real storage node (RocksDB + packs in a temp dir) served on 127.0.0.1:0, and a
/// client over real gRPC.
async fn node() -> (
    tempfile::TempDir,
    GrpcChunkStore,
    tokio::task::JoinHandle<()>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalChunkStore::open(dir.path()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(StorageService::new(store).into_server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let client = GrpcChunkStore::connect(&format!("http://{addr}"))
        .await
        .unwrap();
    (dir, client, server)
}

#[tokio::test]
async fn put_missing_read_over_grpc() {
    let (_dir, c, server) = node().await;
    let a = encode(&b"chunk a".repeat(1000), 1).unwrap();
    let b = encode(b"chunk b", 1).unwrap();
    assert_eq!(
        c.missing(&[a.digest, b.digest]).await.unwrap(),
        [true, true]
    );
    let out = c.put(vec![a.clone(), b.clone(), a.clone()]).await.unwrap();
    assert_eq!(out.chunks_new, 2);
    assert_eq!(
        c.missing(&[a.digest, b.digest]).await.unwrap(),
        [false, false]
    );
    assert_eq!(
        &c.read(&a.digest).await.unwrap()[..],
        &b"chunk a".repeat(1000)[..]
    );
    let again = c.put(vec![b.clone()]).await.unwrap();
    assert_eq!((again.chunks_new, again.chunks_existing), (0, 1));
    server.abort();
}

#[tokio::test]
async fn errors_come_back_as_store_errors() {
    let (_dir, c, server) = node().await;
    let unknown = Digest::of(b"never stored");
    assert!(matches!(c.read(&unknown).await, Err(StoreError::NotFound(d)) if d == unknown));
    // A record whose header names another digest is refused by the node.
    let mut bad = encode(b"x", 1).unwrap();
    bad.digest = Digest::of(b"y");
    assert!(matches!(
        c.put(vec![bad]).await,
        Err(StoreError::Invalid(_))
    ));
    server.abort();
    // Nobody listening is a backend error, not a hang or a panic (loopback only).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = GrpcChunkStore::connect(&format!("http://127.0.0.1:{port}")).await;
    assert!(matches!(err, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_digests_pages_in_order_over_grpc() {
    let (_dir, c, server) = node().await;
    let page = c.list_digests(None, 0).await.unwrap();
    assert_eq!(
        page,
        DigestPage {
            digests: vec![],
            done: true
        }
    );

    let chunks: Vec<_> = (0..25u32)
        .map(|i| encode(format!("listed {i}").as_bytes(), 1).unwrap())
        .collect();
    let mut expected: Vec<Digest> = chunks.iter().map(|c| c.digest).collect();
    expected.sort();
    c.put(chunks).await.unwrap();

    let mut listed: Vec<Digest> = Vec::new();
    let mut after = None;
    loop {
        let page = c.list_digests(after, 10).await.unwrap();
        assert!(page.digests.len() <= 10);
        listed.extend(&page.digests);
        after = page.digests.last().copied().or(after);
        if page.done {
            break;
        }
    }
    assert_eq!(listed, expected);
    // Exactly a page's worth left: that page already says it is the last.
    let last_ten = c.list_digests(Some(expected[14]), 10).await.unwrap();
    assert_eq!((last_ten.digests.len(), last_ten.done), (10, true));
    let first = c.list_digests(None, 0).await.unwrap();
    assert_eq!((first.digests.len(), first.done), (25, true));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_record_returns_the_stored_form_and_stats_count_it() {
    let (_dir, c, server) = node().await;
    let zstd = encode(&b"compressible ".repeat(5000), 1).unwrap();
    let raw = encode(b"tiny", 1).unwrap();
    c.put(vec![zstd.clone(), raw.clone()]).await.unwrap();

    for chunk in [&zstd, &raw] {
        let got = c.read_record(&chunk.digest).await.unwrap();
        assert_eq!(got.digest, chunk.digest);
        assert_eq!(got.raw_len, chunk.raw_len);
        assert_eq!(got.codec, chunk.codec);
        assert_eq!(got.record, chunk.record, "byte for byte, not recompressed");
    }
    let unknown = Digest::of(b"not here");
    assert!(matches!(c.read_record(&unknown).await, Err(StoreError::NotFound(d)) if d == unknown));

    let stats = c.stats().await.unwrap();
    assert_eq!(stats.chunks, 2);
    assert_eq!(
        stats.bytes_stored,
        (zstd.record.len() + raw.record.len()) as u64
    );
    server.abort();
}

/// Incompressible data, so records are as big as the plaintext.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed * 2 + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_bigger_than_one_message_is_split() {
    let (_dir, c, server) = node().await;
    // 5 x 16 MiB = 80 MiB of records: more than one message may carry.
    let chunks: Vec<_> = (0..5)
        .map(|i| encode(&noise(i + 1, 16 << 20), 1).unwrap())
        .collect();
    let total: usize = chunks.iter().map(|c| c.record.len()).sum();
    assert!(total > MAX_MESSAGE_BYTES);
    let out = c.put(chunks.clone()).await.unwrap();
    assert_eq!(out.chunks_new, 5);
    assert_eq!(out.bytes_written, total as u64);
    // Record bytes plus a few bytes of framing per chunk and per message.
    let sent = c.bytes_sent();
    assert!(sent > total as u64 && sent < total as u64 + 1000, "{sent}");
    let back = c.read_record(&chunks[4].digest).await.unwrap();
    assert_eq!(back.record, chunks[4].record);
    server.abort();
}

#[test]
fn protobuf_field_lengths() {
    assert_eq!(bytes_field_len(0), 2);
    assert_eq!(bytes_field_len(32), 34);
    assert_eq!(bytes_field_len(127), 129);
    assert_eq!(bytes_field_len(128), 131);
    assert_eq!(bytes_field_len(16_384), 16_384 + 4);
}

#[tokio::test]
async fn a_channel_counts_its_connections() {
    let (_dir, eager, server) = node().await;
    assert_eq!(eager.connections(), 1, "connect makes one connection");
    let lazy = GrpcChunkStore::connect_lazy("http://127.0.0.1:1").unwrap();
    assert_eq!(lazy.connections(), 0, "a lazy client has not connected");
    assert!(lazy.stats().await.is_err(), "nothing listens on port 1");
    assert_eq!(lazy.connections(), 0, "a refused connection is not counted");
    eager.stats().await.unwrap();
    eager.clone().stats().await.unwrap();
    assert_eq!(
        eager.connections(),
        1,
        "requests and clones share the connection"
    );
    server.abort();
}
