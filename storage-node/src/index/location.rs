//! Where a chunk is stored: the value of an index entry.
//!
//! ```text
//! offset size field (integers little-endian)
//!      0    1 entry format version (1)
//!      1   16 pack id
//!     17    8 offset of the record in the pack
//!     25    4 record length (chunk header + payload)
//!     29    4 plaintext length
//!     33    8 when the entry was written, unix seconds (GC's cutoff protects young chunks)
//! ```

use crate::pack::PackId;

pub const LOCATION_FORMAT_VERSION: u8 = 1;
pub const LOCATION_V1_LEN: usize = 41;

const _: () = assert!(LOCATION_V1_LEN == 1 + 16 + 8 + 4 + 4 + 8);

/// Where one chunk's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    pub pack: PackId,
    /// Offset of the record from the start of the pack object.
    pub offset: u64,
    /// Record bytes (chunk header + payload).
    pub length: u32,
    /// Plaintext bytes.
    pub raw_len: u32,
    /// When the chunk was indexed, unix seconds.
    pub created: u64,
}

/// An index value this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum LocationDecodeError {
    #[error("empty index entry")]
    Empty,
    #[error(
        "index entry format version {0} is not supported (this build reads version {LOCATION_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u8),
    #[error("index entry is {0} bytes, expected {LOCATION_V1_LEN}")]
    BadLength(usize),
}

impl ChunkLocation {
    /// The byte range of the record in its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.length)
    }

    /// `pack <id> offset <o>`: how errors name a location.
    pub fn describe(&self) -> String {
        format!("pack {} offset {}", self.pack, self.offset)
    }

    pub fn encode(&self) -> [u8; LOCATION_V1_LEN] {
        let mut out = [0u8; LOCATION_V1_LEN];
        out[0] = LOCATION_FORMAT_VERSION;
        out[1..17].copy_from_slice(&self.pack.0.to_le_bytes());
        out[17..25].copy_from_slice(&self.offset.to_le_bytes());
        out[25..29].copy_from_slice(&self.length.to_le_bytes());
        out[29..33].copy_from_slice(&self.raw_len.to_le_bytes());
        out[33..41].copy_from_slice(&self.created.to_le_bytes());
        out
    }

    pub fn decode(value: &[u8]) -> Result<ChunkLocation, LocationDecodeError> {
        let version = *value.first().ok_or(LocationDecodeError::Empty)?;
        if version != LOCATION_FORMAT_VERSION {
            return Err(LocationDecodeError::UnsupportedVersion(version));
        }
        let v: &[u8; LOCATION_V1_LEN] = value
            .try_into()
            .map_err(|_| LocationDecodeError::BadLength(value.len()))?;
        let le8 = |at: usize| u64::from_le_bytes(slice(v, at));
        let le4 = |at: usize| u32::from_le_bytes(slice(v, at));
        Ok(ChunkLocation {
            pack: PackId(u128::from_le_bytes(slice(v, 1))),
            offset: le8(17),
            length: le4(25),
            raw_len: le4(29),
            created: le8(33),
        })
    }
}

/// `N` bytes of a fixed-size value at `at` (in bounds by construction of the layout).
fn slice<const N: usize>(v: &[u8; LOCATION_V1_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&v[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown() {
        let loc = ChunkLocation {
            pack: PackId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            offset: 6 + (5 << 32),
            length: 4_194_352,
            raw_len: 4_194_304,
            created: 1_760_000_000,
        };
        let bytes = loc.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(ChunkLocation::decode(&bytes).expect("decode"), loc);
        let mut v2 = bytes;
        v2[0] = 2;
        assert!(matches!(
            ChunkLocation::decode(&v2),
            Err(LocationDecodeError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            ChunkLocation::decode(&bytes[..40]),
            Err(LocationDecodeError::BadLength(40))
        ));
        assert!(matches!(
            ChunkLocation::decode(&[]),
            Err(LocationDecodeError::Empty)
        ));
        assert_eq!(loc.range(), loc.offset..loc.offset + 4_194_352);
    }
}
