//! The client against a scripted server: the test plays the server byte by byte on the
//! other end of an in-memory pipe, well-behaved or hostile.

use futures::future::join_all;
use tokio::io::{AsyncWriteExt, duplex};

use super::fake_server::*;
use super::proto::*;
use super::{BlockStatusExtent, NbdClient, NbdError};

#[tokio::test]
async fn handshake_then_read_of_data_and_hole() {
    let (client, mut fake) = connected(8 * MIB, 1 | TFLAG_READ_ONLY).await;
    assert_eq!(client.size(), 8 * MIB);
    assert!(client.read_only());
    assert_eq!(client.max_block(), MIB as u32);
    assert_eq!(
        client.meta_contexts().collect::<Vec<_>>(),
        ["base:allocation"]
    );
    let server = async {
        let r = fake.request().await;
        assert_eq!(
            (r.kind, r.offset, r.len, r.flags),
            (CMD_READ, 4096, 8192, 0)
        );
        // Out of order: the hole first, then the data, which ends the reply.
        fake.chunk(false, REPLY_TYPE_OFFSET_HOLE, r.cookie, &hole(8192, 4096))
            .await;
        fake.chunk(
            true,
            REPLY_TYPE_OFFSET_DATA,
            r.cookie,
            &data(4096, &[0xaa; 4096]),
        )
        .await;
    };
    let (got, ()) = within(async { tokio::join!(client.read(4096, 8192), server) }).await;
    let got = got.expect("read");
    assert!(got[..4096].iter().all(|b| *b == 0xaa));
    assert!(got[4096..].iter().all(|b| *b == 0));
}

