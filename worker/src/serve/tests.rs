//! The server against Bora's own (strict) NBD client and against hand-written hostile
//! clients, over in-memory pipes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::task::JoinHandle;

use bora_core::chunk;
use bora_core::index::DiskIndex;
use bora_core::store::ChunkStore;
use bora_core::store::memory::MemoryChunkStore;

use super::wire::*;
use super::{ConnError, Export, connection};
use crate::nbd::proto::encode_request;
use crate::nbd::{BlockStatusExtent, CONTEXT_BASE_ALLOCATION, NbdClient};
use crate::snapshot_reader::SnapshotReader;

const CS: u32 = 64 << 10;
const C: u64 = CS as u64;

/// A disk of 6 chunks and a 1000-byte tail: chunks 0, 2 and 5 hold data.
async fn disk() -> (Arc<SnapshotReader>, Vec<u8>) {
    let store = Arc::new(MemoryChunkStore::default());
    let size = 6 * C + 1000;
    let mut bytes = vec![0u8; size as usize];
    let mut idx = DiskIndex::zeroed(size, CS).expect("index");
    for i in [0usize, 2, 5] {
        let (off, len) = idx.chunk_extent(i);
        let data: Vec<u8> = (0..len).map(|b| (b as usize * 13 + i) as u8 | 1).collect();
        bytes[off as usize..off as usize + len as usize].copy_from_slice(&data);
        let enc = chunk::encode(&data, 1).expect("encode");
        idx.set(i, Some(enc.digest));
        store.put(vec![enc]).await.expect("put");
    }
    (
        Arc::new(SnapshotReader::new(store, Arc::new(idx), 8)),
        bytes,
    )
}

async fn export(writable: bool) -> (Arc<Export>, Vec<u8>, Option<tempfile::TempDir>) {
    let (reader, bytes) = disk().await;
    let mut e = Export::new("vda", "web", "vda", reader).expect("export");
    let mut dir = None;
    if writable {
        let d = tempfile::tempdir().expect("tempdir");
        e = e.writable(d.path()).expect("writable");
        dir = Some(d);
    }
    (Arc::new(e), bytes, dir)
}

fn start(export: &Arc<Export>) -> (DuplexStream, JoinHandle<Result<(), ConnError>>) {
    let (client, server) = duplex(1 << 20);
    let e = export.clone();
    let task = tokio::spawn(async move { connection(server, &e).await });
    (client, task)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("hung")
}

async fn client(export: &Arc<Export>) -> NbdClient {
    let (c, _task) = start(export);
    within(NbdClient::connect_stream(
        c,
        "vda",
        &[CONTEXT_BASE_ALLOCATION],
    ))
    .await
    .expect("handshake")
}

#[tokio::test]
async fn reads_and_block_status_through_the_nbd_client() {
    let (export, bytes, _) = export(false).await;
    let c = client(&export).await;
    assert_eq!(c.size(), bytes.len() as u64);
    assert!(c.read_only());
    assert_eq!(c.max_block(), MAX_BLOCK);
    let all = within(c.read(0, bytes.len() as u32)).await.expect("read");
    assert_eq!(&all[..], &bytes[..]);
    let part = within(c.read(C - 7, 2 * CS + 20)).await.expect("read");
    assert_eq!(&part[..], &bytes[(C - 7) as usize..(3 * C + 13) as usize]);

    let ext = within(c.block_status(CONTEXT_BASE_ALLOCATION, 0, 1 << 40))
        .await
        .expect("block status");
    let e = |offset, length, flags| BlockStatusExtent {
        offset,
        length,
        flags,
    };
    assert_eq!(
        ext,
        vec![
            e(0, C, 0),
            e(C, C, 3),
            e(2 * C, C, 0),
            e(3 * C, 2 * C, 3),
            e(5 * C, C, 0),
            e(6 * C, 1000, 3),
        ]
    );
    // Only chunks with data were fetched, each once.
    assert_eq!(export.bytes_fetched(), 3 * C);
    c.disconnect().await.expect("disconnect");
}

