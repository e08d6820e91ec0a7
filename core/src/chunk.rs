//! The chunk encoding: how one chunk's bytes are stored.
//!
//! ```text
//! offset size field
//!      0    4 magic "BCHK"
//!      4    1 format version (1)
//!      5    1 codec: 0 = stored raw, 1 = zstd
//!      6    2 flags (reserved, 0; encryption will use them)
//!      8    4 raw length (plaintext bytes, little-endian)
//!     12    4 stored length (payload bytes after the header)
//!     16   32 BLAKE3 digest of the plaintext
//!     48    . payload
//! ```
//! The digest in the header lets a pack be scanned to rebuild an index; every decode checks
//! the plaintext against it and against the digest the caller asked for.

use crate::digest::{DIGEST_LEN, Digest};

pub const CHUNK_MAGIC: [u8; 4] = *b"BCHK";
pub const CHUNK_FORMAT_VERSION: u8 = 1;
pub const CHUNK_HEADER_LEN: usize = 48;
/// Upper bound on a chunk's plaintext, so a corrupt header cannot make us allocate gigabytes.
pub const MAX_CHUNK_LEN: usize = 64 << 20;
/// zstd level used for chunk data: level 1 is what PBS uses and keeps up with disks.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

const _: () = assert!(CHUNK_HEADER_LEN == 4 + 1 + 1 + 2 + 4 + 4 + DIGEST_LEN);

/// How a chunk's payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Zstd = 1,
}

/// Why stored chunk bytes could not be turned back into the chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk record is {0} bytes, shorter than its {CHUNK_HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("chunk record has bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error(
        "chunk format version {0} is not supported (this build reads version {CHUNK_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("chunk uses unknown codec {0}")]
    UnknownCodec(u8),
    #[error("chunk uses flags {0:#x} this build does not understand")]
    UnknownFlags(u16),
    #[error("chunk record says {expected} payload bytes but has {actual}")]
    LengthMismatch { expected: usize, actual: usize },
    #[error("chunk claims {0} plaintext bytes, more than the {MAX_CHUNK_LEN} allowed")]
    TooLarge(usize),
    #[error("chunk payload does not decompress: {0}")]
    Decompress(String),
    #[error("digest mismatch: expected {expected}, data hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk is {0} bytes, more than the {MAX_CHUNK_LEN} allowed")]
    InputTooLarge(usize),
    /// A remote storage node found the chunk corrupt; its message says how.
    #[error("reported by the storage node: {0}")]
    Reported(String),
}

/// A chunk ready to store: its digest, plaintext length and encoded record.
#[derive(Clone, Debug)]
pub struct EncodedChunk {
    pub digest: Digest,
    pub raw_len: u32,
    pub codec: Codec,
    /// Header + payload.
    pub record: Vec<u8>,
}

/// Encodes `data` whose digest is already known (the pipeline hashes before it knows
/// whether a chunk is new, and compresses only new ones).
pub fn encode_with_digest(
    digest: Digest,
    data: &[u8],
    level: i32,
) -> Result<EncodedChunk, ChunkError> {
    if data.len() > MAX_CHUNK_LEN {
        return Err(ChunkError::InputTooLarge(data.len()));
    }
    let compressed = zstd::bulk::compress(data, level).ok();
    let (codec, payload): (Codec, &[u8]) = match &compressed {
        Some(c) if c.len() < data.len() => (Codec::Zstd, c),
        _ => (Codec::Raw, data),
    };
    let mut record = Vec::with_capacity(CHUNK_HEADER_LEN + payload.len());
    record.extend_from_slice(&CHUNK_MAGIC);
    record.push(CHUNK_FORMAT_VERSION);
    record.push(codec as u8);
    record.extend_from_slice(&0u16.to_le_bytes());
    record.extend_from_slice(&(data.len() as u32).to_le_bytes());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(digest.as_bytes());
    record.extend_from_slice(payload);
    Ok(EncodedChunk {
        digest,
        raw_len: data.len() as u32,
        codec,
        record,
    })
}

/// Hashes and encodes `data`.
pub fn encode(data: &[u8], level: i32) -> Result<EncodedChunk, ChunkError> {
    encode_with_digest(Digest::of(data), data, level)
}

