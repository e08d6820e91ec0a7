//! Writes against a scripted server: splitting, zeroing, flushing, and what a failed or
//! cancelled piece does to the connection.

use std::time::Duration;

use super::NbdError;
use super::fake_server::*;
use super::proto::*;

const TFLAGS_RW: u16 = 1 | TFLAG_SEND_FLUSH | TFLAG_SEND_WRITE_ZEROES;

#[tokio::test]
async fn writes_split_by_max_block_then_zeroes_and_flush() {
    let (client, mut fake) = connected(8 * MIB, TFLAGS_RW).await;
    let payload: Vec<u8> = (0..(2 * MIB + 10)).map(|i| (i % 251) as u8).collect();
    let server = async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = fake.request().await;
            assert_eq!(r.kind, CMD_WRITE);
            got.push((r.offset, r.payload));
            fake.simple(0, r.cookie).await;
        }
        got.sort();
        let joined: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
        let r = fake.request().await;
        assert_eq!((r.kind, r.offset, r.len), (CMD_WRITE_ZEROES, 4 * MIB, 4096));
        fake.chunk(true, REPLY_TYPE_NONE, r.cookie, &[]).await;
        let r = fake.request().await;
        assert_eq!(r.kind, CMD_FLUSH);
        fake.simple(0, r.cookie).await;
        let r = fake.request().await;
        assert_eq!(r.kind, CMD_DISC);
        drop(fake);
        joined
    };
    let client_side = async {
        client.write(MIB, &payload).await.expect("write");
        client
            .write_zeroes(4 * MIB, 4096)
            .await
            .expect("write zeroes");
        client.flush().await.expect("flush");
        assert!(matches!(
            client.write(8 * MIB, &[1]).await,
            Err(NbdError::OutOfRange { .. })
        ));
        client.disconnect().await
    };
    let (done, joined) = within(async { tokio::join!(client_side, server) }).await;
    done.expect("disconnect");
    assert_eq!(joined, payload);
}

#[tokio::test]
async fn send_cancelled_mid_write_fails_replies_being_assembled() {
    let (client, mut fake) = connected(8 * MIB, TFLAGS_RW).await;
    let server = async {
        let r = fake.request().await;
        let first = data(0, &[1; 4096]);
        fake.chunk(false, REPLY_TYPE_OFFSET_DATA, r.cookie, &first)
            .await;
        // Then stops reading: the write below fills the pipe and blocks mid-request.
    };
    let big = vec![0u8; 4 * MIB as usize];
    let write = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let limit = Duration::from_millis(200);
        let r = tokio::time::timeout(limit, client.write(0, &big)).await;
        assert!(r.is_err(), "the write must block on the full pipe");
    };
    let (got, (), ()) = within(async { tokio::join!(client.read(0, 8192), server, write) }).await;
    assert!(matches!(err(got).cause(), NbdError::Cancelled));
    let again = within(client.read(0, 512)).await;
    assert!(matches!(err(again).cause(), NbdError::Cancelled));
}

#[tokio::test]
async fn failed_piece_of_a_split_write_keeps_the_connection() {
    let (client, mut fake) = connected(8 * MIB, TFLAGS_RW).await;
    let server = async {
        // Three 1 MiB pieces; the first fails with ENOSPC, the others succeed.
        let mut answered = 0;
        for _ in 0..3 {
            let r = fake.request().await;
            assert_eq!(r.kind, CMD_WRITE);
            let errno = if r.offset == 0 { 28 } else { 0 };
            fake.simple(errno, r.cookie).await;
            answered += 1;
        }
        let r = fake.request().await;
        assert_eq!(r.kind, CMD_FLUSH);
        fake.simple(0, r.cookie).await;
        answered
    };
    let payload = vec![9u8; 3 * MIB as usize];
    let client_side = async {
        let e = client.write(0, &payload).await.expect_err("enospc");
        assert!(
            matches!(
                e,
                NbdError::Server {
                    errno: 28,
                    offset: 0,
                    ..
                }
            ),
            "{e}"
        );
        client.flush().await
    };
    let (flushed, answered) = within(async { tokio::join!(client_side, server) }).await;
    flushed.expect("the connection survives a failed piece");
    assert_eq!(answered, 3);
}

#[tokio::test]
async fn write_zeroes_falls_back_to_writing_zeros() {
    let (client, mut fake) = connected(8 * MIB, 1 | TFLAG_SEND_FLUSH).await;
    let server = async {
        let mut total = 0;
        while total < 3 * MIB {
            let r = fake.request().await;
            assert_eq!((r.kind, r.offset), (CMD_WRITE, MIB + total));
            assert!(r.payload.iter().all(|b| *b == 0));
            total += u64::from(r.len);
            fake.simple(0, r.cookie).await;
        }
    };
    let (done, ()) =
        within(async { tokio::join!(client.write_zeroes(MIB, 3 * MIB as u32), server) }).await;
    done.expect("write zeroes by writing");
}