#[tokio::test]
async fn writes_to_a_read_only_export_fail_with_eperm_and_the_connection_lives() {
    let (export, bytes, _) = export(false).await;
    // Bora's client refuses to write to a read-only export, so speak the protocol by hand.
    let (mut c, _task) = start(&export);
    within(async {
        old_style(&mut c, "vda").await;
        let mut w = encode_request(0, CMD_WRITE, 1, 0, 512).to_vec();
        w.extend_from_slice(&[0xee; 512]);
        c.write_all(&w).await.expect("w");
        assert_eq!(simple_reply(&mut c).await, (EPERM, 1));
        for (cookie, kind) in [(2, CMD_WRITE_ZEROES), (3, CMD_TRIM)] {
            c.write_all(&encode_request(0, kind, cookie, 0, 4096))
                .await
                .expect("w");
            assert_eq!(simple_reply(&mut c).await, (EPERM, cookie));
        }
        c.write_all(&encode_request(0, CMD_FLUSH, 4, 0, 0))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (0, 4));
        c.write_all(&encode_request(0, CMD_READ, 5, 0, 10))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (0, 5));
        let mut data = [0u8; 10];
        c.read_exact(&mut data).await.expect("data");
        assert_eq!(&data[..], &bytes[..10]);
    })
    .await;
}

#[tokio::test]
async fn writable_export_reads_its_writes_back_and_leaves_the_snapshot_alone() {
    let (export, bytes, _dir) = export(true).await;
    let c = client(&export).await;
    assert!(!c.read_only());
    let mut want = bytes.clone();
    for (off, len, byte) in [
        (100u64, 5000usize, 0xaau8),
        (C + 10, 10, 0xbb),
        (6 * C + 990, 10, 0xcc),
    ] {
        within(c.write(off, &vec![byte; len])).await.expect("write");
        want[off as usize..off as usize + len].fill(byte);
    }
    within(c.write_zeroes(2 * C + 1, 3 * CS))
        .await
        .expect("zero");
    want[(2 * C + 1) as usize..(5 * C + 1) as usize].fill(0);
    within(c.flush()).await.expect("flush");
    let got = within(c.read(0, bytes.len() as u32)).await.expect("read");
    assert!(got[..] == want[..], "overlay reads differ");
    // The written blocks are data now; the snapshot itself is unchanged.
    let ext = within(c.block_status(CONTEXT_BASE_ALLOCATION, C, C))
        .await
        .expect("block status");
    assert_eq!(ext[0].flags, 0);
    assert_eq!(ext[0].length, 4096);
    let (fresh, _) = disk().await;
    assert_eq!(
        &fresh.read_at(0, bytes.len()).await.expect("read")[..],
        &bytes[..]
    );
}

/// A hand-written client: greeting, flags, EXPORT_NAME; returns the size.
async fn old_style(c: &mut DuplexStream, name: &str) -> u64 {
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
    c.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .await
        .expect("flags");
    c.write_u64(IHAVEOPT).await.expect("w");
    c.write_u32(OPT_EXPORT_NAME).await.expect("w");
    c.write_u32(name.len() as u32).await.expect("w");
    c.write_all(name.as_bytes()).await.expect("w");
    let size = c.read_u64().await.expect("size");
    let flags = c.read_u16().await.expect("flags");
    assert_ne!(flags & TFLAG_READ_ONLY, 0);
    size
}

async fn simple_reply(c: &mut DuplexStream) -> (u32, u64) {
    assert_eq!(c.read_u32().await.expect("magic"), SIMPLE_REPLY_MAGIC);
    let errno = c.read_u32().await.expect("errno");
    (errno, c.read_u64().await.expect("cookie"))
}

#[tokio::test]
async fn export_name_and_simple_replies_and_huge_lengths() {
    let (export, bytes, _) = export(false).await;
    let (mut c, task) = start(&export);
    within(async {
        assert_eq!(old_style(&mut c, "vda").await, bytes.len() as u64);
        // A read over 32 MiB and one past the end are refused, not allocated.
        c.write_all(&encode_request(0, CMD_READ, 1, 0, u32::MAX))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (EOVERFLOW, 1));
        c.write_all(&encode_request(0, CMD_READ, 2, u64::MAX - 1, 4))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (EINVAL, 2));
        c.write_all(&encode_request(0, CMD_BLOCK_STATUS, 3, 0, 4))
            .await
            .expect("w");
        assert_eq!(
            simple_reply(&mut c).await,
            (EINVAL, 3),
            "no context negotiated"
        );
        c.write_all(&encode_request(0, 99, 4, 0, 4))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (EINVAL, 4));
        // A simple read reply carries the data, holes included.
        c.write_all(&encode_request(0, CMD_READ, 5, C - 2, 4))
            .await
            .expect("w");
        assert_eq!(simple_reply(&mut c).await, (0, 5));
        let mut data = [0u8; 4];
        c.read_exact(&mut data).await.expect("data");
        assert_eq!(&data[..], &bytes[(C - 2) as usize..(C + 2) as usize]);
        // A write payload over the limit cannot be refused in band: the connection closes.
        c.write_all(&encode_request(0, CMD_WRITE, 6, 0, u32::MAX))
            .await
            .expect("w");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    })
    .await;
    assert!(matches!(
        task.await.expect("task"),
        Err(ConnError::Protocol(_))
    ));
}

