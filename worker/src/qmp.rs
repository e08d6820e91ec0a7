//! An async QMP client (QEMU Machine Protocol) and typed wrappers for the block-layer
//! commands Bora drives on a hypervisor: dirty bitmaps, fleecing nodes, backup jobs in a
//! `transaction`, and NBD exports. The same commands work on a running QEMU and on
//! `qemu-storage-daemon`.
//!
//! One connection carries many commands at once: each is tagged with a numeric `id`, written
//! under a mutex on the write half, and a reader task hands every reply to the command with
//! that id and every event to a broadcast channel. The peer is not trusted: lines are capped
//! at [`MAX_LINE`], and anything that is not a well-formed reply or event fails the
//! connection with a typed [`QmpError`]; every pending and later command then fails instead
//! of hanging. Protocol: QEMU's docs/interop/qmp-spec.rst.

mod block;
mod client;
mod error;
mod exports;
mod graph;
mod jobs;
mod line;
mod reader;
mod shared;
mod transaction;

#[cfg(test)]
mod fake_server;
#[cfg(test)]
mod fake_tests;
#[cfg(test)]
mod qsd;
#[cfg(test)]
mod qsd_tests;

pub use block::{BitmapInfo, BlockNode, Disk};
pub use client::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, QmpClient, QmpVersion};
pub use error::QmpError;
pub use exports::{BlockExport, ExportRemoveMode};
pub use jobs::{BlockJob, Job, JobStatus};
pub use transaction::{BackupSync, Transaction};

/// Longest line (one JSON message) accepted from the server; QEMU's largest answers
/// (`query-qmp-schema`, about 120 KiB) stay far below it.
pub const MAX_LINE: usize = 16 << 20;

/// Node names starting with this prefix belong to Bora (fleecing images and their files);
/// they are never reported as disks.
pub const BORA_NODE_PREFIX: &str = "bora-";

/// An asynchronous event from QEMU, e.g. `JOB_STATUS_CHANGE` or `BLOCK_EXPORT_DELETED`.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    /// The event's `data` object, `Null` when it has none.
    pub data: serde_json::Value,
}

impl QmpEvent {
    /// The string member `key` of `data`, if there is one.
    pub fn data_str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(serde_json::Value::as_str)
    }
}
