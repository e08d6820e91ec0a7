//! Bora's shared domain: digests, the chunk encoding, snapshot indexes and metadata, block
//! maps, byte ranges and the interfaces between roles (chunk store, range worker). Knows
//! nothing of gRPC or of any storage engine.

pub mod blockmap;
pub mod chunk;
pub mod digest;
pub mod fsutil;
pub mod host;
pub mod index;
pub mod index_store;
pub mod job;
pub mod placement;
pub mod progress;
pub mod range;
pub mod retention;
pub mod snapshot;
pub mod store;
pub mod units;

pub use digest::Digest;
pub use range::ByteRange;
