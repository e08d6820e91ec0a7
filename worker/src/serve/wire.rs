//! The server side of the NBD wire format: the constants the client module does not need,
//! request parsing and reply encoding. Pure functions over byte buffers, so they are tested
//! without a connection. Constants shared with the client come from `crate::nbd::proto`.

pub(crate) use crate::nbd::proto::{
    CMD_BLOCK_STATUS, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
    INFO_BLOCK_SIZE, INFO_EXPORT, MAX_STRING, NBDMAGIC, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO,
    OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, OPTION_REPLY_MAGIC, REP_ACK, REP_ERR_UNSUP,
    REP_INFO, REP_META_CONTEXT, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR,
    REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE, REQUEST_LEN, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC, TFLAG_CAN_MULTI_CONN, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH,
    TFLAG_SEND_WRITE_ZEROES,
};

// Options and option replies the client never uses.
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_LIST_META_CONTEXT: u32 = 9;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_ERR_INVALID: u32 = 0x8000_0003;
pub(crate) const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub(crate) const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

// Transmission flags the client never checks.
pub(crate) const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub(crate) const TFLAG_SEND_FUA: u16 = 1 << 3;
pub(crate) const TFLAG_SEND_TRIM: u16 = 1 << 5;

pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_FLAG_FUA: u16 = 1 << 0;
pub(crate) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// NBD errno values (the protocol's own numbering, equal to Linux's).
pub(crate) const EPERM: u32 = 1;
pub(crate) const EIO: u32 = 5;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;
pub(crate) const EOVERFLOW: u32 = 75;

/// Block sizes advertised in NBD_INFO_BLOCK_SIZE (what QEMU itself advertises).
pub(crate) const MIN_BLOCK: u32 = 1;
pub(crate) const PREFERRED_BLOCK: u32 = 4096;
pub(crate) const MAX_BLOCK: u32 = 32 << 20;

/// Largest option payload accepted; longer ones are refused (and skipped, up to
/// [`MAX_OPTION_SKIP`]) without being stored.
pub(crate) const MAX_OPTION: u32 = 64 << 10;
/// Past this an option is not even skipped: the connection is closed.
pub(crate) const MAX_OPTION_SKIP: u32 = 16 << 20;

/// The meta context id of `base:allocation` (the only context served).
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// One transmission-phase request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// Parses a 28-byte request header; `None` when the magic is wrong (the stream cannot be
/// trusted after that).
pub(crate) fn parse_request(b: &[u8; REQUEST_LEN]) -> Option<Request> {
    let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let be16 = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let be64 = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(a)
    };
    if be32(0) != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: be16(4),
        kind: be16(6),
        cookie: be64(8),
        offset: be64(16),
        len: be32(24),
    })
}

/// Whether `[offset, offset + len)` lies inside a disk of `size` bytes.
pub(crate) fn in_range(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

/// An option reply: magic, option, reply type, length, data.
pub(crate) fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    // Callers pass small payloads (names ≤ MAX_STRING, fixed-size infos, messages).
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// NBD_INFO_EXPORT: size and transmission flags.
pub(crate) fn info_export(size: u64, tflags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&tflags.to_be_bytes());
    b
}

/// NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum.
pub(crate) fn info_block_size() -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_BLOCK] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b
}

/// A u32 length and the string (the caller keeps strings ≤ [`MAX_STRING`]).
pub(crate) fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// A simple reply header (data, if any, follows).
pub(crate) fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured reply chunk header for a payload of `len` bytes.
pub(crate) fn chunk_header(cookie: u64, flags: u16, kind: u16, len: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// A complete NBD_REPLY_TYPE_OFFSET_HOLE chunk.
pub(crate) fn hole_chunk(cookie: u64, done: bool, offset: u64, len: u32) -> Vec<u8> {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let mut b = chunk_header(cookie, flags, REPLY_TYPE_OFFSET_HOLE, 12).to_vec();
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// A complete NBD_REPLY_TYPE_ERROR chunk (always the last one).
pub(crate) fn error_chunk(cookie: u64, errno: u32, msg: &str) -> Vec<u8> {
    let msg = truncate(msg, 1024);
    let mut b = chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + msg.len() as u32,
    )
    .to_vec();
    b.extend_from_slice(&errno.to_be_bytes());
    b.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    b.extend_from_slice(msg.as_bytes());
    b
}

/// A complete NBD_REPLY_TYPE_BLOCK_STATUS chunk (flag DONE) for one context.
pub(crate) fn block_status_chunk(cookie: u64, context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let len = 4 + 8 * extents.len();
    let mut b = Vec::with_capacity(20 + len);
    // Callers cap the extent count far below u32::MAX / 8.
    b.extend_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        len as u32,
    ));
    b.extend_from_slice(&context.to_be_bytes());
    for (length, flags) in extents {
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
    }
    b
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bounded cursor over an option's payload; every read checks the remaining length.
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }

    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u32-length-prefixed string of at most [`MAX_STRING`] bytes (lossy UTF-8).
    pub fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        if len > MAX_STRING {
            return None;
        }
        self.take(len)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::proto::encode_request;

    #[test]
    fn request_round_trips_through_the_client_encoder() {
        let b = encode_request(CMD_FLAG_FUA, CMD_WRITE, 0xdead_beef, 1 << 40, 4096);
        let r = parse_request(&b).expect("valid");
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_FUA,
                kind: CMD_WRITE,
                cookie: 0xdead_beef,
                offset: 1 << 40,
                len: 4096
            }
        );
    }

    #[test]
    fn bad_magic_is_refused() {
        let mut b = encode_request(0, CMD_READ, 1, 0, 1);
        b[0] ^= 0xff;
        assert_eq!(parse_request(&b), None);
        assert_eq!(parse_request(&[0u8; REQUEST_LEN]), None);
    }

    #[test]
    fn ranges_check_overflow_and_the_end() {
        assert!(in_range(0, 10, 10));
        assert!(!in_range(1, 10, 10));
        assert!(!in_range(u64::MAX, 2, u64::MAX));
        assert!(in_range(10, 0, 10));
    }

    #[test]
    fn cursor_refuses_short_and_oversized_strings() {
        let mut b = Vec::new();
        put_str(&mut b, "disk");
        b.extend_from_slice(&7u16.to_be_bytes());
        let mut c = Cursor::new(&b);
        assert_eq!(c.string().as_deref(), Some("disk"));
        assert_eq!(c.u16(), Some(7));
        assert!(c.is_empty());
        assert_eq!(c.u32(), None);

        let mut c = Cursor::new(&[0, 0, 0, 9, b'a']);
        assert_eq!(c.string(), None);
        let huge = (MAX_STRING as u32 + 1).to_be_bytes();
        assert_eq!(Cursor::new(&huge).string(), None);
    }

    #[test]
    fn error_chunk_layout() {
        let b = error_chunk(5, EPERM, "read-only");
        assert_eq!(&b[0..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&b[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&b[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&b[16..20], &15u32.to_be_bytes());
        assert_eq!(&b[20..24], &EPERM.to_be_bytes());
        assert_eq!(&b[26..], b"read-only");
        assert_eq!(truncate("héllo", 2), "h");
    }
}
