//! Durable small files (shared with the worker: see `bora_core::fsutil`).

pub use bora_core::fsutil::write_atomic;
