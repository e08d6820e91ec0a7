//! Fixed newstyle negotiation: STRUCTURED_REPLY, SET_META_CONTEXT, then GO with
//! INFO_BLOCK_SIZE (falling back to EXPORT_NAME for servers without GO).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::NbdError;
use super::proto::{self, read_u16, read_u32, read_u64};

/// What the handshake settled.
#[derive(Clone, Debug)]
pub(crate) struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub preferred_block: u32,
    pub max_block: u32,
    pub structured: bool,
    /// Negotiated meta contexts: name and the id the server gave it.
    pub contexts: Vec<(String, u32)>,
}

/// Runs the handshake on `s`. On an error after the greeting the client sends
/// NBD_OPT_ABORT (best effort) so the server sees a soft disconnect.
pub(crate) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    meta_contexts: &[&str],
) -> Result<ExportInfo, NbdError> {
    check_len("export name", export)?;
    for c in meta_contexts {
        check_len("meta context name", c)?;
    }
    let no_zeroes = greeting(s).await?;
    let result = negotiate(s, export, meta_contexts, no_zeroes).await;
    if let Err(e) = &result
        && !matches!(e, NbdError::Io(_) | NbdError::Truncated(_))
        && let Ok(abort) = proto::encode_option(proto::OPT_ABORT, &[])
    {
        let _ = s.write_all(&abort).await;
        let _ = s.flush().await;
    }
    result
}

fn check_len(what: &'static str, s: &str) -> Result<(), NbdError> {
    if s.len() > proto::MAX_STRING {
        return Err(NbdError::NameTooLong {
            what,
            len: s.len(),
            max: proto::MAX_STRING,
        });
    }
    Ok(())
}

/// Reads the server greeting and answers with the client flags; returns whether the
/// server will omit the 124 zero bytes after EXPORT_NAME.
async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, NbdError> {
    let magic = read_u64(s, "the greeting").await?;
    if magic != proto::NBDMAGIC {
        return Err(NbdError::BadMagic {
            what: "greeting",
            got: magic,
        });
    }
    let magic = read_u64(s, "the greeting").await?;
    if magic == proto::CLISERV_MAGIC {
        return Err(NbdError::Oldstyle);
    }
    if magic != proto::IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "newstyle greeting",
            got: magic,
        });
    }
    let flags = read_u16(s, "the greeting").await?;
    if flags & proto::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::NotFixedNewstyle);
    }
    let no_zeroes = flags & proto::FLAG_NO_ZEROES != 0;
    let mut client = proto::FLAG_C_FIXED_NEWSTYLE;
    if no_zeroes {
        client |= proto::FLAG_C_NO_ZEROES;
    }
    s.write_all(&client.to_be_bytes()).await?;
    Ok(no_zeroes)
}

async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    meta_contexts: &[&str],
    no_zeroes: bool,
) -> Result<ExportInfo, NbdError> {
    let structured = structured_reply(s).await?;
    let contexts = if meta_contexts.is_empty() {
        Vec::new()
    } else if !structured {
        return Err(NbdError::NoStructuredReplies);
    } else {
        set_meta_context(s, export, meta_contexts).await?
    };
    let mut info = match go(s, export).await? {
        Some(info) => info,
        None => export_name(s, export, no_zeroes).await?,
    };
    info.structured = structured;
    info.contexts = contexts;
    Ok(info)
}

struct OptionReply {
    reply: u32,
    data: Vec<u8>,
}

async fn send_option<S: AsyncWrite + Unpin>(
    s: &mut S,
    option: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    s.write_all(&proto::encode_option(option, data)?).await?;
    s.flush().await?;
    Ok(())
}

/// Reads one option reply, capping its length before allocating; an error reply becomes
/// [`NbdError::OptionRejected`].
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S, option: u32) -> Result<OptionReply, NbdError> {
    const WHAT: &str = "an option reply";
    let magic = read_u64(s, WHAT).await?;
    if magic != proto::OPTION_REPLY_MAGIC {
        return Err(NbdError::BadMagic {
            what: "option reply",
            got: magic,
        });
    }
    let got = read_u32(s, WHAT).await?;
    if got != option {
        return Err(NbdError::OptionReplyMismatch { sent: option, got });
    }
    let reply = read_u32(s, WHAT).await?;
    let len = read_u32(s, WHAT).await?;
    if len > proto::MAX_OPTION_REPLY {
        return Err(NbdError::OptionReplyTooLarge {
            option,
            len,
            max: proto::MAX_OPTION_REPLY,
        });
    }
    let data = proto::read_vec(s, len, WHAT).await?;
    if reply & proto::REP_ERR_BIT != 0 {
        return Err(NbdError::OptionRejected {
            option,
            reply,
            message: proto::message(&data),
        });
    }
    Ok(OptionReply { reply, data })
}

fn unexpected(option: u32, r: &OptionReply) -> NbdError {
    NbdError::UnexpectedOptionReply {
        option,
        reply: r.reply,
        len: r.data.len() as u32,
    }
}

