//! State shared by the requesters and the reader task: the requests awaiting replies, by
//! cookie, and whether the connection is still open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::error::{Command, NbdError};

/// What a finished request yields.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The command succeeded and carries no data.
    Done,
    /// A read: exactly the requested bytes.
    Data(Bytes),
    /// Block status for the context asked about: `(length, flags)` in order. Checked:
    /// non-empty, no zero length, only the last extent may pass the request end, none
    /// passes the end of the export.
    Extents(Vec<(u32, u32)>),
}

/// A request sent (or about to be sent) and awaiting its reply.
#[derive(Debug)]
pub(crate) struct Pending {
    pub command: Command,
    pub offset: u64,
    pub len: u32,
    /// For block status: the id of the context whose extents the caller wants.
    pub context: Option<u32>,
    pub tx: oneshot::Sender<Result<Reply, NbdError>>,
}

impl Pending {
    pub fn fail(self, cause: &Arc<NbdError>) {
        // The requester may have gone away; nobody is left to tell.
        let _ = self.tx.send(Err(NbdError::ConnectionLost(cause.clone())));
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// Set once the connection can take no more requests, with the reason.
    closed: Option<Arc<NbdError>>,
    next_cookie: u64,
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

    /// Registers a request and returns its cookie, or why the connection takes no more.
    pub fn register(&self, pending: Pending) -> Result<u64, NbdError> {
        let mut st = self.lock();
        if let Some(cause) = &st.closed {
            return Err(NbdError::ConnectionLost(cause.clone()));
        }
        let cookie = st.next_cookie;
        st.next_cookie = st.next_cookie.wrapping_add(1);
        st.pending.insert(cookie, pending);
        Ok(cookie)
    }

    /// Forgets a request that was never sent.
    pub fn unregister(&self, cookie: u64) {
        self.lock().pending.remove(&cookie);
    }

    /// Takes the request a reply is for, if any.
    pub fn take(&self, cookie: u64) -> Option<Pending> {
        self.lock().pending.remove(&cookie)
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<Arc<NbdError>> {
        self.lock().closed.clone()
    }

    /// Stops new requests without failing those in flight (a clean disconnect).
    pub fn close(&self, reason: NbdError) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(Arc::new(reason));
        }
    }

    /// Resolves once the connection has failed (see [`Shared::fail_all`]).
    pub async fn wait_failed(&self) {
        let mut rx = self.failed.subscribe();
        // Cannot fail: `self` holds the sender.
        let _ = rx.wait_for(|failed| *failed).await;
    }

    /// Closes the connection, fails every pending request with `cause` and stops the
    /// reader task (which fails the replies it was assembling).
    pub fn fail_all(&self, cause: Arc<NbdError>) {
        let drained: Vec<Pending> = {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(cause.clone());
            }
            st.pending.drain().map(|(_, p)| p).collect()
        };
        for p in drained {
            p.fail(&cause);
        }
        self.failed.send_replace(true);
    }
}

/// Guards the sending of one request: if the requester's future is dropped before the
/// request went out, the request is forgotten; if it is dropped halfway through writing,
/// the stream is corrupt and the connection is failed.
pub(crate) struct SendGuard<'a> {
    shared: &'a Shared,
    cookie: u64,
    state: SendState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    NotStarted,
    Writing,
    Sent,
}

impl<'a> SendGuard<'a> {
    pub fn new(shared: &'a Shared, cookie: u64) -> Self {
        SendGuard {
            shared,
            cookie,
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
            SendState::NotStarted => self.shared.unregister(self.cookie),
            SendState::Writing => self.shared.fail_all(Arc::new(NbdError::Cancelled)),
            SendState::Sent => {}
        }
    }
}
