//! `bora serve`: an NBD server over a snapshot's disk (instant recovery: QEMU boots from it
//! or `qemu-img convert`s it while the data stays in the repository).
//!
//! Fixed newstyle handshake (EXPORT_NAME, INFO, GO, STRUCTURED_REPLY, LIST,
//! SET/LIST_META_CONTEXT for `base:allocation`, ABORT); transmission with READ (structured
//! replies: OFFSET_DATA for data, OFFSET_HOLE for all-zero chunks, never fetched), BLOCK_STATUS,
//! FLUSH, DISC, and, on a writable export, WRITE, WRITE_ZEROES and TRIM into a copy-on-write
//! overlay ([`Export::writable`]); the snapshot itself is never changed.
//!
//! Clients are not trusted: each connection is one task; lengths are capped (32 MiB per
//! request, 64 KiB per option) before anything is allocated; a request that can be refused
//! gets an errno, one that breaks the stream closes that connection only. Protocol:
//! doc/proto.md of github.com/NetworkBlockDevice/nbd.

mod export;
mod negotiate;
mod overlay;
pub mod overlay_map;
mod saved;
mod transmission;
mod wire;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufStream};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use export::{Export, ExportError};
pub use overlay::OverlayError;
pub use overlay_map::{OverlayHeader, OverlayMapError};
pub use saved::SavedOverlay;

/// A client must finish the handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed right after accept.
pub const MAX_CONNECTIONS: usize = 256;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}: expected HOST:PORT (e.g. 127.0.0.1:10809) or unix:PATH")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    SavedOverlay(#[from] OverlayMapError),
    #[error("saving the overlay at shutdown: {0}")]
    SaveAtShutdown(#[source] ExportError),
    #[error("export name of {0} bytes is longer than NBD allows (4096)")]
    ExportName(usize),
    #[error("cannot create the overlay file in {}: {source}", dir.display())]
    Overlay {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why one client's connection ended early; logged, never fatal for the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
}

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `HOST:PORT`; port 0 picks a free one. Loopback unless the operator means otherwise.
    Tcp(String),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<ListenAddr, ServeError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(ServeError::BadAddress(s.to_string()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(p)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ListenAddr::Tcp(s.to_string()))
            }
            _ => Err(ServeError::BadAddress(s.to_string())),
        }
    }
}

enum Listener {
    Tcp(TcpListener, SocketAddr),
    Unix(UnixListener, PathBuf),
}

/// A bound server with its export.
pub struct Server {
    listener: Listener,
    export: Arc<Export>,
}

impl Server {
    /// Binds `addr`. A unix socket path that already exists is an error (another server
    /// may be using it).
    pub async fn bind(addr: &ListenAddr, export: Arc<Export>) -> Result<Server, ServeError> {
        let listener = match addr {
            ListenAddr::Tcp(hp) => {
                let bind_err = |source| ServeError::Bind {
                    addr: hp.clone(),
                    source,
                };
                let l = TcpListener::bind(hp.as_str()).await.map_err(bind_err)?;
                let local = l.local_addr().map_err(bind_err)?;
                Listener::Tcp(l, local)
            }
            ListenAddr::Unix(p) => {
                let l = UnixListener::bind(p).map_err(|source| ServeError::Bind {
                    addr: format!("unix:{}", p.display()),
                    source,
                })?;
                Listener::Unix(l, p.clone())
            }
        };
        Ok(Server { listener, export })
    }

    /// The URL clients connect to: `nbd://HOST:PORT/EXPORT` or
    /// `nbd+unix:///EXPORT?socket=PATH`.
    pub fn url(&self) -> String {
        let name = self.export.name();
        match &self.listener {
            Listener::Tcp(_, SocketAddr::V4(a)) => format!("nbd://{a}/{name}"),
            Listener::Tcp(_, SocketAddr::V6(a)) => {
                format!("nbd://[{}]:{}/{name}", a.ip(), a.port())
            }
            Listener::Unix(_, p) => format!("nbd+unix:///{name}?socket={}", p.display()),
        }
    }

    /// Whether only this machine can connect (loopback TCP or a unix socket).
    pub fn is_local(&self) -> bool {
        match &self.listener {
            Listener::Tcp(_, a) => a.ip().is_loopback(),
            Listener::Unix(..) => true,
        }
    }

    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// Serves clients until `shutdown` completes, then closes every connection, flushes
    /// the overlay and removes the unix socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Server { listener, export } = self;
        let mut tasks: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "a client task panicked");
                    }
                    continue;
                }
                a = accept(&listener) => a,
            };
            let (conn, client) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: keep serving the others.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tasks.len() >= MAX_CONNECTIONS {
                tracing::warn!(client, "too many connections; closing this one");
                continue;
            }
            let span = tracing::info_span!(
                "nbd_client",
                vm = %export.vm,
                disk = %export.disk,
                client = %client
            );
            let export = export.clone();
            tasks.spawn(
                async move {
                    match conn {
                        Conn::Tcp(s) => handle(s, &export).await,
                        Conn::Unix(s) => handle(s, &export).await,
                    }
                }
                .instrument(span),
            );
        }
        tasks.shutdown().await;
        let flushed = export.flush().await;
        if let Listener::Unix(_, p) = &listener {
            remove_socket(p);
        }
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "flushing the overlay at shutdown failed");
            // The writes of a saved overlay would be lost: that is the server's failure.
            if export.is_saved() {
                return Err(ServeError::SaveAtShutdown(e));
            }
        }
        tracing::info!(bytes_fetched = export.bytes_fetched(), "nbd server stopped");
        Ok(())
    }
}

fn remove_socket(p: &Path) {
    if let Err(e) = std::fs::remove_file(p) {
        tracing::warn!(path = %p.display(), error = %e, "cannot remove the socket");
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<(Conn, String)> {
    match l {
        Listener::Tcp(l, _) => {
            let (s, peer) = l.accept().await?;
            // Replies are small and latency-bound; do not wait for more to send.
            s.set_nodelay(true)?;
            Ok((Conn::Tcp(s), peer.to_string()))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok((Conn::Unix(s), "unix".to_string()))
        }
    }
}

/// One client, from greeting to disconnect.
async fn handle<S>(stream: S, export: &Export)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!("client connected");
    match connection(stream, export).await {
        Ok(()) => tracing::debug!("client disconnected"),
        Err(e) => tracing::info!(error = %e, "client connection closed"),
    }
}

pub(crate) async fn connection<S>(stream: S, export: &Export) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = BufStream::with_capacity(64 << 10, 256 << 10, stream);
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, negotiate::negotiate(&mut s, export))
        .await
        .map_err(|_| ConnError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    match outcome {
        negotiate::Outcome::Aborted => Ok(()),
        negotiate::Outcome::Transmission(session) => {
            tracing::debug!(?session, "transmission");
            transmission::serve_requests(&mut s, export, session).await
        }
    }
}
