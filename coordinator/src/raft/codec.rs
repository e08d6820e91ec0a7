//! How the replicated catalog encodes what it persists and sends: one format byte, then
//! JSON. Used for Raft log entries and the state-machine snapshot in RocksDB, and for the
//! payloads of the `Raft` gRPC service. JSON keeps a log entry readable with
//! `ldb`-style tools; the format byte leaves room for a binary encoding later.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The one encoding this build writes and reads.
pub const CODEC_FORMAT: u8 = 1;

/// Why bytes could not be decoded (or a value encoded).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty payload")]
    Empty,
    #[error("encoding format {found} is not supported (this build reads {CODEC_FORMAT})")]
    Format { found: u8 },
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![CODEC_FORMAT];
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != CODEC_FORMAT {
        return Err(CodecError::Format { found: format });
    }
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let bytes = encode(&vec![1u32, 2]).unwrap();
        assert_eq!(bytes[0], CODEC_FORMAT);
        assert_eq!(decode::<Vec<u32>>(&bytes).unwrap(), vec![1, 2]);
        assert!(matches!(decode::<u32>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u32>(&[9, b'1']),
            Err(CodecError::Format { found: 9 })
        ));
        assert!(matches!(
            decode::<u32>(&[1, b'x']),
            Err(CodecError::Json(_))
        ));
    }
}
