//! The work a coordinator hands a worker, in domain types: back up one block range of a
//! frozen disk and report the digests of its chunks.
//!
//! In the embedded default the coordinator calls the worker through [`RangeWorker`]
//! in-process; in a cluster the same trait is implemented by a gRPC client
//! (`proto/worker.proto`).

use async_trait::async_trait;

use crate::digest::Digest;
use crate::range::ByteRange;
use crate::snapshot::DiskStats;

/// One block range of one disk to back up. The range is aligned to `chunk_size` (its end
/// may be the end of the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeTask {
    pub job: String,
    pub vm: String,
    pub disk: String,
    pub range: ByteRange,
    pub chunk_size: u32,
    /// Read only chunks the source's dirty bitmap marks as changed; the others keep the
    /// parent snapshot's digests. When false every chunk is read and reported.
    pub incremental: bool,
    /// In an incremental: the parent snapshot's digest (`None`: all zeros) of every chunk
    /// of the range, in order. A changed chunk is then rebuilt from the parent's chunk and
    /// only the changed bytes read from the source. Empty in a full backup.
    pub parent: Vec<Option<Digest>>,
}

/// What a worker found in a range: the digest (or zero) of every chunk it read (every
/// chunk of the range in a full backup, the changed ones in an incremental).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    /// `(chunk number, digest)`; `None` means the chunk is all zeros.
    pub entries: Vec<(usize, Option<Digest>)>,
    pub stats: DiskStats,
}

/// Why a range could not be backed up. The message names the VM, disk and range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

/// A worker that backs up block ranges of one frozen disk.
#[async_trait]
pub trait RangeWorker: Send + Sync {
    async fn backup_range(&self, task: RangeTask) -> Result<RangeResult, TaskError>;
}
