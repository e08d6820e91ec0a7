//! The public client: connection, greeting, capabilities negotiation, commands matched to
//! replies by id, and the event stream. Clones share one connection.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::QmpError;
use super::line::read_line;
use super::reader::{self, snippet};
use super::shared::{SendGuard, SendState, Shared};
use super::{MAX_LINE, QmpEvent};

/// How long connecting waits for the greeting and the capabilities negotiation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a command waits for its reply unless the client is told otherwise.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Events buffered per subscriber before it lags.
const EVENT_CAPACITY: usize = 1024;

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The QEMU version from the greeting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QmpVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
    /// The distribution's package string, e.g. `Debian 1:10.0.2+ds-2…`.
    pub package: String,
}

/// A QMP connection. Cheap to clone; any number of commands may be in flight at once, from
/// any clone. The connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct QmpClient {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    version: QmpVersion,
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<BoxWrite>,
    /// The reader task holds the only strong sender, so subscriptions end with it.
    events: broadcast::WeakSender<QmpEvent>,
    reader: Mutex<Option<JoinHandle<()>>>,
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

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("version", &self.inner.version)
            .field("closed", &self.inner.shared.closed())
            .finish()
    }
}

impl QmpClient {
    /// Connects to a QMP unix socket, reads the greeting and leaves capabilities
    /// negotiation mode, all within [`CONNECT_TIMEOUT`].
    pub async fn connect_unix(path: &Path) -> Result<QmpClient, QmpError> {
        let fut = async {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|source| QmpError::Connect {
                    path: path.to_owned(),
                    source,
                })?;
            Self::handshake(stream).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| QmpError::ConnectTimeout(CONNECT_TIMEOUT))?
    }

    /// Runs the greeting and capabilities negotiation on a connected stream, within
    /// [`CONNECT_TIMEOUT`], and starts the reader task.
    pub async fn connect_stream<S>(stream: S) -> Result<QmpClient, QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::handshake(stream))
            .await
            .map_err(|_| QmpError::ConnectTimeout(CONNECT_TIMEOUT))?
    }

    async fn handshake<S>(stream: S) -> Result<QmpClient, QmpError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(64 << 10, rd);
        let mut line = Vec::new();
        if !read_line(&mut rd, &mut line, MAX_LINE).await? {
            return Err(QmpError::Closed);
        }
        let version = parse_greeting(&line)?;
        let shared = Arc::new(Shared::default());
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let weak = events.downgrade();
        let task = tokio::spawn(reader::run(rd, shared.clone(), events));
        let client = QmpClient {
            inner: Arc::new(Inner {
                version,
                shared,
                writer: tokio::sync::Mutex::new(Box::new(wr)),
                events: weak,
                reader: Mutex::new(Some(task)),
            }),
            timeout: COMMAND_TIMEOUT,
        };
        client.execute("qmp_capabilities", Value::Null).await?;
        tracing::debug!(version = ?client.inner.version, "qmp connected");
        Ok(client)
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> &QmpVersion {
        &self.inner.version
    }

    /// How long this handle's commands wait for a reply.
    pub fn command_timeout(&self) -> Duration {
        self.timeout
    }

    /// A handle on the same connection whose commands wait `timeout` for a reply.
    pub fn with_command_timeout(&self, timeout: Duration) -> QmpClient {
        QmpClient {
            inner: self.inner.clone(),
            timeout,
        }
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<Arc<QmpError>> {
        self.inner.shared.closed()
    }

    /// Runs `command` and returns its `return` value. `arguments` is sent as given, or
    /// left out when `Null`. QEMU refusing the command is [`QmpError::Command`].
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.timeout)
            .await
    }

    /// [`QmpClient::execute`] with its own reply timeout. A command that times out stays
    /// running in QEMU; its late reply is discarded.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let id = shared.register(command, tx)?;
        let mut msg = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string().into_bytes();
        line.push(b'\n');
        tracing::trace!(command, id, "qmp command");
        let run = async {
            let mut guard = SendGuard::new(shared, id);
            {
                let mut w = self.inner.writer.lock().await;
                // The connection may have failed while waiting for the lock.
                if let Some(cause) = shared.closed() {
                    return Err(QmpError::ConnectionLost(cause));
                }
                guard.set(SendState::Writing);
                let sent = async {
                    w.write_all(&line).await?;
                    w.flush().await
                }
                .await;
                guard.set(SendState::Sent);
                if let Err(e) = sent {
                    let cause = Arc::new(QmpError::Io(e));
                    shared.fail_all(cause.clone());
                    return Err(QmpError::ConnectionLost(cause));
                }
            }
            let reply = rx.await;
            drop(guard);
            match reply {
                Ok(result) => result,
                Err(_) => Err(QmpError::ConnectionLost(
                    shared
                        .closed()
                        .unwrap_or_else(|| Arc::new(QmpError::Closed)),
                )),
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.to_owned(),
                timeout,
            })?
    }

    /// A new subscription to the event stream; it sees events from now on. It ends
    /// ([`QmpError::EventsClosed`] from [`QmpClient::wait_event`]) when the connection does.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        match self.inner.events.upgrade() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Waits for the first event from `rx` that satisfies `pred`. Subscribe (with
    /// [`QmpClient::events`]) BEFORE sending the command whose event is awaited: QEMU may
    /// send the event before the command's reply.
    pub async fn wait_event(
        rx: &mut broadcast::Receiver<QmpEvent>,
        pred: impl Fn(&QmpEvent) -> bool,
        timeout: Duration,
    ) -> Result<QmpEvent, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => return Err(QmpError::EventTimeout(timeout)),
                Ok(Ok(event)) if pred(&event) => return Ok(event),
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    return Err(QmpError::EventsLagged(n));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(QmpError::EventsClosed);
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Greeting {
    #[serde(rename = "QMP")]
    qmp: GreetingBody,
}

#[derive(Deserialize)]
struct GreetingBody {
    #[serde(default)]
    version: GreetingVersion,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct GreetingVersion {
    qemu: QemuTriple,
    package: String,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct QemuTriple {
    major: u32,
    minor: u32,
    micro: u32,
}

fn parse_greeting(line: &[u8]) -> Result<QmpVersion, QmpError> {
    let greeting: Greeting = serde_json::from_slice(line)
        .map_err(|e| QmpError::BadGreeting(format!("{e} in {:?}", snippet(line))))?;
    let v = greeting.qmp.version;
    Ok(QmpVersion {
        major: v.qemu.major,
        minor: v.qemu.minor,
        micro: v.qemu.micro,
        package: v.package,
    })
}
