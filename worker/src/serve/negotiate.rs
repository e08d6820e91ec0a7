//! The handshake, server side: fixed newstyle greeting, then options until the client
//! picks the export (EXPORT_NAME or GO), aborts, or breaks the protocol.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ConnError;
use super::export::Export;
use super::wire::{self, Cursor};
use crate::nbd::CONTEXT_BASE_ALLOCATION;

/// What the client negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    pub structured: bool,
    pub base_allocation: bool,
}

pub(crate) enum Outcome {
    Transmission(Session),
    /// The client sent NBD_OPT_ABORT.
    Aborted,
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> Result<(), ConnError> {
    s.write_all(&wire::option_reply(option, kind, data)).await?;
    Ok(())
}

/// An error reply carrying a message for the client's log.
async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    kind: u32,
    msg: &str,
) -> Result<(), ConnError> {
    tracing::debug!(option, msg, "option refused");
    reply(s, option, kind, msg.as_bytes()).await
}

/// Runs the handshake. Errors close the connection.
pub(crate) async fn negotiate<S>(s: &mut S, export: &Export) -> Result<Outcome, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_u64(wire::NBDMAGIC).await?;
    s.write_u64(wire::IHAVEOPT).await?;
    s.write_u16(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES)
        .await?;
    s.flush().await?;
    let client_flags = s.read_u32().await?;
    if client_flags & !(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES) != 0 {
        return Err(ConnError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & wire::FLAG_C_NO_ZEROES != 0;
    let mut session = Session::default();
    loop {
        let magic = s.read_u64().await?;
        if magic != wire::IHAVEOPT {
            return Err(ConnError::Protocol(format!(
                "option magic {magic:#x} is not IHAVEOPT"
            )));
        }
        let option = s.read_u32().await?;
        let len = s.read_u32().await?;
        if len > wire::MAX_OPTION {
            if len > wire::MAX_OPTION_SKIP || option == wire::OPT_EXPORT_NAME {
                return Err(ConnError::Protocol(format!(
                    "option {option} of {len} bytes"
                )));
            }
            let skipped =
                tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink())
                    .await?;
            if skipped < u64::from(len) {
                return Err(ConnError::Protocol("truncated option".into()));
            }
            refuse(s, option, wire::REP_ERR_TOO_BIG, "option too long").await?;
            s.flush().await?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await?;
        match option {
            wire::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data);
                if !export.answers_to(&name) {
                    return Err(ConnError::Protocol(format!("unknown export {name:?}")));
                }
                s.write_u64(export.size()).await?;
                s.write_u16(export.transmission_flags()).await?;
                if !no_zeroes {
                    s.write_all(&[0u8; 124]).await?;
                }
                s.flush().await?;
                return Ok(Outcome::Transmission(session));
            }
            wire::OPT_INFO | wire::OPT_GO => {
                if info_or_go(s, export, option, &data).await? && option == wire::OPT_GO {
                    s.flush().await?;
                    return Ok(Outcome::Transmission(session));
                }
            }
            wire::OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    session.structured = true;
                    reply(s, option, wire::REP_ACK, &[]).await?;
                } else {
                    refuse(s, option, wire::REP_ERR_INVALID, "unexpected data").await?;
                }
            }
            wire::OPT_LIST => {
                if data.is_empty() {
                    let mut b = Vec::new();
                    wire::put_str(&mut b, export.name());
                    reply(s, option, wire::REP_SERVER, &b).await?;
                    reply(s, option, wire::REP_ACK, &[]).await?;
                } else {
                    refuse(s, option, wire::REP_ERR_INVALID, "unexpected data").await?;
                }
            }
            wire::OPT_SET_META_CONTEXT | wire::OPT_LIST_META_CONTEXT => {
                if let Some(found) = meta_context(s, export, option, &data, &session).await? {
                    session.base_allocation = found;
                }
            }
            wire::OPT_ABORT => {
                // The client may already be gone; the ACK is a courtesy.
                let _ = reply(s, option, wire::REP_ACK, &[]).await;
                let _ = s.flush().await;
                return Ok(Outcome::Aborted);
            }
            _ => refuse(s, option, wire::REP_ERR_UNSUP, "option not supported").await?,
        }
        s.flush().await?;
    }
}

/// NBD_OPT_INFO / NBD_OPT_GO; true when the export was described (GO then transmits).
async fn info_or_go<S: AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    option: u32,
    data: &[u8],
) -> Result<bool, ConnError> {
    let mut c = Cursor::new(data);
    let parsed = (|| {
        let name = c.string()?;
        let n = c.u16()?;
        for _ in 0..n {
            c.u16()?;
        }
        c.is_empty().then_some(name)
    })();
    let Some(name) = parsed else {
        refuse(s, option, wire::REP_ERR_INVALID, "malformed request").await?;
        return Ok(false);
    };
    if !export.answers_to(&name) {
        refuse(s, option, wire::REP_ERR_UNKNOWN, "no such export").await?;
        return Ok(false);
    }
    let info = wire::info_export(export.size(), export.transmission_flags());
    reply(s, option, wire::REP_INFO, &info).await?;
    reply(s, option, wire::REP_INFO, &wire::info_block_size()).await?;
    reply(s, option, wire::REP_ACK, &[]).await?;
    Ok(true)
}

/// NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT. For SET, returns whether
/// `base:allocation` is now selected; `None` when the request was refused or was LIST.
async fn meta_context<S: AsyncWrite + Unpin>(
    s: &mut S,
    export: &Export,
    option: u32,
    data: &[u8],
    session: &Session,
) -> Result<Option<bool>, ConnError> {
    let set = option == wire::OPT_SET_META_CONTEXT;
    if set && !session.structured {
        refuse(
            s,
            option,
            wire::REP_ERR_INVALID,
            "negotiate structured replies first",
        )
        .await?;
        return Ok(None);
    }
    let mut c = Cursor::new(data);
    let parsed = (|| {
        let name = c.string()?;
        let count = c.u32()?;
        let mut queries = Vec::new();
        for _ in 0..count {
            // Each query takes at least 4 bytes, so `count` cannot outrun the data.
            queries.push(c.string()?);
        }
        c.is_empty().then_some((name, queries))
    })();
    let Some((name, queries)) = parsed else {
        refuse(s, option, wire::REP_ERR_INVALID, "malformed request").await?;
        return Ok(None);
    };
    if !export.answers_to(&name) {
        refuse(s, option, wire::REP_ERR_UNKNOWN, "no such export").await?;
        return Ok(None);
    }
    let matches = |q: &str| q == CONTEXT_BASE_ALLOCATION || (!set && (q == "base:" || q == "base"));
    let found = if set {
        queries.iter().any(|q| matches(q))
    } else {
        queries.is_empty() || queries.iter().any(|q| matches(q))
    };
    if found {
        let id = if set { wire::BASE_ALLOCATION_ID } else { 0 };
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(CONTEXT_BASE_ALLOCATION.as_bytes());
        reply(s, option, wire::REP_META_CONTEXT, &b).await?;
    }
    reply(s, option, wire::REP_ACK, &[]).await?;
    Ok(set.then_some(found))
}