#[tokio::test]
async fn bad_greeting_magic_is_refused() {
    let (c, mut s) = duplex(1 << 16);
    s.write_u64(0x1122_3344_5566_7788).await.expect("write");
    s.write_u64(IHAVEOPT).await.expect("write");
    let err = within(NbdClient::connect_stream(c, "disk", &[])).await;
    assert!(
        matches!(
            err,
            Err(NbdError::BadMagic {
                what: "greeting",
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn oversized_option_reply_is_refused_before_allocating() {
    let (c, s) = duplex(1 << 16);
    let mut fake = Fake { s };
    let server = async {
        fake.greet().await;
        let (opt, _) = fake.option().await;
        // Header only: claims 1 GiB of data that never comes.
        let mut b = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        for v in [opt, REP_ACK, 1 << 30] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        fake.s.write_all(&b).await.expect("write");
    };
    let (err, ()) =
        within(async { tokio::join!(NbdClient::connect_stream(c, "disk", &[]), server) }).await;
    assert!(
        matches!(
            err,
            Err(NbdError::OptionReplyTooLarge {
                len: 0x4000_0000,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn meta_context_dropped_by_the_server_is_an_error() {
    let (c, s) = duplex(1 << 16);
    let mut fake = Fake { s };
    let wanted = ["base:allocation", "qemu:dirty-bitmap:chk1"];
    let (client, ()) = within(async {
        tokio::join!(
            NbdClient::connect_stream(c, "disk", &wanted),
            fake.handshake(MIB, 1, &[("base:allocation", 1)])
        )
    })
    .await;
    match client {
        Err(NbdError::MetaContextNotAccepted(name)) => assert_eq!(name, "qemu:dirty-bitmap:chk1"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a dropped meta context must fail the handshake"),
    }
}

#[tokio::test]
async fn block_status_loops_until_covered_and_clips_the_last_extent() {
    let (client, mut fake) = connected(10 * MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        assert_eq!(
            (r.kind, r.flags, r.offset, r.len),
            (CMD_BLOCK_STATUS, 0, MIB / 2, 9 * MIB as u32)
        );
        let reply = status(5, &[(MIB as u32 / 2, 0), (MIB as u32, 3)]);
        fake.chunk(true, REPLY_TYPE_BLOCK_STATUS, r.cookie, &reply)
            .await;
        let r = fake.request().await;
        assert_eq!(
            (r.offset, r.len),
            (2 * MIB, 7 * MIB as u32 + MIB as u32 / 2)
        );
        // Runs past the request (allowed for the last extent), not past the export.
        let reply = status(5, &[(8 * MIB as u32, 1)]);
        fake.chunk(true, REPLY_TYPE_BLOCK_STATUS, r.cookie, &reply)
            .await;
    };
    let (got, ()) = within(async {
        tokio::join!(
            client.block_status("base:allocation", MIB / 2, 9 * MIB),
            server
        )
    })
    .await;
    let e = |offset, length, flags| BlockStatusExtent {
        offset,
        length,
        flags,
    };
    let want = vec![
        e(MIB / 2, MIB / 2, 0),
        e(MIB, MIB, 3),
        e(2 * MIB, 7 * MIB + MIB / 2, 1),
    ];
    assert_eq!(got.expect("block status"), want);
    assert!(matches!(
        client.block_status("qemu:dirty-bitmap:x", 0, 1).await,
        Err(NbdError::UnknownContext(_))
    ));
}

#[tokio::test]
async fn zero_length_extent_fails_instead_of_looping() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk(
            true,
            REPLY_TYPE_BLOCK_STATUS,
            r.cookie,
            &status(5, &[(0, 0)]),
        )
        .await;
    };
    let (got, ()) =
        within(async { tokio::join!(client.block_status("base:allocation", 0, MIB), server) })
            .await;
    assert!(matches!(
        err(got).cause(),
        NbdError::ZeroLengthExtent { offset: 0 }
    ));
}

#[tokio::test]
async fn extent_past_the_export_is_refused() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk(
            true,
            REPLY_TYPE_BLOCK_STATUS,
            r.cookie,
            &status(5, &[(2 * MIB as u32, 0)]),
        )
        .await;
    };
    let (got, ()) =
        within(async { tokio::join!(client.block_status("base:allocation", 0, MIB), server) })
            .await;
    assert!(matches!(
        err(got).cause(),
        NbdError::ExtentPastExport { .. }
    ));
}

#[tokio::test]
async fn reply_with_a_wrong_cookie_fails_the_connection() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk(
            true,
            REPLY_TYPE_OFFSET_DATA,
            r.cookie + 1,
            &data(0, &[1; 512]),
        )
        .await;
    };
    let (got, ()) = within(async { tokio::join!(client.read(0, 512), server) }).await;
    assert!(matches!(err(got).cause(), NbdError::UnknownCookie(_)));
    // Later requests fail at once.
    let again = within(client.read(0, 512)).await;
    assert!(matches!(err(again).cause(), NbdError::UnknownCookie(_)));
}

#[tokio::test]
async fn short_payload_then_eof_fails_pending_and_later_requests() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk_header(true, REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + 4096)
            .await;
        fake.s.write_all(&data(0, &[7; 100])).await.expect("write");
        drop(fake);
    };
    let (got, ()) = within(async { tokio::join!(client.read(0, 4096), server) }).await;
    assert!(matches!(err(got).cause(), NbdError::Truncated("read data")));
    assert!(matches!(
        within(client.read(0, 1)).await,
        Err(NbdError::ConnectionLost(_))
    ));
}

#[tokio::test]
async fn chunks_larger_than_or_outside_the_request_are_refused() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk_header(true, REPLY_TYPE_OFFSET_DATA, r.cookie, 8 + 8192)
            .await;
    };
    let (got, ()) = within(async { tokio::join!(client.read(0, 4096), server) }).await;
    assert!(matches!(
        err(got).cause(),
        NbdError::ChunkTooLarge {
            len: 8200,
            max: 4104,
            ..
        }
    ));

    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        fake.chunk(true, REPLY_TYPE_OFFSET_DATA, r.cookie, &data(0, &[1; 4096]))
            .await;
    };
    let (got, ()) = within(async { tokio::join!(client.read(4096, 4096), server) }).await;
    assert!(matches!(
        err(got).cause(),
        NbdError::OutsideRequest { offset: 0, .. }
    ));
}

