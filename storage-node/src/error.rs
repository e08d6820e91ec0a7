//! Storage node errors.
//!
//! Policy (two tiers): modules keep small error enums of their own ([`BackendError`],
//! [`IndexError`], `PackError`); the store's public functions return [`StorageError`], which
//! names the chunk, pack and offset involved. Other roles see [`StoreError`], the
//! `ChunkStore` contract's error, through the one `From` impl below; the gRPC layer maps
//! `StoreError` to a status in one place (`grpc::to_status`).

use std::path::PathBuf;

use bora_core::chunk::ChunkError;
use bora_core::digest::Digest;
use bora_core::store::StoreError;

use crate::backend::BackendError;
use crate::index::IndexError;

/// Why a storage node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open chunk index at {path}: {source}")]
    OpenIndex {
        path: PathBuf,
        #[source]
        source: IndexError,
    },
    #[error("cannot open pack directory {path}: {source}")]
    OpenPacks {
        path: PathBuf,
        #[source]
        source: BackendError,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chunk index: {0}")]
    Index(#[from] IndexError),
    #[error("pack backend: {0}")]
    Backend(#[from] BackendError),
    #[error("chunk {0} is not in the store")]
    NotFound(Digest),
    #[error("chunk {digest} is indexed at {location} but its pack cannot be read: {source}")]
    PackUnreadable {
        digest: Digest,
        location: String,
        #[source]
        source: BackendError,
    },
    #[error("chunk {digest} failed verification ({location}): {source}")]
    Corrupt {
        digest: Digest,
        location: String,
        #[source]
        source: Box<ChunkError>,
    },
    #[error("chunk {digest} rejected: {reason}")]
    InvalidChunk { digest: Digest, reason: String },
    #[error(
        "chunk {digest} is already stored with a different size ({existing} bytes, new {new} bytes)"
    )]
    SizeConflict {
        digest: Digest,
        existing: u64,
        new: u64,
    },
    #[error("storage node task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StorageError> for StoreError {
    fn from(e: StorageError) -> StoreError {
        match e {
            StorageError::NotFound(digest) => StoreError::NotFound(digest),
            StorageError::Corrupt {
                digest,
                location,
                source,
            } => StoreError::Corrupt {
                digest,
                location,
                source,
            },
            StorageError::SizeConflict {
                digest,
                existing,
                new,
            } => StoreError::SizeConflict {
                digest,
                existing,
                new,
            },
            e @ StorageError::InvalidChunk { .. } => StoreError::Invalid(e.to_string()),
            e @ (StorageError::OpenIndex { .. }
            | StorageError::CreateDir { .. }
            | StorageError::Index(_)) => StoreError::Index(e.to_string()),
            e @ (StorageError::OpenPacks { .. }
            | StorageError::Backend(_)
            | StorageError::PackUnreadable { .. }
            | StorageError::Task(_)) => StoreError::Backend(e.to_string()),
        }
    }
}
