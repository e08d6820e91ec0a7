//! Bora's storage node: a deduplicating chunk store.
//!
//! Chunk records (bora-core's chunk encoding) are appended into pack objects on a
//! [`backend::PackBackend`] (object_store: local filesystem by default, S3 for scale) and
//! indexed by digest in RocksDB ([`index::RocksIndex`]). Data is durable before it is indexed,
//! so an index entry always points at bytes that were on stable storage when it was written.
//!
//! - [`store::LocalChunkStore`] implements [`bora_core::store::ChunkStore`] and
//!   [`node_store::NodeStore`] (listing, stored records, counts);
//! - [`grpc::StorageService`] serves a `NodeStore` over gRPC, and
//!   [`grpc::client::GrpcChunkStore`] is a `ChunkStore` on the far side of that service;
//! - [`config`] and [`service`] run a storage node as its own process;
//! - [`placed::PlacedChunkStore`] is one `ChunkStore` over a cluster's storage nodes
//!   (replicated by rendezvous placement), and [`repair::repair`] copies chunks to the
//!   owners that lack them.

pub mod backend;
pub mod config;
pub mod error;
pub mod grpc;
pub mod index;
pub mod node_store;
pub mod pack;
pub mod placed;
pub mod repair;
pub mod service;
pub mod store;

#[cfg(test)]
mod testing;

pub use backend::{BackendError, ObjectStoreBackend, PackBackend};
pub use config::StorageNodeConfig;
pub use error::StorageError;
pub use grpc::StorageService;
pub use index::{ChunkIndex, ChunkLocation, RocksIndex};
pub use node_store::NodeStore;
pub use placed::PlacedChunkStore;
pub use repair::{RepairReport, repair};
pub use service::{BoundStorageNode, bind};
pub use store::LocalChunkStore;