#[tokio::test]
async fn error_chunk_carries_errno_and_message_and_keeps_the_connection() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let r = fake.request().await;
        let mut p = 5u32.to_be_bytes().to_vec();
        p.extend_from_slice(&12u16.to_be_bytes());
        p.extend_from_slice(b"disk on fire");
        fake.chunk(true, REPLY_TYPE_ERROR, r.cookie, &p).await;
        let r = fake.request().await;
        fake.simple(22, r.cookie).await;
        let r = fake.request().await;
        fake.chunk(true, REPLY_TYPE_OFFSET_DATA, r.cookie, &data(0, &[3; 512]))
            .await;
    };
    let client_side = async {
        let err = client.read(0, 512).await.expect_err("error chunk");
        let msg = err.to_string();
        match err {
            NbdError::Server { errno, message, .. } => {
                assert_eq!((errno, message.as_str()), (5, "disk on fire"))
            }
            e => panic!("wrong error {e}"),
        }
        assert!(msg.contains("EIO") && msg.contains("disk on fire"), "{msg}");
        let err = client.read(0, 512).await.expect_err("simple error reply");
        assert!(matches!(err, NbdError::Server { errno: 22, .. }), "{err}");
        client.read(0, 512).await.expect("the connection survives")
    };
    let (got, ()) = within(async { tokio::join!(client_side, server) }).await;
    assert_eq!(&got[..], &[3; 512]);
}

#[tokio::test]
async fn sixteen_concurrent_reads_answered_out_of_order() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        let mut reqs = Vec::new();
        for _ in 0..16 {
            reqs.push(fake.request().await);
        }
        for r in reqs.iter().rev() {
            let fill = (r.offset / 4096) as u8;
            fake.chunk(
                true,
                REPLY_TYPE_OFFSET_DATA,
                r.cookie,
                &data(r.offset, &[fill; 4096]),
            )
            .await;
        }
    };
    let reads = join_all((0..16u64).map(|i| client.read(i * 4096, 4096)));
    let (got, ()) = within(async { tokio::join!(reads, server) }).await;
    for (i, r) in got.into_iter().enumerate() {
        assert!(r.expect("read").iter().all(|b| *b == i as u8));
    }
}

#[tokio::test]
async fn server_closing_with_requests_in_flight_fails_them() {
    let (client, mut fake) = connected(MIB, 1).await;
    let server = async {
        fake.request().await;
        fake.request().await;
        drop(fake);
    };
    let (a, b, ()) =
        within(async { tokio::join!(client.read(0, 512), client.read(512, 512), server) }).await;
    assert!(matches!(err(a).cause(), NbdError::Closed));
    assert!(matches!(err(b).cause(), NbdError::Closed));
    assert!(
        within(client.flush()).await.is_ok(),
        "flush is a no-op without SEND_FLUSH"
    );
    assert!(matches!(
        err(within(client.read(0, 512)).await).cause(),
        NbdError::Closed
    ));
}

/// A server that completes the handshake, takes a request and never answers: the request
/// fails after the request timeout (time is paused, so the test does not wait for it) and
/// the connection is failed for everyone.
#[tokio::test]
async fn a_stalled_server_times_out_instead_of_hanging() {
    let (client, mut fake) = connected(8 * MIB, 1).await;
    tokio::time::pause();
    let server = async {
        let r = fake.request().await;
        assert_eq!(r.kind, CMD_READ);
        // ... and never reply; keep the pipe open until the client gives up.
        std::future::pending::<()>().await;
    };
    let read = async { client.read(0, 4096).await };
    let got = tokio::select! {
        r = read => r,
        () = server => unreachable!(),
    };
    match got {
        Err(NbdError::ConnectionLost(cause)) => {
            assert!(
                matches!(*cause, NbdError::RequestTimeout { .. }),
                "{cause:?}"
            )
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(client.read(0, 4096).await.is_err());
}
