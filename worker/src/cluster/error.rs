//! Why a cluster worker stops. Failures of one range are not here: they are reported to
//! the coordinator (`FailRange`) and the worker goes on.

use super::config::WorkerConfigError;

/// The worker cannot run (fatal); a graceful shutdown is not an error.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    ConfigFile(#[from] WorkerConfigError),
    #[error("worker config: {0}")]
    Config(String),
    #[error("coordinator {addr}: {reason}")]
    Endpoint { addr: String, reason: String },
    #[error("coordinator {addr} refused worker {worker}: {message}")]
    Refused {
        addr: String,
        worker: String,
        message: String,
    },
    #[error("scratch directory {path}: {source}")]
    Scratch {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
