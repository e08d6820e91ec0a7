//! The commands: reads, block status, writes, zeroing and flushes, each checked against
//! the export before anything is sent and split to the server's block size limit.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;

use super::BlockStatusExtent;
use super::client::{NbdClient, unexpected_reply};
use super::conn::Reply;
use super::error::{Command, NbdError};
use super::proto;

/// Largest block status request: below 4 GiB and 1 MiB-aligned, so an offset that
/// starts aligned stays aligned to any bitmap granularity up to 1 MiB.
const MAX_STATUS_LEN: u32 = !((1 << 20) - 1);
/// Largest buffer of zeros written when the server cannot write zeroes itself.
const ZERO_BUF: u32 = 1 << 20;
/// Pieces of one split read or write in flight at once.
const MAX_PARALLEL: usize = 8;

/// Runs `[offset, offset+len)` as pieces of at most `max` bytes, at most
/// [`MAX_PARALLEL`] in flight, handing each result to `each` in order. Every piece started
/// runs to completion even if another fails (dropping one halfway through sending it would
/// break the connection for everyone); none starts after a failure. Returns the first error.
async fn run_pieces<T, F>(
    offset: u64,
    len: u64,
    max: u32,
    make: impl Fn(u64, u32) -> F,
    mut each: impl FnMut(T),
) -> Result<(), NbdError>
where
    F: Future<Output = Result<T, NbdError>>,
{
    let max = u64::from(max.max(1));
    let end = offset + len;
    let mut inflight = FuturesOrdered::new();
    let mut first_err: Option<NbdError> = None;
    let mut pos = offset;
    loop {
        let done = if inflight.len() >= MAX_PARALLEL || pos >= end || first_err.is_some() {
            match inflight.next().await {
                Some(r) => Some(r),
                None => break,
            }
        } else {
            None
        };
        match done {
            Some(Ok(v)) if first_err.is_none() => each(v),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {
                let piece = (end - pos).min(max);
                // At most `max`, a u32.
                inflight.push_back(make(pos, piece as u32));
                pos += piece;
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

impl NbdClient {
    /// Checks `[offset, offset+len)` lies inside the export.
    fn check_range(&self, command: Command, offset: u64, len: u64) -> Result<(), NbdError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(NbdError::OutOfRange {
                command,
                offset,
                length: len,
                size: self.size(),
            }),
        }
    }

    /// Reads `[offset, offset+len)`. The reply must cover exactly the request; holes read
    /// as zeros.
    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, NbdError> {
        self.check_range(Command::Read, offset, u64::from(len))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if len <= self.max_block() {
            return self.read_one(offset, len).await;
        }
        let mut out = BytesMut::with_capacity(len as usize);
        let read_one = |o, l| self.read_one(o, l);
        let append = |piece: Bytes| out.extend_from_slice(&piece);
        run_pieces(offset, u64::from(len), self.max_block(), read_one, append).await?;
        Ok(out.freeze())
    }

    async fn read_one(&self, offset: u64, len: u32) -> Result<Bytes, NbdError> {
        match self.request(Command::Read, offset, len, None, &[]).await? {
            Reply::Data(b) if b.len() == len as usize => Ok(b),
            other => Err(unexpected_reply(Command::Read, &other)),
        }
    }

    /// Block status for one negotiated `context` over `[offset, offset+len)`, clamped to
    /// the end of the export. Returns extents that exactly tile the range, adjacent ones
    /// with equal flags merged.
    pub async fn block_status(
        &self,
        context: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<BlockStatusExtent>, NbdError> {
        let id = self
            .context_id(context)
            .ok_or_else(|| NbdError::UnknownContext(context.to_owned()))?;
        self.check_range(Command::BlockStatus, offset, 0)?;
        let end = offset + len.min(self.size() - offset);
        let mut out: Vec<BlockStatusExtent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let req = (end - pos).min(u64::from(MAX_STATUS_LEN)) as u32;
            let extents = match self
                .request(Command::BlockStatus, pos, req, Some(id), &[])
                .await?
            {
                Reply::Extents(e) => e,
                other => return Err(unexpected_reply(Command::BlockStatus, &other)),
            };
            let before = pos;
            // The reader checked: at least one extent, none empty, none past the export.
            for (length, flags) in extents {
                let length = u64::from(length).min(end - pos);
                push_extent(&mut out, pos, length, flags);
                pos += length;
                if pos >= end {
                    break;
                }
            }
            if pos == before {
                // Cannot happen after the reader's checks; refuse to spin if it ever does.
                return Err(NbdError::ZeroLengthExtent { offset: pos });
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset`, split by the maximum block size.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.check_writable(Command::Write, offset, data.len() as u64)?;
        let write_one = |o: u64, l: u32| {
            // Inside `data`: the pieces tile [offset, offset + data.len()).
            let start = (o - offset) as usize;
            let piece = &data[start..start + l as usize];
            self.request_done(Command::Write, o, l, piece)
        };
        let len = data.len() as u64;
        run_pieces(offset, len, self.max_block(), write_one, |()| {}).await
    }

    /// Zeroes `[offset, offset+len)`: NBD_CMD_WRITE_ZEROES if the server offers it (it may
    /// then leave a hole), else plain writes of zeros.
    pub async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.check_writable(Command::WriteZeroes, offset, u64::from(len))?;
        let len64 = u64::from(len);
        if self.flag(proto::TFLAG_SEND_WRITE_ZEROES) {
            let zero_one = |o, l| self.request_done(Command::WriteZeroes, o, l, &[]);
            run_pieces(offset, len64, self.max_block(), zero_one, |()| {}).await
        } else {
            let piece = self.max_block().min(ZERO_BUF);
            let zeros = vec![0u8; piece.min(len) as usize];
            let write_one =
                |o, l: u32| self.request_done(Command::Write, o, l, &zeros[..l as usize]);
            run_pieces(offset, len64, piece, write_one, |()| {}).await
        }
    }

    /// Asks the server to make completed writes durable; a no-op if it offers no flush.
    pub async fn flush(&self) -> Result<(), NbdError> {
        if !self.flag(proto::TFLAG_SEND_FLUSH) {
            return Ok(());
        }
        self.request_done(Command::Flush, 0, 0, &[]).await
    }

    fn check_writable(&self, command: Command, offset: u64, len: u64) -> Result<(), NbdError> {
        if self.read_only() {
            return Err(NbdError::ReadOnly);
        }
        self.check_range(command, offset, len)
    }
}

/// Appends an extent, merging it into the previous one if the flags match.
fn push_extent(out: &mut Vec<BlockStatusExtent>, offset: u64, length: u64, flags: u32) {
    if let Some(last) = out.last_mut()
        && last.flags == flags
        && last.offset + last.length == offset
    {
        last.length += length;
        return;
    }
    out.push(BlockStatusExtent {
        offset,
        length,
        flags,
    });
}
