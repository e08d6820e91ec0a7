//! An async NBD client (fixed newstyle, structured replies, block status) for reading
//! hypervisor disks and writing restores.
//!
//! One connection carries many requests at once: requests are written under a mutex on the
//! write half, and a reader task matches replies to requests by cookie. The server is not
//! trusted: every length from the wire is capped before anything is allocated, every reply
//! is checked against its request, and any violation fails the connection with a typed
//! [`NbdError`] instead of a panic or a hang. Protocol: doc/proto.md of
//! github.com/NetworkBlockDevice/nbd; QEMU's quirks are noted where they matter (REQ_ONE never
//! sent, block status clamped to the export and to 4 GiB, several contexts per reply).

mod assembly;
mod client;
mod commands;
mod conn;
mod error;
mod handshake;
pub(crate) mod proto;
mod reader;

#[cfg(test)]
mod fake_server;
#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod fake_write_tests;
#[cfg(test)]
mod qemu_tests;

use std::fmt;
use std::path::PathBuf;

pub use client::{HANDSHAKE_TIMEOUT, NbdClient, REQUEST_TIMEOUT};
pub use error::{Command, NbdError};

/// `base:allocation`: flag bit 0 = hole, bit 1 = reads as zeros.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is not allocated.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 1 << 1;
/// `qemu:dirty-bitmap:NAME` flag: the extent changed since the bitmap was started.
pub const STATE_DIRTY: u32 = 1 << 0;

/// The meta context name of QEMU's dirty bitmap `bitmap`.
pub fn dirty_bitmap_context(bitmap: &str) -> String {
    format!("qemu:dirty-bitmap:{bitmap}")
}

/// Where an NBD server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl NbdAddr {
    /// The URL of export `export` here, as [`parse_nbd_url`] reads it.
    pub fn url(&self, export: &str) -> String {
        match self {
            NbdAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            NbdAddr::Tcp(hp) => format!("nbd://{hp}/{export}"),
        }
    }
}

impl fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            NbdAddr::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

/// Parses an NBD URL: `nbd://HOST[:PORT]/EXPORT` (port 10809 by default) or
/// `nbd+unix:///EXPORT?socket=PATH`. Returns the address and the export name.
pub fn parse_nbd_url(url: &str) -> Result<(NbdAddr, String), String> {
    if let Some(rest) = url.strip_prefix("nbd+unix://") {
        let (export, query) = rest
            .split_once('?')
            .ok_or_else(|| format!("{url}: expected nbd+unix:///EXPORT?socket=PATH"))?;
        let socket = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("socket="))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{url}: missing socket=PATH"))?;
        return Ok((
            NbdAddr::Unix(PathBuf::from(socket)),
            export.trim_start_matches('/').to_string(),
        ));
    }
    if let Some(rest) = url.strip_prefix("nbd://") {
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        if hostport.is_empty() {
            return Err(format!("{url}: expected nbd://HOST:PORT/EXPORT"));
        }
        // A port is present unless the host is a bare IPv6 literal in brackets.
        let has_port = hostport.rsplit_once(':').is_some() && !hostport.ends_with(']');
        let hostport = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:10809")
        };
        return Ok((NbdAddr::Tcp(hostport), export.to_string()));
    }
    Err(format!(
        "{url}: not an NBD URL (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
    ))
}

/// One extent of a block status answer; `flags` are the meta context's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatusExtent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}
