//! How members reach each other: the `Raft` gRPC service and its client ([`grpc`]), and
//! an in-process network for tests that loses, delays and partitions messages
//! ([`memory`]). Both carry the library's messages encoded by [`super::codec`].

pub mod grpc;
pub mod memory;

use super::NodeId;
use super::codec::CodecError;

/// Why a message did not arrive.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("message from {from} to {to} was lost")]
    Lost { from: NodeId, to: NodeId },
    #[error("member {0} is down")]
    Down(NodeId),
    #[error("member {to} at {addr}: {reason}")]
    Transport {
        to: NodeId,
        addr: String,
        reason: String,
    },
    #[error("encoding a raft message: {0}")]
    Codec(#[from] CodecError),
}
