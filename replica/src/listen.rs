//! The receiving side of the link: a TCP listener of its own, TLS unless the site runs a
//! loopback test, every call checked against the site's tokens before it reaches the
//! [`crate::receive::ReplicaService`].
//!
//! TLS handshakes run one task per connection (a slow or hostile client does not hold up
//! the others) and a failed handshake is logged with the peer's address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};

use bora_proto::replica::replica_server::ReplicaServer;

use crate::auth::{Tokens, TokensError};
use crate::receive::{ReplicaService, Site};
use crate::remote::is_loopback;
use crate::tls::{self, TlsError};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how a site receives replication.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// `HOST:PORT`.
    pub listen: String,
    /// PEM certificate chain and key; `None` serves plaintext (loopback addresses only).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The tokens file (one per line).
    pub tokens_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("replica listener {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("replica listener: reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica listener: {0}")]
    Tls(#[from] TlsError),
    #[error("replica listener: {0}")]
    Tokens(#[from] TokensError),
    #[error(
        "replica listener {0}: plaintext is for loopback addresses only; give tls-cert and tls-key"
    )]
    PlaintextNotLoopback(String),
    #[error("replica listener {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A bound listener, not serving yet.
pub struct BoundListener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tokens: Tokens,
}

/// Loads the certificate, key and tokens and binds `config.listen`.
pub async fn bind(config: &ListenConfig) -> Result<BoundListener, ListenError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| ListenError::Read {
            path: p.clone(),
            source,
        })
    };
    let tls = match &config.tls {
        Some((cert, key)) => {
            let c = tls::server(&read(cert)?, &read(key)?)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(c)))
        }
        None => {
            let host = config
                .listen
                .rsplit_once(':')
                .map_or(config.listen.as_str(), |(h, _)| h);
            if !is_loopback(host) {
                return Err(ListenError::PlaintextNotLoopback(config.listen.clone()));
            }
            None
        }
    };
    let tokens = Tokens::load(&config.tokens_file)?;
    let bind_err = |source| ListenError::Bind {
        addr: config.listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&config.listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok(BoundListener {
        listener,
        addr,
        tls,
        tokens,
    })
}

/// A TLS connection as tonic's server wants it.
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts connections and hands on those whose handshake completes.
async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    out: tokio::sync::mpsc::Sender<std::io::Result<TlsConn>>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "replica listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if out.is_closed() {
            return;
        }
        let (acceptor, out) = (acceptor.clone(), out.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = out.send(Ok(TlsConn(tls))).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "replica listener: TLS handshake failed")
                }
                Err(_) => tracing::warn!(%peer, "replica listener: TLS handshake timed out"),
            }
        });
    }
}

impl BoundListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `site` until `shutdown` resolves.
    pub async fn serve<S: Site>(
        self,
        site: Arc<S>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ListenError> {
        let svc = ReplicaServer::new(ReplicaService::new(site))
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES);
        let router = Server::builder()
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .add_service(InterceptedService::new(svc, self.tokens));
        let addr = self.addr;
        let served = match self.tls {
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), shutdown)
                    .await
            }
            Some(acceptor) => {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                let accepting = tokio::spawn(accept_tls(self.listener, acceptor, tx));
                let r = router
                    .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
                    .await;
                accepting.abort();
                r
            }
        };
        served.map_err(|source| ListenError::Serve { addr, source })
    }
}
