//! The reader task: owns the read half of the socket, parses every reply, checks it against
//! the request it answers and hands the result to that request's oneshot channel. Any
//! protocol violation ends the task and fails every pending request.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::assembly::{ReadAssembly, StatusAssembly};
use super::conn::{Pending, Reply, Shared};
use super::error::{Command, NbdError};
use super::proto::{self, read_u16, read_u32, read_u64};

/// What the reader needs to know of the connection.
pub(crate) struct ReaderInfo {
    pub structured: bool,
    pub export_size: u64,
    pub context_ids: Vec<u32>,
}

/// A request whose reply has started arriving.
struct InFlight {
    pending: Pending,
    assembly: Assembly,
    /// The first error chunk, which decides the outcome once the reply is done.
    error: Option<NbdError>,
}

enum Assembly {
    Plain,
    Read(ReadAssembly),
    Status(StatusAssembly),
}

impl InFlight {
    fn new(pending: Pending, info: &ReaderInfo) -> Self {
        let assembly = match (pending.command, pending.context) {
            (Command::Read, _) => Assembly::Read(ReadAssembly::new(pending.offset, pending.len)),
            (Command::BlockStatus, Some(wanted)) => Assembly::Status(StatusAssembly::new(
                pending.offset,
                pending.len,
                info.export_size,
                wanted,
                info.context_ids.clone(),
            )),
            _ => Assembly::Plain,
        };
        InFlight {
            pending,
            assembly,
            error: None,
        }
    }

    fn server_error(&self, errno: u32, message: String) -> NbdError {
        NbdError::Server {
            command: self.pending.command,
            offset: self.pending.offset,
            length: self.pending.len,
            errno,
            message,
        }
    }

    fn finish(self) {
        let result = match (self.error, self.assembly) {
            (Some(e), _) => Err(e),
            (None, Assembly::Plain) => Ok(Reply::Done),
            (None, Assembly::Read(a)) => a.finish().map(Reply::Data),
            (None, Assembly::Status(a)) => a.finish().map(Reply::Extents),
        };
        // The requester may have been dropped; the reply is then simply discarded.
        let _ = self.pending.tx.send(result);
    }
}

/// Runs until the connection ends or the server breaks the protocol.
pub(crate) async fn run<R: AsyncRead + Unpin>(mut r: R, shared: Arc<Shared>, info: ReaderInfo) {
    let mut active: HashMap<u64, InFlight> = HashMap::new();
    let read_loop = async {
        loop {
            if let Err(e) = step(&mut r, &shared, &info, &mut active).await {
                break e;
            }
        }
    };
    let cause = tokio::select! {
        err = read_loop => {
            match &err {
                NbdError::Closed => tracing::debug!("nbd server closed the connection"),
                e => tracing::warn!(error = %e, "nbd connection failed"),
            }
            Arc::new(err)
        }
        // A requester failed the connection (a write error, a cancelled send).
        () = shared.wait_failed() => shared.closed().unwrap_or_else(|| Arc::new(NbdError::Closed)),
    };
    for (_, f) in active.drain() {
        f.pending.fail(&cause);
    }
    shared.fail_all(cause);
}

/// Reads and handles one reply message.
async fn step<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Shared,
    info: &ReaderInfo,
    active: &mut HashMap<u64, InFlight>,
) -> Result<(), NbdError> {
    let mut magic = [0u8; 4];
    let n = r.read(&mut magic).await?;
    if n == 0 {
        return Err(NbdError::Closed);
    }
    proto::read_exact(r, &mut magic[n..], "a reply header").await?;
    match u32::from_be_bytes(magic) {
        proto::SIMPLE_REPLY_MAGIC => simple_reply(r, shared, info, active).await,
        proto::STRUCTURED_REPLY_MAGIC if info.structured => chunk(r, shared, info, active).await,
        other => Err(NbdError::BadMagic {
            what: "reply",
            got: u64::from(other),
        }),
    }
}

/// The in-flight entry for `cookie`, taking it from the pending map on its first message.
fn lookup<'a>(
    cookie: u64,
    shared: &Shared,
    info: &ReaderInfo,
    active: &'a mut HashMap<u64, InFlight>,
) -> Result<&'a mut InFlight, NbdError> {
    match active.entry(cookie) {
        Entry::Occupied(o) => Ok(o.into_mut()),
        Entry::Vacant(v) => {
            let pending = shared.take(cookie).ok_or(NbdError::UnknownCookie(cookie))?;
            Ok(v.insert(InFlight::new(pending, info)))
        }
    }
}

fn complete(cookie: u64, active: &mut HashMap<u64, InFlight>) {
    if let Some(f) = active.remove(&cookie) {
        f.finish();
    }
}

