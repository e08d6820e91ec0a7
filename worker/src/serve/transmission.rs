//! The transmission phase: requests answered one at a time, in order (the protocol allows
//! it). A request the server can refuse gets an errno; one that desynchronises the stream
//! (bad magic, a write payload over the size limit) closes the connection.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnError;
use super::export::{Export, ExportError, Source, allocation_extents};
use super::negotiate::Session;
use super::wire::{self, Request};

/// Most extents in one block status reply (QEMU itself sends at most 131,072).
const MAX_EXTENTS: usize = 65_536;

/// Serves requests until the client disconnects.
pub(crate) async fn serve_requests<S>(
    s: &mut S,
    export: &Export,
    session: Session,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut hdr = [0u8; wire::REQUEST_LEN];
        match s.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let req = wire::parse_request(&hdr)
            .ok_or_else(|| ConnError::Protocol("request magic is wrong".into()))?;
        tracing::trace!(?req, "request");
        match req.kind {
            wire::CMD_READ => read(s, export, session, req).await?,
            wire::CMD_WRITE => write(s, export, session, req).await?,
            wire::CMD_DISC => {
                if let Err(e) = export.flush().await {
                    tracing::warn!(error = %e, "flush at disconnect failed");
                }
                return Ok(());
            }
            wire::CMD_FLUSH => {
                let r = export.flush().await;
                finish(s, session, req, r).await?;
            }
            wire::CMD_TRIM | wire::CMD_WRITE_ZEROES => {
                if export.read_only() {
                    finish(s, session, req, Err(ExportError::ReadOnly)).await?;
                } else if !wire::in_range(req.offset, u64::from(req.len), export.size()) {
                    error(s, session, req, wire::EINVAL, "past the end of the disk").await?;
                } else {
                    let r = zero(export, req).await;
                    finish(s, session, req, r).await?;
                }
            }
            wire::CMD_BLOCK_STATUS => block_status(s, export, session, req).await?,
            _ => error(s, session, req, wire::EINVAL, "unknown command").await?,
        }
        s.flush().await?;
    }
}

async fn zero(export: &Export, req: Request) -> Result<(), ExportError> {
    export.zero(req.offset, u64::from(req.len)).await?;
    if req.flags & wire::CMD_FLAG_FUA != 0 {
        export.flush().await?;
    }
    Ok(())
}

/// Replies with an errno: an error chunk for READ and BLOCK_STATUS when structured replies
/// are on, else a simple reply.
async fn error<S: AsyncWrite + Unpin>(
    s: &mut S,
    session: Session,
    req: Request,
    errno: u32,
    msg: &str,
) -> Result<(), ConnError> {
    tracing::debug!(
        kind = req.kind,
        offset = req.offset,
        len = req.len,
        errno,
        msg,
        "request refused"
    );
    if session.structured && matches!(req.kind, wire::CMD_READ | wire::CMD_BLOCK_STATUS) {
        s.write_all(&wire::error_chunk(req.cookie, errno, msg))
            .await?;
    } else {
        s.write_all(&wire::simple_reply(req.cookie, errno)).await?;
    }
    Ok(())
}

/// Replies to a command without data.
async fn finish<S: AsyncWrite + Unpin>(
    s: &mut S,
    session: Session,
    req: Request,
    result: Result<(), ExportError>,
) -> Result<(), ConnError> {
    match result {
        Ok(()) => {
            s.write_all(&wire::simple_reply(req.cookie, 0)).await?;
            Ok(())
        }
        Err(e) => {
            if !matches!(e, ExportError::ReadOnly) {
                tracing::warn!(error = %e, offset = req.offset, len = req.len, "request failed");
            }
            error(s, session, req, e.errno(), &e.to_string()).await
        }
    }
}

