//! State shared by the callers and the reader task: the commands awaiting replies, by id,
//! and whether the connection is still open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::{oneshot, watch};

use super::error::QmpError;

pub(crate) type ReplyTx = oneshot::Sender<Result<Value, QmpError>>;

/// A command sent (or about to be sent).
pub(crate) enum Slot {
    /// Someone waits for the reply.
    Waiting { command: String, tx: ReplyTx },
    /// The caller gave up (timeout, dropped future); the reply is still expected and is
    /// discarded, so a late answer is not mistaken for a protocol violation.
    Abandoned,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Slot>,
    /// Set once the connection can take no more commands, with the reason.
    closed: Option<Arc<QmpError>>,
    next_id: u64,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Turns true when the connection has failed, to stop the reader task.
    failed: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            state: Mutex::default(),
            failed: watch::Sender::new(false),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a command and returns its id, or why the connection takes no more.
    pub fn register(&self, command: &str, tx: ReplyTx) -> Result<u64, QmpError> {
        let mut st = self.lock();
        if let Some(cause) = &st.closed {
            return Err(QmpError::ConnectionLost(cause.clone()));
        }
        let id = st.next_id;
        st.next_id = st.next_id.wrapping_add(1);
        let command = command.to_owned();
        st.pending.insert(id, Slot::Waiting { command, tx });
        Ok(id)
    }

    /// Forgets a command that was never sent.
    pub fn unregister(&self, id: u64) {
        self.lock().pending.remove(&id);
    }

    /// Marks a sent command whose caller stopped waiting; no-op once it was answered.
    pub fn abandon(&self, id: u64) {
        if let Some(slot) = self.lock().pending.get_mut(&id) {
            *slot = Slot::Abandoned;
        }
    }

    /// Takes the command a reply is for, if any.
    pub fn take(&self, id: u64) -> Option<Slot> {
        self.lock().pending.remove(&id)
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<Arc<QmpError>> {
        self.lock().closed.clone()
    }

    /// Resolves once the connection has failed (see [`Shared::fail_all`]).
    pub async fn wait_failed(&self) {
        let mut rx = self.failed.subscribe();
        // Cannot fail: `self` holds the sender.
        let _ = rx.wait_for(|failed| *failed).await;
    }

    /// Closes the connection, fails every pending command with `cause` and stops the
    /// reader task.
    pub fn fail_all(&self, cause: Arc<QmpError>) {
        let (cause, drained): (Arc<QmpError>, Vec<Slot>) = {
            let mut st = self.lock();
            let cause = st.closed.get_or_insert(cause).clone();
            (cause, st.pending.drain().map(|(_, s)| s).collect())
        };
        for slot in drained {
            if let Slot::Waiting { tx, .. } = slot {
                // The caller may have gone away; nobody is left to tell.
                let _ = tx.send(Err(QmpError::ConnectionLost(cause.clone())));
            }
        }
        self.failed.send_replace(true);
    }
}

/// Guards the sending of one command: if the caller's future is dropped before the command
/// went out, it is forgotten; halfway through writing, the stream is corrupt and the
/// connection is failed; after sending, the reply is expected and will be discarded.
pub(crate) struct SendGuard<'a> {
    shared: &'a Shared,
    id: u64,
    state: SendState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    NotStarted,
    Writing,
    Sent,
}

impl<'a> SendGuard<'a> {
    pub fn new(shared: &'a Shared, id: u64) -> Self {
        SendGuard {
            shared,
            id,
            state: SendState::NotStarted,
        }
    }

    pub fn set(&mut self, state: SendState) {
        self.state = state;
    }
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        match self.state {
            SendState::NotStarted => self.shared.unregister(self.id),
            SendState::Writing => self.shared.fail_all(Arc::new(QmpError::Cancelled)),
            SendState::Sent => self.shared.abandon(self.id),
        }
    }
}
