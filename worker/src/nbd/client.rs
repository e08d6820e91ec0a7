//! The public client: requests are written under a mutex on the write half; a reader task
//! demultiplexes the replies by cookie. Clones share one connection.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::NbdAddr;
use super::conn::{Pending, Reply, SendGuard, SendState, Shared};
use super::error::{Command, NbdError};
use super::handshake::{ExportInfo, handshake};
use super::proto;
use super::reader::{self, ReaderInfo};

/// How long `connect` waits for the handshake to finish.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may wait for its reply. A server that stays connected but stops
/// answering would otherwise hold a backup (and a VM's freeze) forever; when it expires
/// the connection is failed, since a late reply could no longer be matched.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `disconnect` waits for the server to close after NBD_CMD_DISC.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// An NBD client on one connection. Cheap to clone; any number of requests may be in
/// flight at once, from any clone.
#[derive(Clone)]
pub struct NbdClient {
    inner: Arc<Inner>,
}

struct Inner {
    info: ExportInfo,
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<BoxWrite>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.inner.info)
            .field("closed", &self.inner.shared.closed())
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let handle = self
            .reader
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = handle.take() {
            h.abort();
        }
    }
}

impl NbdClient {
    /// Connects and runs the fixed newstyle handshake: STRUCTURED_REPLY, SET_META_CONTEXT
    /// for `meta_contexts` (each must be accepted), then GO asking for block sizes.
    pub async fn connect(
        addr: &NbdAddr,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<NbdClient, NbdError> {
        let connect_err = |source| NbdError::Connect {
            addr: addr.to_string(),
            source,
        };
        let fut = async {
            match addr {
                NbdAddr::Unix(path) => {
                    let s = UnixStream::connect(path).await.map_err(connect_err)?;
                    Self::connect_stream(s, export, meta_contexts).await
                }
                NbdAddr::Tcp(hostport) => {
                    let s = TcpStream::connect(hostport).await.map_err(connect_err)?;
                    s.set_nodelay(true).map_err(connect_err)?;
                    Self::connect_stream(s, export, meta_contexts).await
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
            .await
            .map_err(|_| NbdError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
    }

    /// Runs the handshake on an already connected stream (no timeout) and starts the
    /// reader task.
    pub async fn connect_stream<S>(
        mut stream: S,
        export: &str,
        meta_contexts: &[&str],
    ) -> Result<NbdClient, NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let info = handshake(&mut stream, export, meta_contexts).await?;
        tracing::debug!(
            export,
            size = info.size,
            flags = info.flags,
            max_block = info.max_block,
            "nbd handshake done"
        );
        let (rd, wr) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let reader_info = ReaderInfo {
            structured: info.structured,
            export_size: info.size,
            context_ids: info.contexts.iter().map(|(_, id)| *id).collect(),
        };
        let task = tokio::spawn(reader::run(
            BufReader::with_capacity(64 << 10, rd),
            shared.clone(),
            reader_info,
        ));
        Ok(NbdClient {
            inner: Arc::new(Inner {
                info,
                shared,
                writer: tokio::sync::Mutex::new(Box::new(wr)),
                reader: Mutex::new(Some(task)),
            }),
        })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    pub fn read_only(&self) -> bool {
        self.flag(proto::TFLAG_READ_ONLY)
    }

    /// The server's maximum request size (32 MiB if it sent none); larger reads and writes
    /// are split.
    pub fn max_block(&self) -> u32 {
        self.inner.info.max_block
    }

    /// The server's minimum block size (1 if it sent none).
    pub fn min_block(&self) -> u32 {
        self.inner.info.min_block
    }

    /// The server's preferred block size (4096 if it sent none).
    pub fn preferred_block(&self) -> u32 {
        self.inner.info.preferred_block
    }

    /// Whether several connections to this export see each other's writes and flushes.
    pub fn can_multi_conn(&self) -> bool {
        self.flag(proto::TFLAG_CAN_MULTI_CONN)
    }

    /// Names of the negotiated meta contexts.
    pub fn meta_contexts(&self) -> impl Iterator<Item = &str> {
        self.inner.info.contexts.iter().map(|(n, _)| n.as_str())
    }

    /// The server's id for the negotiated meta context `name`.
    pub(super) fn context_id(&self, name: &str) -> Option<u32> {
        let contexts = &self.inner.info.contexts;
        contexts.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    pub(super) fn flag(&self, f: u16) -> bool {
        self.inner.info.flags & f != 0
    }

    /// Sends NBD_CMD_DISC and waits for the server to close the connection. Requests from
    /// other clones fail afterwards.
    pub async fn disconnect(self) -> Result<(), NbdError> {
        {
            let mut w = self.inner.writer.lock().await;
            if let Some(cause) = self.inner.shared.closed() {
                return Err(NbdError::ConnectionLost(cause));
            }
            self.inner.shared.close(NbdError::Disconnected);
            let req = proto::encode_request(0, Command::Disconnect.code(), 0, 0, 0);
            w.write_all(&req).await?;
            w.flush().await?;
            w.shutdown().await?;
        }
        let task = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(DISCONNECT_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("nbd server did not close the connection after disconnect");
            task.abort();
            self.inner.shared.fail_all(Arc::new(NbdError::Disconnected));
        }
        Ok(())
    }

    pub(super) async fn request_done(
        &self,
        command: Command,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<(), NbdError> {
        match self.request(command, offset, len, None, payload).await? {
            Reply::Done => Ok(()),
            other => Err(unexpected_reply(command, &other)),
        }
    }

    /// Sends one request and waits for its reply.
    pub(super) async fn request(
        &self,
        command: Command,
        offset: u64,
        len: u32,
        context: Option<u32>,
        payload: &[u8],
    ) -> Result<Reply, NbdError> {
        let shared = &*self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let cookie = shared.register(Pending {
            command,
            offset,
            len,
            context,
            tx,
        })?;
        let mut guard = SendGuard::new(shared, cookie);
        {
            let mut w = self.inner.writer.lock().await;
            // A disconnect or failure may have happened while waiting for the lock.
            if let Some(cause) = shared.closed() {
                return Err(NbdError::ConnectionLost(cause));
            }
            guard.set(SendState::Writing);
            let header = proto::encode_request(0, command.code(), cookie, offset, len);
            let sent = async {
                w.write_all(&header).await?;
                w.write_all(payload).await?;
                w.flush().await
            }
            .await;
            guard.set(SendState::Sent);
            if let Err(e) = sent {
                let cause = Arc::new(NbdError::Io(e));
                shared.fail_all(cause.clone());
                return Err(NbdError::ConnectionLost(cause));
            }
        }
        drop(guard);
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(NbdError::ConnectionLost(
                shared
                    .closed()
                    .unwrap_or_else(|| Arc::new(NbdError::Closed)),
            )),
            Err(_) => {
                let cause = Arc::new(NbdError::RequestTimeout {
                    command,
                    timeout: REQUEST_TIMEOUT,
                });
                shared.fail_all(cause.clone());
                Err(NbdError::ConnectionLost(cause))
            }
        }
    }
}

pub(super) fn unexpected_reply(command: Command, reply: &Reply) -> NbdError {
    // The reader builds replies from the request kind, so this is a bug, not the server.
    tracing::error!(%command, ?reply, "nbd reply does not match the request kind");
    NbdError::ReplyMismatch(command)
}