async fn simple_reply<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Shared,
    info: &ReaderInfo,
    active: &mut HashMap<u64, InFlight>,
) -> Result<(), NbdError> {
    let errno = read_u32(r, "a simple reply").await?;
    let cookie = read_u64(r, "a simple reply").await?;
    let started = active.contains_key(&cookie);
    let f = lookup(cookie, shared, info, active)?;
    let command = f.pending.command;
    if started {
        // Chunks of a structured reply already came for this request.
        return Err(NbdError::UnexpectedSimpleReply(command));
    }
    if errno != 0 {
        f.error = Some(f.server_error(errno, String::new()));
    } else if command == Command::Read && !info.structured {
        let mut buf = BytesMut::zeroed(f.pending.len as usize);
        proto::read_exact(r, &mut buf, "read data").await?;
        let Some(f) = active.remove(&cookie) else {
            return Ok(());
        };
        let _ = f.pending.tx.send(Ok(Reply::Data(buf.freeze())));
        return Ok(());
    } else if matches!(command, Command::Read | Command::BlockStatus) {
        return Err(NbdError::UnexpectedSimpleReply(command));
    }
    complete(cookie, active);
    Ok(())
}

async fn chunk<R: AsyncRead + Unpin>(
    r: &mut R,
    shared: &Shared,
    info: &ReaderInfo,
    active: &mut HashMap<u64, InFlight>,
) -> Result<(), NbdError> {
    const WHAT: &str = "a reply chunk";
    let flags = read_u16(r, WHAT).await?;
    let chunk_type = read_u16(r, WHAT).await?;
    let cookie = read_u64(r, WHAT).await?;
    let len = read_u32(r, WHAT).await?;
    let f = lookup(cookie, shared, info, active)?;
    let command = f.pending.command;
    let bad_len = || NbdError::BadChunkLength {
        chunk_type,
        command,
        len,
    };

    match (chunk_type, &mut f.assembly) {
        (proto::REPLY_TYPE_NONE, _) => {
            if len != 0 || flags & proto::REPLY_FLAG_DONE == 0 {
                return Err(bad_len());
            }
        }
        (t, _) if t & proto::REPLY_TYPE_ERROR_BIT != 0 => {
            // Known error types carry at most a message and an offset; unknown ones are
            // errors too (the spec says so), with a looser cap.
            let max = if matches!(t, proto::REPLY_TYPE_ERROR | proto::REPLY_TYPE_ERROR_OFFSET) {
                proto::MAX_ERROR_CHUNK
            } else {
                proto::MAX_OPTION_REPLY
            };
            if len < 6 || len > max {
                return Err(bad_len());
            }
            let errno = read_u32(r, WHAT).await?;
            let msg_len = u32::from(read_u16(r, WHAT).await?);
            if msg_len > len - 6 {
                return Err(bad_len());
            }
            let message = proto::message(&proto::read_vec(r, msg_len, WHAT).await?);
            proto::skip(r, u64::from(len - 6 - msg_len), WHAT).await?;
            if f.error.is_none() {
                f.error = Some(f.server_error(errno, message));
            }
        }
        (proto::REPLY_TYPE_OFFSET_DATA, Assembly::Read(a)) => {
            let max = 8 + u64::from(f.pending.len);
            if u64::from(len) > max {
                return Err(NbdError::ChunkTooLarge { command, len, max });
            }
            if len < 9 {
                return Err(bad_len());
            }
            let offset = read_u64(r, WHAT).await?;
            let range = a.claim(offset, u64::from(len - 8))?;
            proto::read_exact(r, &mut a.buf_mut()[range], "read data").await?;
        }
        (proto::REPLY_TYPE_OFFSET_HOLE, Assembly::Read(a)) => {
            if len != 12 {
                return Err(bad_len());
            }
            let offset = read_u64(r, WHAT).await?;
            let size = read_u32(r, WHAT).await?;
            a.claim(offset, u64::from(size))?;
        }
        (proto::REPLY_TYPE_BLOCK_STATUS, Assembly::Status(a)) => {
            let max = 4 + 8 * u64::from(proto::MAX_EXTENTS_PER_CHUNK);
            if u64::from(len) > max {
                return Err(NbdError::ChunkTooLarge { command, len, max });
            }
            if len < 12 || (len - 4) % 8 != 0 {
                return Err(bad_len());
            }
            let id = read_u32(r, WHAT).await?;
            let mut cursor = a.begin(id)?;
            for _ in 0..(len - 4) / 8 {
                let length = read_u32(r, WHAT).await?;
                let status = read_u32(r, WHAT).await?;
                a.push(&mut cursor, length, status)?;
            }
        }
        _ => {
            return Err(NbdError::UnexpectedChunk {
                chunk_type,
                command,
            });
        }
    }

    if flags & proto::REPLY_FLAG_DONE != 0 {
        complete(cookie, active);
    }
    Ok(())
}
