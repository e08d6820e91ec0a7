//! Chunk digests: BLAKE3-256 of the chunk's plaintext.
//!
//! The all-zero digest is reserved: the snapshot index uses it to mean "this chunk is all
//! zeros and was never stored". BLAKE3 output of real data is never all zeros in practice
//! (probability 2^-256), and [`Digest::of`] would still be correct if it were: such a
//! chunk would simply be restored as zeros only if its data were zeros.

use std::fmt;
use std::str::FromStr;

/// Length of a digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// The BLAKE3 digest of a chunk's plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; DIGEST_LEN]);

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected 64 hex digits")]
pub struct DigestParseError(pub String);

impl Digest {
    /// The reserved digest that marks an all-zero chunk in an index.
    pub const ZERO: Digest = Digest([0u8; DIGEST_LEN]);

    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// Builds a digest from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        <[u8; DIGEST_LEN]>::try_from(bytes).ok().map(Digest)
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    pub fn is_zero_marker(&self) -> bool {
        self.0 == [0u8; DIGEST_LEN]
    }

    /// The first 8 bytes in hex: enough to name a chunk in a message.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; DIGEST_LEN];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError(s.to_string()))?;
        Ok(Digest(out))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn streaming_hash_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..20_000), split in 0usize..20_000) {
            let split = split.min(data.len());
            let mut h = blake3::Hasher::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            prop_assert_eq!(Digest(*h.finalize().as_bytes()), Digest::of(&data));
        }

        #[test]
        fn hex_round_trip(bytes in any::<[u8; 32]>()) {
            let d = Digest(bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("abc".parse::<Digest>().is_err());
        assert!("zz".repeat(32).parse::<Digest>().is_err());
    }
}
