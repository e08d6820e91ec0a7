//! Where a backup reads a disk from: a point-in-time, read-only view with an allocation map.

use async_trait::async_trait;
use bytes::Bytes;

use bora_core::ByteRange;
use bora_core::blockmap::Extent;

pub mod image;
pub mod nbd;
pub mod qemu_nbd;
pub mod raw;

/// Why a source could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {reason}")]
    Open { path: String, reason: String },
    #[error("{source_name}: reading {len} bytes at offset {offset}: {reason}")]
    Read {
        source_name: String,
        offset: u64,
        len: u64,
        reason: String,
    },
    #[error("{source_name}: allocation map of {range}: {reason}")]
    Map {
        source_name: String,
        range: ByteRange,
        reason: String,
    },
}

/// A frozen, read-only view of one disk.
#[async_trait]
pub trait BlockSource: Send + Sync {
    /// Disk size in bytes.
    fn size(&self) -> u64;

    /// What the operator would call it (a path or URL).
    fn name(&self) -> &str;

    /// The allocation map of `range`: extents that tile it exactly. Holes and zeroed
    /// extents are [`bora_core::blockmap::ExtentKind::Zero`] and are never read.
    async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError>;

    /// Reads exactly `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError>;

    /// Changed-block information: extents tiling `range`, `Data` where the disk changed
    /// since the dirty bitmap the source was opened with started recording, `Zero` where
    /// it did not. `None` when the source has no such information.
    async fn dirty(&self, range: ByteRange) -> Result<Option<Vec<Extent>>, SourceError> {
        let _ = range;
        Ok(None)
    }
}