/// The fixed header of a chunk record, parsed and checked for sanity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub codec: Codec,
    pub raw_len: usize,
    pub stored_len: usize,
    pub digest: Digest,
}

impl ChunkHeader {
    pub fn parse(record: &[u8]) -> Result<ChunkHeader, ChunkError> {
        if record.len() < CHUNK_HEADER_LEN {
            return Err(ChunkError::TooShort(record.len()));
        }
        let magic = [record[0], record[1], record[2], record[3]];
        if magic != CHUNK_MAGIC {
            return Err(ChunkError::BadMagic(magic));
        }
        if record[4] != CHUNK_FORMAT_VERSION {
            return Err(ChunkError::UnsupportedVersion(record[4]));
        }
        let codec = match record[5] {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            other => return Err(ChunkError::UnknownCodec(other)),
        };
        let flags = u16::from_le_bytes([record[6], record[7]]);
        if flags != 0 {
            return Err(ChunkError::UnknownFlags(flags));
        }
        let raw_len = u32::from_le_bytes([record[8], record[9], record[10], record[11]]) as usize;
        let stored_len =
            u32::from_le_bytes([record[12], record[13], record[14], record[15]]) as usize;
        if raw_len > MAX_CHUNK_LEN {
            return Err(ChunkError::TooLarge(raw_len));
        }
        let digest = Digest::from_slice(&record[16..CHUNK_HEADER_LEN])
            .ok_or(ChunkError::TooShort(record.len()))?;
        Ok(ChunkHeader {
            codec,
            raw_len,
            stored_len,
            digest,
        })
    }
}

/// Decodes a chunk record and verifies it: the header must name `expected` and the
/// plaintext must hash to it.
pub fn decode(expected: &Digest, record: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let header = ChunkHeader::parse(record)?;
    if header.digest != *expected {
        return Err(ChunkError::DigestMismatch {
            expected: *expected,
            actual: header.digest,
        });
    }
    let payload = &record[CHUNK_HEADER_LEN..];
    if payload.len() != header.stored_len {
        return Err(ChunkError::LengthMismatch {
            expected: header.stored_len,
            actual: payload.len(),
        });
    }
    let data = match header.codec {
        Codec::Raw => payload.to_vec(),
        Codec::Zstd => zstd::bulk::decompress(payload, header.raw_len)
            .map_err(|e| ChunkError::Decompress(e.to_string()))?,
    };
    if data.len() != header.raw_len {
        return Err(ChunkError::LengthMismatch {
            expected: header.raw_len,
            actual: data.len(),
        });
    }
    let actual = Digest::of(&data);
    if actual != *expected {
        return Err(ChunkError::DigestMismatch {
            expected: *expected,
            actual,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..50_000), repeat in 1usize..4) {
            let data = data.repeat(repeat);
            let enc = encode(&data, DEFAULT_ZSTD_LEVEL).unwrap();
            prop_assert_eq!(enc.digest, Digest::of(&data));
            prop_assert_eq!(decode(&enc.digest, &enc.record).unwrap(), data);
        }

        #[test]
        fn any_flipped_byte_is_detected(data in proptest::collection::vec(any::<u8>(), 1..5_000), pos in any::<usize>(), bit in 0u8..8) {
            let enc = encode(&data, DEFAULT_ZSTD_LEVEL).unwrap();
            let mut record = enc.record.clone();
            let pos = pos % record.len();
            record[pos] ^= 1 << bit;
            prop_assert!(decode(&enc.digest, &record).is_err());
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_random_is_raw() {
        let zeros_ish = b"log line 42: all is well\n".repeat(4000);
        assert_eq!(encode(&zeros_ish, 1).unwrap().codec, Codec::Zstd);
        let mut x = 0x1234_5678_u64;
        let random: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(encode(&random, 1).unwrap().codec, Codec::Raw);
    }

    #[test]
    fn truncated_and_wrong_digest_are_errors() {
        let enc = encode(b"hello world", 1).unwrap();
        assert!(matches!(
            decode(&enc.digest, &enc.record[..10]),
            Err(ChunkError::TooShort(10))
        ));
        assert!(matches!(
            decode(&enc.digest, &enc.record[..enc.record.len() - 1]),
            Err(ChunkError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode(&Digest::of(b"other"), &enc.record),
            Err(ChunkError::DigestMismatch { .. })
        ));
    }
}
