//! The reader task: owns the read half of the socket, parses every line, hands replies to
//! the command with that id and events to the broadcast channel. Any protocol violation
//! ends the task and fails every pending command; dropping the event sender then ends every
//! event subscription.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::io::AsyncBufRead;
use tokio::sync::broadcast;

use super::error::QmpError;
use super::line::read_line;
use super::shared::{Shared, Slot};
use super::{MAX_LINE, QmpEvent};

/// Runs until the connection ends or the server breaks the protocol.
pub(crate) async fn run<R: AsyncBufRead + Unpin>(
    mut r: R,
    shared: Arc<Shared>,
    events: broadcast::Sender<QmpEvent>,
) {
    let read_loop = async {
        let mut buf = Vec::new();
        loop {
            let step = match read_line(&mut r, &mut buf, MAX_LINE).await {
                Ok(true) => dispatch(&buf, &shared, &events),
                Ok(false) => Err(QmpError::Closed),
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                break e;
            }
        }
    };
    let cause = tokio::select! {
        err = read_loop => {
            match &err {
                QmpError::Closed => tracing::debug!("qmp server closed the connection"),
                e => tracing::warn!(error = %e, "qmp connection failed"),
            }
            Arc::new(err)
        }
        // A caller failed the connection (a write error, a cancelled send).
        () = shared.wait_failed() => shared.closed().unwrap_or_else(|| Arc::new(QmpError::Closed)),
    };
    shared.fail_all(cause);
}

/// Handles one message: an event, or the reply to a pending command.
pub(crate) fn dispatch(
    line: &[u8],
    shared: &Shared,
    events: &broadcast::Sender<QmpEvent>,
) -> Result<(), QmpError> {
    let msg: Value = serde_json::from_slice(line).map_err(QmpError::BadJson)?;
    let Value::Object(mut obj) = msg else {
        return Err(QmpError::UnexpectedMessage(snippet(line)));
    };
    if let Some(name) = obj.get("event") {
        let Some(name) = name.as_str() else {
            return Err(QmpError::UnexpectedMessage(snippet(line)));
        };
        let event = QmpEvent {
            event: name.to_owned(),
            data: obj.remove("data").unwrap_or(Value::Null),
        };
        tracing::trace!(event = %event.event, data = %event.data, "qmp event");
        // Nobody listening is fine: events are only kept for subscribers.
        let _ = events.send(event);
        return Ok(());
    }
    let ret = obj.remove("return");
    let err = obj.remove("error");
    if ret.is_none() && err.is_none() {
        return Err(QmpError::UnexpectedMessage(snippet(line)));
    }
    let id_value = obj.get("id");
    let unknown =
        || QmpError::UnknownId(id_value.map_or_else(|| "(none)".into(), Value::to_string));
    let id = id_value.and_then(Value::as_u64).ok_or_else(unknown)?;
    match shared.take(id) {
        None => Err(unknown()),
        Some(Slot::Abandoned) => {
            tracing::debug!(id, "discarding the late reply to an abandoned qmp command");
            Ok(())
        }
        Some(Slot::Waiting { command, tx }) => {
            let result = match (err, ret) {
                (Some(e), _) => Err(command_error(command, e)),
                (None, Some(v)) => Ok(v),
                (None, None) => Ok(Value::Null), // ruled out above
            };
            // The caller may have been dropped; the reply is then simply discarded.
            let _ = tx.send(result);
            Ok(())
        }
    }
}

fn command_error(command: String, error: Value) -> QmpError {
    let field = |obj: &Map<String, Value>, key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match &error {
        Value::Object(obj) => QmpError::Command {
            command,
            class: field(obj, "class"),
            desc: field(obj, "desc"),
        },
        other => QmpError::Command {
            command,
            class: String::new(),
            desc: other.to_string(),
        },
    }
}

/// The start of a message, for error texts.
pub(crate) fn snippet(line: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]).into_owned();
    if line.len() > MAX {
        format!("{text}…")
    } else {
        text
    }
}
