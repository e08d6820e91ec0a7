//! The worker: agentless sources (image files, NBD), the backup pipeline and the restore
//! data path.

pub mod cluster;
pub mod error;
pub mod files;
pub mod nbd;
pub mod pipeline;
pub mod qemu;
pub mod qmp;
pub mod restore;
pub mod serve;
pub mod snapshot_reader;
pub mod source;

pub use error::WorkerError;
