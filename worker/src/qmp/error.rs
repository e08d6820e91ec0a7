//! Errors of the QMP client.
//!
//! Policy: a message from the server that breaks the protocol (not JSON, too long, a reply
//! nobody asked for) is a typed variant naming what was wrong and is fatal for the
//! connection; every command then pending, and every later one, fails with
//! [`QmpError::ConnectionLost`] carrying that cause. An error QEMU reports for one command
//! ([`QmpError::Command`]) fails only that command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    // Local and transport.
    #[error("cannot connect to qmp socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error on the qmp connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("qmp server closed the connection")]
    Closed,
    #[error("qmp connection lost: {0}")]
    ConnectionLost(#[source] Arc<QmpError>),
    #[error("a qmp command was cancelled while being sent; the connection is unusable")]
    Cancelled,
    #[error("qmp greeting and capabilities negotiation did not finish within {0:?}")]
    ConnectTimeout(Duration),

    #[error("path {} is not utf-8, which qmp cannot carry", .0.display())]
    NonUtf8Path(PathBuf),

    // The server broke the protocol.
    #[error("bad qmp greeting: {0}")]
    BadGreeting(String),
    #[error("qmp server sent a line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("qmp server sent invalid json: {0}")]
    BadJson(#[source] serde_json::Error),
    #[error("qmp server sent a message that is neither a reply nor an event: {0}")]
    UnexpectedMessage(String),
    #[error("qmp reply for unknown id {0}")]
    UnknownId(String),

    // One command or wait.
    /// QEMU refused the command: `class` is e.g. `GenericError`, `CommandNotFound`,
    /// `DeviceNotFound`; `desc` is its human-readable message.
    #[error("qmp command {command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("qmp command {command} got no reply within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("the reply to qmp command {command} has an unexpected shape: {source}")]
    BadReply {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no matching qmp event arrived within {0:?}")]
    EventTimeout(Duration),
    #[error("missed {0} qmp events: the event receiver fell behind")]
    EventsLagged(u64),
    #[error("qmp connection closed while waiting for an event")]
    EventsClosed,
}

impl QmpError {
    /// The error that broke the connection, if this is [`QmpError::ConnectionLost`]; else
    /// the error itself.
    pub fn cause(&self) -> &QmpError {
        match self {
            QmpError::ConnectionLost(cause) => cause.cause(),
            other => other,
        }
    }

    /// QEMU's error class, if QEMU refused the command.
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// Whether this is `nbd-server-start` refusing because a server already runs (the
    /// daemon may have been started with `--nbd-server`, or by an earlier Bora run).
    pub fn is_nbd_server_running_error(&self) -> bool {
        matches!(self, QmpError::Command { class, desc, .. }
            if class == "GenericError" && desc.contains("already"))
    }

    /// Whether the connection is gone (as opposed to one command failing).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            QmpError::ConnectionLost(_)
                | QmpError::Closed
                | QmpError::Io(_)
                | QmpError::EventsClosed
                | QmpError::Cancelled
        )
    }
}
