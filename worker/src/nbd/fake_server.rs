//! A scripted NBD server for tests: the test drives it step by step, well-behaved or
//! hostile, on the other end of an in-memory pipe.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

use super::proto::*;
use super::{NbdClient, NbdError};

pub const MIB: u64 = 1 << 20;

/// Fails the test instead of hanging.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("the client hung")
}

#[derive(Debug)]
pub struct Req {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
    pub payload: Vec<u8>,
}

pub struct Fake {
    pub s: DuplexStream,
}

impl Fake {
    pub async fn greet(&mut self) {
        self.s.write_u64(NBDMAGIC).await.expect("write");
        self.s.write_u64(IHAVEOPT).await.expect("write");
        self.s
            .write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)
            .await
            .expect("write");
        let client = self.s.read_u32().await.expect("client flags");
        assert_eq!(client, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    }

    pub async fn option(&mut self) -> (u32, Vec<u8>) {
        assert_eq!(self.s.read_u64().await.expect("option magic"), IHAVEOPT);
        let opt = self.s.read_u32().await.expect("option");
        let len = self.s.read_u32().await.expect("option length");
        let mut data = vec![0; len as usize];
        self.s.read_exact(&mut data).await.expect("option data");
        (opt, data)
    }

    pub async fn reply(&mut self, opt: u32, kind: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).await.expect("write");
    }

    /// A QEMU-like negotiation that accepts only the contexts in `accept` (dropping other
    /// names silently) and serves an export of `size` bytes with `tflags`.
    pub async fn handshake(&mut self, size: u64, tflags: u16, accept: &[(&str, u32)]) {
        self.greet().await;
        loop {
            let (opt, data) = self.option().await;
            match opt {
                OPT_STRUCTURED_REPLY => self.reply(opt, REP_ACK, &[]).await,
                OPT_SET_META_CONTEXT => {
                    for query in parse_meta_queries(&data) {
                        if let Some((name, id)) = accept.iter().find(|(n, _)| *n == query) {
                            let mut d = id.to_be_bytes().to_vec();
                            d.extend_from_slice(name.as_bytes());
                            self.reply(opt, REP_META_CONTEXT, &d).await;
                        }
                    }
                    self.reply(opt, REP_ACK, &[]).await;
                }
                OPT_GO => {
                    assert!(data.ends_with(&[0, 1, 0, 3]), "go must ask for block sizes");
                    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&size.to_be_bytes());
                    d.extend_from_slice(&tflags.to_be_bytes());
                    self.reply(opt, REP_INFO, &d).await;
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1u32, 4096, MIB as u32] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    self.reply(opt, REP_INFO, &d).await;
                    self.reply(opt, REP_ACK, &[]).await;
                    return;
                }
                OPT_ABORT => return,
                other => panic!("unexpected option {other}"),
            }
        }
    }

    pub async fn request(&mut self) -> Req {
        assert_eq!(
            self.s.read_u32().await.expect("request magic"),
            REQUEST_MAGIC
        );
        let flags = self.s.read_u16().await.expect("flags");
        let kind = self.s.read_u16().await.expect("type");
        let cookie = self.s.read_u64().await.expect("cookie");
        let offset = self.s.read_u64().await.expect("offset");
        let len = self.s.read_u32().await.expect("length");
        let mut payload = Vec::new();
        if kind == CMD_WRITE {
            payload.resize(len as usize, 0);
            self.s.read_exact(&mut payload).await.expect("payload");
        }
        Req {
            flags,
            kind,
            cookie,
            offset,
            len,
            payload,
        }
    }

    pub async fn chunk(&mut self, done: bool, kind: u16, cookie: u64, payload: &[u8]) {
        self.chunk_header(done, kind, cookie, payload.len() as u32)
            .await;
        self.s.write_all(payload).await.expect("write");
    }

    pub async fn chunk_header(&mut self, done: bool, kind: u16, cookie: u64, len: u32) {
        let mut b = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&u16::from(done).to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        self.s.write_all(&b).await.expect("write");
    }

    pub async fn simple(&mut self, errno: u32, cookie: u64) {
        let mut b = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&errno.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        self.s.write_all(&b).await.expect("write");
    }
}

pub fn parse_meta_queries(d: &[u8]) -> Vec<String> {
    let u32_at = |i: usize| u32::from_be_bytes(d[i..i + 4].try_into().expect("4 bytes")) as usize;
    let mut i = 4 + u32_at(0);
    let count = u32_at(i);
    i += 4;
    let mut out = Vec::new();
    for _ in 0..count {
        let n = u32_at(i);
        out.push(String::from_utf8_lossy(&d[i + 4..i + 4 + n]).into_owned());
        i += 4 + n;
    }
    out
}

pub fn data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

pub fn hole(offset: u64, size: u32) -> Vec<u8> {
    let mut v = offset.to_be_bytes().to_vec();
    v.extend_from_slice(&size.to_be_bytes());
    v
}

pub fn status(id: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    for (l, f) in extents {
        v.extend_from_slice(&l.to_be_bytes());
        v.extend_from_slice(&f.to_be_bytes());
    }
    v
}

/// A client connected to a fake server that accepted `base:allocation` as id 5.
pub async fn connected(size: u64, tflags: u16) -> (NbdClient, Fake) {
    let (c, s) = duplex(64 << 10);
    let mut fake = Fake { s };
    let (client, ()) = within(async {
        tokio::join!(
            NbdClient::connect_stream(c, "disk", &["base:allocation"]),
            fake.handshake(size, tflags, &[("base:allocation", 5)])
        )
    })
    .await;
    (client.expect("handshake"), fake)
}

/// The error of a failed request (match on `.cause()` to see through ConnectionLost).
pub fn err<T: std::fmt::Debug>(r: Result<T, NbdError>) -> NbdError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}
