//! The receiving service's errors and their one mapping to a gRPC status.

use bora_core::chunk::ChunkError;
use bora_core::digest::Digest;
use bora_core::index_store::IndexStoreError;
use bora_core::store::StoreError;
use tonic::Status;

/// What a [`crate::receive::Site`] could not do (its catalog or storage unreachable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SiteError(pub String);

/// Why the receiving site refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(
        "chunk {digest} failed verification on arrival: {source}; the batch was refused and nothing of it was stored"
    )]
    BadChunk {
        digest: Digest,
        #[source]
        source: ChunkError,
    },
    #[error(
        "snapshot {id} of vm {vm} is incomplete on this site: {missing} chunk(s) missing, e.g. {first}; nothing was committed"
    )]
    Incomplete {
        id: String,
        vm: String,
        missing: u64,
        first: Digest,
    },
    #[error("the site's chunk store: {0}")]
    Store(#[from] StoreError),
    #[error("loading snapshot {id}'s index on this site: {source}")]
    Index {
        id: String,
        #[source]
        source: IndexStoreError,
    },
    #[error("the site: {0}")]
    Site(#[from] SiteError),
}

/// The one place a receiving error becomes a status.
pub fn to_status(e: ReceiveError) -> Status {
    let msg = e.to_string();
    match e {
        ReceiveError::Invalid(_) | ReceiveError::BadChunk { .. } => Status::invalid_argument(msg),
        ReceiveError::Incomplete { .. } => Status::failed_precondition(msg),
        ReceiveError::Store(StoreError::Invalid(_) | StoreError::SizeConflict { .. }) => {
            Status::invalid_argument(msg)
        }
        ReceiveError::Store(_) | ReceiveError::Site(_) => Status::unavailable(msg),
        ReceiveError::Index { .. } => Status::internal(msg),
    }
}

/// An error and every source under it, as one line: transport errors hide the reason
/// (a refused certificate, a reset connection) several sources down.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}
