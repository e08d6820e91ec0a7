//! Bora's shared domain: digests, the chunk encoding, snapshot indexes and metadata, block
//! maps and the chunk-store interface. Knows nothing of gRPC or of any storage engine.

pub mod blockmap;
pub mod chunk;
pub mod digest;
pub mod index;
pub mod snapshot;
pub mod store;

pub use digest::Digest;