async fn read<S: AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    session: Session,
    req: Request,
) -> Result<(), ConnError> {
    let len = u64::from(req.len);
    if req.len == 0 {
        return error(s, session, req, wire::EINVAL, "read of 0 bytes").await;
    }
    if req.len > wire::MAX_BLOCK {
        return error(s, session, req, wire::EOVERFLOW, "read over 32 MiB").await;
    }
    if !wire::in_range(req.offset, len, export.size()) {
        return error(
            s,
            session,
            req,
            wire::EINVAL,
            "read past the end of the disk",
        )
        .await;
    }
    let runs = export.runs(req.offset, len, usize::MAX);
    if !session.structured {
        let mut buf = BytesMut::zeroed(req.len as usize);
        let mut pos = req.offset;
        for run in runs {
            match export.read_run(pos, run).await {
                Ok(Some(data)) => {
                    let at = (pos - req.offset) as usize;
                    buf[at..at + data.len()].copy_from_slice(&data);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, offset = pos, "read failed");
                    return error(s, session, req, e.errno(), &e.to_string()).await;
                }
            }
            pos += run.len;
        }
        s.write_all(&wire::simple_reply(req.cookie, 0)).await?;
        s.write_all(&buf).await?;
        return Ok(());
    }
    let n = runs.len();
    let mut pos = req.offset;
    for (i, run) in runs.into_iter().enumerate() {
        let done = i + 1 == n;
        // Runs of a read are at most MAX_BLOCK bytes.
        let run_len = run.len as u32;
        if run.source == Source::Zero {
            s.write_all(&wire::hole_chunk(req.cookie, done, pos, run_len))
                .await?;
        } else {
            match export.read_run(pos, run).await {
                Ok(Some(data)) => {
                    let flags = if done { wire::REPLY_FLAG_DONE } else { 0 };
                    s.write_all(&wire::chunk_header(
                        req.cookie,
                        flags,
                        wire::REPLY_TYPE_OFFSET_DATA,
                        8 + run_len,
                    ))
                    .await?;
                    s.write_all(&pos.to_be_bytes()).await?;
                    s.write_all(&data).await?;
                }
                Ok(None) => {
                    s.write_all(&wire::hole_chunk(req.cookie, done, pos, run_len))
                        .await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, offset = pos, "read failed");
                    return error(s, session, req, e.errno(), &e.to_string()).await;
                }
            }
        }
        pos += run.len;
    }
    Ok(())
}

async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    session: Session,
    req: Request,
) -> Result<(), ConnError> {
    if req.len > wire::MAX_BLOCK {
        return Err(ConnError::Protocol(format!(
            "write of {} bytes is over the {} byte limit",
            req.len,
            wire::MAX_BLOCK
        )));
    }
    let len = u64::from(req.len);
    if export.read_only() || !wire::in_range(req.offset, len, export.size()) {
        // Drain the payload without storing it, then refuse.
        let skipped = tokio::io::copy(&mut (&mut *s).take(len), &mut tokio::io::sink()).await?;
        if skipped < len {
            return Err(ConnError::Protocol("truncated write payload".into()));
        }
        if export.read_only() {
            return finish(s, session, req, Err(ExportError::ReadOnly)).await;
        }
        return error(
            s,
            session,
            req,
            wire::EINVAL,
            "write past the end of the disk",
        )
        .await;
    }
    let mut data = vec![0u8; req.len as usize];
    s.read_exact(&mut data).await?;
    let mut r = export.write(req.offset, &data).await;
    if r.is_ok() && req.flags & wire::CMD_FLAG_FUA != 0 {
        r = export.flush().await;
    }
    finish(s, session, req, r).await
}

async fn block_status<S: AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    session: Session,
    req: Request,
) -> Result<(), ConnError> {
    if !session.structured || !session.base_allocation {
        return error(s, session, req, wire::EINVAL, "no meta context negotiated").await;
    }
    if req.len == 0 || req.offset >= export.size() {
        return error(s, session, req, wire::EINVAL, "block status out of bounds").await;
    }
    let len = u64::from(req.len).min(export.size() - req.offset);
    let max = if req.flags & wire::CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_EXTENTS
    };
    let runs = export.runs(req.offset, len, MAX_EXTENTS);
    let extents = allocation_extents(&runs, max);
    s.write_all(&wire::block_status_chunk(
        req.cookie,
        wire::BASE_ALLOCATION_ID,
        &extents,
    ))
    .await?;
    Ok(())
}