async fn structured_reply<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, NbdError> {
    let opt = proto::OPT_STRUCTURED_REPLY;
    send_option(s, opt, &[]).await?;
    match read_reply(s, opt).await {
        Ok(r) if r.reply == proto::REP_ACK => Ok(true),
        Ok(r) => Err(unexpected(opt, &r)),
        Err(NbdError::OptionRejected {
            reply: proto::REP_ERR_UNSUP,
            ..
        }) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn set_meta_context<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    wanted: &[&str],
) -> Result<Vec<(String, u32)>, NbdError> {
    let opt = proto::OPT_SET_META_CONTEXT;
    let mut data = Vec::new();
    proto::put_string(&mut data, "export name", export)?;
    data.extend_from_slice(&(wanted.len() as u32).to_be_bytes());
    for name in wanted {
        proto::put_string(&mut data, "meta context name", name)?;
    }
    send_option(s, opt, &data).await?;

    let mut contexts: Vec<(String, u32)> = Vec::new();
    for _ in 0..proto::MAX_OPTION_REPLIES {
        let r = read_reply(s, opt).await?;
        match r.reply {
            proto::REP_ACK => {
                for name in wanted {
                    if !contexts.iter().any(|(n, _)| n == name) {
                        return Err(NbdError::MetaContextNotAccepted((*name).to_owned()));
                    }
                }
                return Ok(contexts);
            }
            proto::REP_META_CONTEXT => {
                let Some((id, name)) = r.data.split_first_chunk::<4>() else {
                    return Err(NbdError::ShortMetaContext(r.data.len() as u32));
                };
                let id = u32::from_be_bytes(*id);
                let name = proto::message(name);
                if contexts.iter().any(|(_, i)| *i == id) {
                    return Err(NbdError::DuplicateMetaContext { id, name });
                }
                contexts.push((name, id));
            }
            _ => return Err(unexpected(opt, &r)),
        }
    }
    Err(NbdError::TooManyOptionReplies {
        option: opt,
        max: proto::MAX_OPTION_REPLIES,
    })
}

/// NBD_OPT_GO asking for block sizes; `None` when the server does not know GO.
async fn go<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
) -> Result<Option<ExportInfo>, NbdError> {
    let opt = proto::OPT_GO;
    let mut data = Vec::new();
    proto::put_string(&mut data, "export name", export)?;
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, opt, &data).await?;

    let mut export_info: Option<(u64, u16)> = None;
    let mut sizes = (1u32, 4096u32, proto::DEFAULT_MAX_BLOCK);
    for _ in 0..proto::MAX_OPTION_REPLIES {
        let r = match read_reply(s, opt).await {
            Ok(r) => r,
            Err(NbdError::OptionRejected {
                reply: proto::REP_ERR_UNSUP,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match r.reply {
            proto::REP_INFO => {
                let Some((kind, _)) = r.data.split_first_chunk::<2>() else {
                    return Err(NbdError::ShortInfo(r.data.len() as u32));
                };
                match u16::from_be_bytes(*kind) {
                    proto::INFO_EXPORT => {
                        let b: &[u8; 12] = info_payload(&r.data, proto::INFO_EXPORT)?;
                        export_info = Some((be_u64(b, 2), be_u16(b, 10)));
                    }
                    proto::INFO_BLOCK_SIZE => {
                        let b: &[u8; 14] = info_payload(&r.data, proto::INFO_BLOCK_SIZE)?;
                        sizes = (be_u32(b, 2), be_u32(b, 6), be_u32(b, 10));
                    }
                    _ => {} // Unknown info types are ignored, as the spec says.
                }
            }
            proto::REP_ACK => {
                let (size, flags) = export_info.ok_or(NbdError::NoExportInfo)?;
                let (min, preferred, max) = check_block_sizes(sizes)?;
                return Ok(Some(ExportInfo {
                    size,
                    flags,
                    min_block: min,
                    preferred_block: preferred,
                    max_block: max,
                    structured: false,
                    contexts: Vec::new(),
                }));
            }
            _ => return Err(unexpected(opt, &r)),
        }
    }
    Err(NbdError::TooManyOptionReplies {
        option: opt,
        max: proto::MAX_OPTION_REPLIES,
    })
}

/// The old way into transmission: no reply on failure, the server just hangs up.
async fn export_name<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<ExportInfo, NbdError> {
    send_option(s, proto::OPT_EXPORT_NAME, export.as_bytes()).await?;
    let size = read_u64(s, "the export name reply").await?;
    let flags = read_u16(s, "the export name reply").await?;
    if !no_zeroes {
        proto::skip(s, 124, "the export name reply").await?;
    }
    Ok(ExportInfo {
        size,
        flags,
        min_block: 1,
        preferred_block: 4096,
        max_block: proto::DEFAULT_MAX_BLOCK,
        structured: false,
        contexts: Vec::new(),
    })
}

fn info_payload<const N: usize>(data: &[u8], info: u16) -> Result<&[u8; N], NbdError> {
    data.try_into().map_err(|_| NbdError::BadInfoLength {
        info,
        len: data.len() as u32,
        expected: N as u32,
    })
}

fn check_block_sizes((min, preferred, max): (u32, u32, u32)) -> Result<(u32, u32, u32), NbdError> {
    let ok = min.is_power_of_two()
        && min <= 64 << 10
        && preferred.is_power_of_two()
        && preferred >= min
        && max >= min;
    if !ok {
        return Err(NbdError::BadBlockSize {
            min,
            preferred,
            max,
        });
    }
    Ok((min, preferred, max))
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
