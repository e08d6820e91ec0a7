//! NBD wire constants, request encoding and the checked reads every parser uses.
//! All integers are big-endian (doc/proto.md of github.com/NetworkBlockDevice/nbd).

use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::NbdError;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_BIT: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Structured reply chunks.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_ERROR_BIT | 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_ERROR_BIT | 2;

/// Block size limit when the server sends no INFO_BLOCK_SIZE (the spec's default).
pub const DEFAULT_MAX_BLOCK: u32 = 32 << 20;
/// Strings (export names, contexts, messages) may not exceed this (the spec's limit).
pub const MAX_STRING: usize = 4096;
/// Largest option reply the client accepts.
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Most replies the client accepts to one option.
pub const MAX_OPTION_REPLIES: usize = 1024;
/// Largest error chunk payload the client accepts (errno, length, message, offset).
pub const MAX_ERROR_CHUNK: u32 = 6 + MAX_STRING as u32 + 8;
/// Most extents the client accepts in one block status chunk (QEMU sends ≤ 131,072).
pub const MAX_EXTENTS_PER_CHUNK: u32 = 1 << 21;

pub const REQUEST_LEN: usize = 28;

/// Encodes a 28-byte request header.
pub fn encode_request(flags: u16, cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// Encodes an option request: IHAVEOPT, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> Result<Vec<u8>, NbdError> {
    let len = u32::try_from(data.len()).map_err(|_| NbdError::NameTooLong {
        what: "option data",
        len: data.len(),
        max: u32::MAX as usize,
    })?;
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    Ok(b)
}

/// Appends a u32 length and the string, refusing strings over the spec's limit.
pub fn put_string(b: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), NbdError> {
    if s.len() > MAX_STRING {
        return Err(NbdError::NameTooLong {
            what,
            len: s.len(),
            max: MAX_STRING,
        });
    }
    // Fits: at most MAX_STRING.
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Fills `buf`, naming `what` if the server closes the connection first.
pub async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), NbdError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(NbdError::Truncated(what)),
        Err(e) => Err(NbdError::Io(e)),
    }
}

pub async fn read_u16<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<u16, NbdError> {
    let mut b = [0u8; 2];
    read_exact(r, &mut b, what).await?;
    Ok(u16::from_be_bytes(b))
}

pub async fn read_u32<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<u32, NbdError> {
    let mut b = [0u8; 4];
    read_exact(r, &mut b, what).await?;
    Ok(u32::from_be_bytes(b))
}

pub async fn read_u64<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<u64, NbdError> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, what).await?;
    Ok(u64::from_be_bytes(b))
}

/// Reads `len` bytes the caller has already bounded.
pub async fn read_vec<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u32,
    what: &'static str,
) -> Result<Vec<u8>, NbdError> {
    let mut v = vec![0u8; len as usize];
    read_exact(r, &mut v, what).await?;
    Ok(v)
}

/// Reads and drops `len` bytes without allocating them.
pub async fn skip<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    what: &'static str,
) -> Result<(), NbdError> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(NbdError::Truncated(what));
    }
    Ok(())
}

/// Name of an NBD errno value (the protocol's own numbering).
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// Name of an option reply type.
pub fn rep_name(reply: u32) -> &'static str {
    match reply {
        REP_ACK => "ack",
        REP_INFO => "info",
        REP_META_CONTEXT => "meta context",
        REP_ERR_UNSUP => "unsupported",
        0x8000_0002 => "policy",
        0x8000_0003 => "invalid",
        0x8000_0004 => "platform",
        0x8000_0005 => "tls required",
        0x8000_0006 => "unknown export",
        0x8000_0007 => "shutdown",
        0x8000_0008 => "block size required",
        0x8000_0009 => "too big",
        _ => "error",
    }
}

/// Lossy text of a server-sent message, for errors.
pub fn message(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