#[tokio::test]
async fn garbage_and_unknown_exports_close_only_that_connection() {
    let (export, _, _) = export(false).await;
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 3, 0x49, 0x48], // flags, then half a magic and EOF
    ] {
        let (mut c, task) = start(&export);
        c.write_all(&garbage).await.expect("w");
        c.shutdown().await.expect("shutdown");
        assert!(within(task).await.expect("task").is_err());
    }
    let (mut c, task) = start(&export);
    within(async {
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).await.expect("greeting");
        c.write_u32(3).await.expect("w");
        // An unknown option, then GO for an unknown export, then an oversized option.
        for (opt, data) in [
            (42u32, vec![1u8, 2]),
            (OPT_GO, {
                let mut b = Vec::new();
                put_str(&mut b, "nope");
                b.extend_from_slice(&0u16.to_be_bytes());
                b
            }),
        ] {
            c.write_u64(IHAVEOPT).await.expect("w");
            c.write_u32(opt).await.expect("w");
            c.write_u32(data.len() as u32).await.expect("w");
            c.write_all(&data).await.expect("w");
            assert_eq!(c.read_u64().await.expect("r"), OPTION_REPLY_MAGIC);
            assert_eq!(c.read_u32().await.expect("r"), opt);
            let kind = c.read_u32().await.expect("r");
            let want = if opt == 42 {
                REP_ERR_UNSUP
            } else {
                REP_ERR_UNKNOWN
            };
            assert_eq!(kind, want);
            let len = c.read_u32().await.expect("r");
            let mut msg = vec![0u8; len as usize];
            c.read_exact(&mut msg).await.expect("r");
        }
        c.write_u64(IHAVEOPT).await.expect("w");
        c.write_u32(OPT_EXPORT_NAME).await.expect("w");
        c.write_u32(4).await.expect("w");
        c.write_all(b"nope").await.expect("w");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("eof");
        assert!(
            rest.is_empty(),
            "an unknown EXPORT_NAME closes the connection"
        );
    })
    .await;
    assert!(task.await.expect("task").is_err());
    // The export still serves others.
    let c = client(&export).await;
    within(c.read(0, 10)).await.expect("read");
}

#[tokio::test]
async fn list_and_list_meta_context() {
    let (export, _, _) = export(false).await;
    let (mut c, task) = start(&export);
    within(async {
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).await.expect("greeting");
        c.write_u32(3).await.expect("w");
        let mut q = Vec::new();
        put_str(&mut q, "vda");
        q.extend_from_slice(&0u32.to_be_bytes());
        for (opt, data) in [(OPT_LIST, Vec::new()), (OPT_LIST_META_CONTEXT, q)] {
            c.write_u64(IHAVEOPT).await.expect("w");
            c.write_u32(opt).await.expect("w");
            c.write_u32(data.len() as u32).await.expect("w");
            c.write_all(&data).await.expect("w");
            let mut replies = Vec::new();
            loop {
                assert_eq!(c.read_u64().await.expect("r"), OPTION_REPLY_MAGIC);
                assert_eq!(c.read_u32().await.expect("r"), opt);
                let kind = c.read_u32().await.expect("r");
                let len = c.read_u32().await.expect("r");
                let mut d = vec![0u8; len as usize];
                c.read_exact(&mut d).await.expect("r");
                if kind == REP_ACK {
                    break;
                }
                replies.push((kind, d));
            }
            let want = if opt == OPT_LIST {
                (REP_SERVER, [&3u32.to_be_bytes()[..], b"vda"].concat())
            } else {
                (
                    REP_META_CONTEXT,
                    [&0u32.to_be_bytes()[..], b"base:allocation"].concat(),
                )
            };
            assert_eq!(replies, vec![want]);
        }
        c.write_u64(IHAVEOPT).await.expect("w");
        c.write_u32(OPT_ABORT).await.expect("w");
        c.write_u32(0).await.expect("w");
    })
    .await;
    assert!(within(task).await.expect("task").is_ok());
}
