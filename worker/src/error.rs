//! The worker's errors. Public functions return [`WorkerError`], which names the source,
//! range or chunk involved; the messages are what an operator sees.

use bora_core::blockmap::BlockMapError;
use bora_core::chunk::ChunkError;
use bora_core::store::StoreError;

use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("allocation map: {0}")]
    BlockMap(#[from] BlockMapError),
    #[error("chunk store: {0}")]
    Store(#[from] StoreError),
    #[error("encoding a chunk: {0}")]
    Chunk(#[from] ChunkError),
    #[error("{0}: an incremental backup needs a dirty bitmap, the source has none")]
    NoChangedBlocks(String),
    #[error("internal error: {0}")]
    Internal(String),
}
