//! Bora's storage node: a deduplicating chunk store.
//!
//! Chunk records (bora-core's chunk encoding) are appended into pack objects on a
//! [`backend::PackBackend`] (object_store: local filesystem by default, S3 for scale) and
//! indexed by digest in RocksDB ([`index::RocksIndex`]). Data is durable before it is indexed,
//! so an index entry always points at bytes that were on stable storage when it was written.
//!
//! - [`store::LocalChunkStore`] implements [`bora_core::store::ChunkStore`];
//! - [`grpc::StorageService`] serves any `ChunkStore` over gRPC, and
//!   [`grpc::client::GrpcChunkStore`] is a `ChunkStore` on the far side of that service.

pub mod backend;
pub mod error;
pub mod grpc;
pub mod index;
pub mod pack;
pub mod store;

pub use backend::{BackendError, ObjectStoreBackend, PackBackend};
pub use error::StorageError;
pub use grpc::StorageService;
pub use index::{ChunkIndex, ChunkLocation, RocksIndex};
pub use store::LocalChunkStore;
