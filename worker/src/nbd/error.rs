//! Errors of the NBD client.
//!
//! Policy: anything the server says that breaks the protocol is a typed variant naming what
//! was wrong, and is fatal for the connection (the byte stream can no longer be trusted).
//! Every request then pending, and every later one, fails with [`NbdError::ConnectionLost`]
//! carrying that cause. An error the server reports for one request ([`NbdError::Server`])
//! fails only that request.

use std::fmt;
use std::sync::Arc;

use super::proto;

/// A transmission-phase command, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Flush,
    WriteZeroes,
    BlockStatus,
    Disconnect,
}

impl Command {
    pub(crate) fn code(self) -> u16 {
        match self {
            Command::Read => proto::CMD_READ,
            Command::Write => proto::CMD_WRITE,
            Command::Disconnect => proto::CMD_DISC,
            Command::Flush => proto::CMD_FLUSH,
            Command::WriteZeroes => proto::CMD_WRITE_ZEROES,
            Command::BlockStatus => proto::CMD_BLOCK_STATUS,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Read => "read",
            Command::Write => "write",
            Command::Flush => "flush",
            Command::WriteZeroes => "write zeroes",
            Command::BlockStatus => "block status",
            Command::Disconnect => "disconnect",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    // Local and transport.
    #[error("cannot connect to nbd server at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error on the nbd connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("nbd server closed the connection in the middle of {0}")]
    Truncated(&'static str),
    #[error("nbd server closed the connection")]
    Closed,
    #[error("nbd connection lost: {0}")]
    ConnectionLost(#[source] Arc<NbdError>),
    #[error("a request was cancelled while being sent; the connection is unusable")]
    Cancelled,
    #[error("the client disconnected")]
    Disconnected,

    // Caller mistakes, caught before anything is sent.
    #[error("{what} is {len} bytes, the limit is {max}")]
    NameTooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{command} of {offset}+{length} is past the end of the export ({size} bytes)")]
    OutOfRange {
        command: Command,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("export is read-only")]
    ReadOnly,
    #[error("meta context {0:?} was not negotiated on this connection")]
    UnknownContext(String),

    // Handshake.
    #[error("bad {what} magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("server uses oldstyle negotiation, which is not supported")]
    Oldstyle,
    #[error("server does not support fixed newstyle negotiation")]
    NotFixedNewstyle,
    #[error("option reply is for option {got}, expected {sent}")]
    OptionReplyMismatch { sent: u32, got: u32 },
    #[error("option reply of {len} bytes to option {option} is larger than {max}")]
    OptionReplyTooLarge { option: u32, len: u32, max: u32 },
    #[error("server sent more than {max} replies to option {option}")]
    TooManyOptionReplies { option: u32, max: usize },
    #[error("server rejected option {option} with {}: {message}", proto::rep_name(*reply))]
    OptionRejected {
        option: u32,
        reply: u32,
        message: String,
    },
    #[error("unexpected reply type {reply} of {len} bytes to option {option}")]
    UnexpectedOptionReply { option: u32, reply: u32, len: u32 },
    #[error("server does not support structured replies, which meta contexts need")]
    NoStructuredReplies,
    #[error("server did not accept meta context {0:?}")]
    MetaContextNotAccepted(String),
    #[error("server sent meta context id {id} twice (second for {name:?})")]
    DuplicateMetaContext { id: u32, name: String },
    #[error("meta context reply of {0} bytes is too short")]
    ShortMetaContext(u32),
    #[error("info {info} has length {len}, expected {expected}")]
    BadInfoLength { info: u16, len: u32, expected: u32 },
    #[error("info reply of {0} bytes is too short")]
    ShortInfo(u32),
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("{command} got no reply within {timeout:?}: the server stalled")]
    RequestTimeout {
        command: Command,
        timeout: std::time::Duration,
    },
    #[error("server acknowledged go without sending export info")]
    NoExportInfo,
    #[error("invalid block size constraints: minimum {min}, preferred {preferred}, maximum {max}")]
    BadBlockSize { min: u32, preferred: u32, max: u32 },

    // Transmission: the reply stream.
    #[error("reply for unknown cookie {0:#x}")]
    UnknownCookie(u64),
    #[error("unexpected reply chunk type {chunk_type} to {command}")]
    UnexpectedChunk { chunk_type: u16, command: Command },
    #[error("reply chunk type {chunk_type} to {command} has bad length {len}")]
    BadChunkLength {
        chunk_type: u16,
        command: Command,
        len: u32,
    },
    #[error("reply chunk of {len} bytes to {command} exceeds the limit of {max}")]
    ChunkTooLarge {
        command: Command,
        len: u32,
        max: u64,
    },
    #[error("simple reply without error to {0}, which needs a structured reply")]
    UnexpectedSimpleReply(Command),
    #[error(
        "read reply chunk {offset}+{length} lies outside the request {req_offset}+{req_length}"
    )]
    OutsideRequest {
        offset: u64,
        length: u64,
        req_offset: u64,
        req_length: u32,
    },
    #[error("read reply chunk {offset}+{length} overlaps an earlier chunk")]
    Overlap { offset: u64, length: u64 },
    #[error("read reply of {req_offset}+{req_length} covered only {covered} bytes")]
    IncompleteRead {
        req_offset: u64,
        req_length: u32,
        covered: u64,
    },
    #[error("block status extent at {offset} has zero length")]
    ZeroLengthExtent { offset: u64 },
    #[error("block status extent at {offset} starts past the requested range ending at {end}")]
    ExtentPastRequest { offset: u64, end: u64 },
    #[error("block status extent ending at {end} is past the end of the export ({size} bytes)")]
    ExtentPastExport { end: u64, size: u64 },
    #[error("block status reply for unknown meta context id {0}")]
    UnknownContextId(u32),
    #[error("block status reply has two chunks for meta context id {0}")]
    DuplicateContext(u32),
    #[error("block status reply has no extents for meta context id {0}")]
    MissingContext(u32),

    #[error("reply to {0} does not match the request kind (a client bug)")]
    ReplyMismatch(Command),

    /// The server reported an error for one request; the connection stays usable.
    #[error("server failed {command} of {offset}+{length}: {} (errno {errno}){}",
        proto::errno_name(*errno), fmt_message(message))]
    Server {
        command: Command,
        offset: u64,
        length: u32,
        errno: u32,
        message: String,
    },
}

impl NbdError {
    /// The error that broke the connection, if this is [`NbdError::ConnectionLost`]; else
    /// the error itself.
    pub fn cause(&self) -> &NbdError {
        match self {
            NbdError::ConnectionLost(cause) => cause.cause(),
            other => other,
        }
    }
}

fn fmt_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}
