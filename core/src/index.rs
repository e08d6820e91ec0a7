//! The snapshot index of one disk: one digest (or "zero") per fixed-size chunk.
//!
//! Chunks are aligned to disk offsets: chunk `i` covers `[i * chunk_size, min((i+1) *
//! chunk_size, disk_size))`. The index is stored in the chunk store itself, split into
//! pieces of [`PIECE_ENTRIES`] entries; each piece is content-addressed, so consecutive
//! snapshots of a disk share every piece whose chunks did not change. The catalog keeps only
//! the piece digests ([`IndexRef`]).
//!
//! Piece layout (little-endian): magic "BIDX", u16 format version, u16 reserved (0), u32
//! first entry number, u32 entry count, then 32 bytes per entry; the all-zero digest means
//! an all-zero chunk that was never stored.

use serde::{Deserialize, Serialize};

use crate::digest::{DIGEST_LEN, Digest};

pub const INDEX_FORMAT_VERSION: u16 = 1;
pub const PIECE_MAGIC: [u8; 4] = *b"BIDX";
pub const PIECE_HEADER_LEN: usize = 16;
/// Entries per stored index piece: 4096 × 32 bytes = 128 KiB.
pub const PIECE_ENTRIES: usize = 4096;

/// Chunk sizes a repository may use.
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The chunk size of new repositories and of cluster snapshots: chosen by benchmark, see
/// docs/chunk-size.md.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;

/// Why an index could not be built or decoded.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("chunk size {0} is not a power of two between 64 KiB and 16 MiB")]
    BadChunkSize(u32),
    #[error("index piece {piece}: {reason}")]
    BadPiece { piece: usize, reason: String },
    #[error(
        "index has {actual} entries, a {disk_size}-byte disk at chunk size {chunk_size} needs {expected}"
    )]
    WrongLength {
        disk_size: u64,
        chunk_size: u32,
        expected: u64,
        actual: u64,
    },
    #[error("index format version {0} is not supported")]
    UnsupportedVersion(u32),
}

/// Where a disk's index is stored: what the catalog keeps per disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexRef {
    /// Format version of the index pieces.
    pub format: u32,
    pub disk_size: u64,
    pub chunk_size: u32,
    /// Digests of the index pieces, in order.
    pub pieces: Vec<Digest>,
}

/// A fixed-size chunk index of one disk at one point in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskIndex {
    disk_size: u64,
    chunk_size: u32,
    entries: Vec<Digest>,
}

pub fn check_chunk_size(chunk_size: u32) -> Result<(), IndexError> {
    if chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(IndexError::BadChunkSize(chunk_size))
    }
}

/// Number of chunks of a disk.
pub fn chunk_count(disk_size: u64, chunk_size: u32) -> u64 {
    disk_size.div_ceil(u64::from(chunk_size))
}

impl DiskIndex {
    /// An index of a disk that is all zeros.
    pub fn zeroed(disk_size: u64, chunk_size: u32) -> Result<DiskIndex, IndexError> {
        check_chunk_size(chunk_size)?;
        let n = usize::try_from(chunk_count(disk_size, chunk_size)).map_err(|_| {
            IndexError::WrongLength {
                disk_size,
                chunk_size,
                expected: chunk_count(disk_size, chunk_size),
                actual: 0,
            }
        })?;
        Ok(DiskIndex {
            disk_size,
            chunk_size,
            entries: vec![Digest::ZERO; n],
        })
    }

    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Disk offset and length of chunk `i`.
    pub fn chunk_extent(&self, i: usize) -> (u64, u32) {
        let offset = i as u64 * u64::from(self.chunk_size);
        let len = (self.disk_size - offset).min(u64::from(self.chunk_size)) as u32;
        (offset, len)
    }

    /// The digest of chunk `i`, or `None` when the chunk is all zeros.
    pub fn get(&self, i: usize) -> Option<Digest> {
        self.entries.get(i).copied().filter(|d| !d.is_zero_marker())
    }

    /// Sets chunk `i` (`None`: all zeros). Out-of-range indexes are ignored.
    pub fn set(&mut self, i: usize, digest: Option<Digest>) {
        if let Some(e) = self.entries.get_mut(i) {
            *e = digest.unwrap_or(Digest::ZERO);
        }
    }

    /// Digests of every stored (non-zero) chunk, with repeats.
    pub fn stored_digests(&self) -> impl Iterator<Item = (usize, Digest)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_zero_marker())
            .map(|(i, d)| (i, *d))
    }

    /// A new index for a disk of `disk_size` that starts from `self` (the parent) and
    /// takes `changes` on top. When the size changed, chunks past the end are dropped,
    /// new chunks start as zeros, and a parent's last chunk whose length changed is
    /// reset to zero: the caller must read it again (see [`DiskIndex::stale_tail`]).
    pub fn overlay(
        &self,
        disk_size: u64,
        changes: impl IntoIterator<Item = (usize, Option<Digest>)>,
    ) -> Result<DiskIndex, IndexError> {
        let mut next = DiskIndex::zeroed(disk_size, self.chunk_size)?;
        let keep = self.entries.len().min(next.entries.len());
        next.entries[..keep].copy_from_slice(&self.entries[..keep]);
        if let Some(i) = self.stale_tail(disk_size) {
            next.set(i, None);
        }
        for (i, d) in changes {
            next.set(i, d);
        }
        Ok(next)
    }

    /// The parent chunk that cannot be reused when the disk becomes `disk_size` long: its
    /// last chunk, when that chunk's length differs at the new size.
    pub fn stale_tail(&self, disk_size: u64) -> Option<usize> {
        if disk_size == self.disk_size || self.entries.is_empty() {
            return None;
        }
        let last = self.entries.len() - 1;
        let (offset, len) = self.chunk_extent(last);
        let new_len = disk_size
            .saturating_sub(offset)
            .min(u64::from(self.chunk_size));
        (new_len != u64::from(len) && new_len > 0).then_some(last)
    }

    /// Serialises the index as pieces (each at most [`PIECE_ENTRIES`] entries).
    pub fn to_pieces(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut first = 0usize;
        for part in self.entries.chunks(PIECE_ENTRIES) {
            let mut p = Vec::with_capacity(PIECE_HEADER_LEN + part.len() * DIGEST_LEN);
            p.extend_from_slice(&PIECE_MAGIC);
            p.extend_from_slice(&INDEX_FORMAT_VERSION.to_le_bytes());
            p.extend_from_slice(&0u16.to_le_bytes());
            p.extend_from_slice(&(first as u32).to_le_bytes());
            p.extend_from_slice(&(part.len() as u32).to_le_bytes());
            for d in part {
                p.extend_from_slice(d.as_bytes());
            }
            first += part.len();
            out.push(p);
        }
        out
    }

    /// Rebuilds an index from its pieces, checking every header and the total length.
    pub fn from_pieces(
        disk_size: u64,
        chunk_size: u32,
        pieces: &[impl AsRef<[u8]>],
    ) -> Result<DiskIndex, IndexError> {
        check_chunk_size(chunk_size)?;
        let expected = chunk_count(disk_size, chunk_size);
        let mut entries = Vec::new();
        for (n, piece) in pieces.iter().enumerate() {
            let p = piece.as_ref();
            let bad = |reason: String| IndexError::BadPiece { piece: n, reason };
            if p.len() < PIECE_HEADER_LEN {
                return Err(bad(format!("{} bytes, shorter than its header", p.len())));
            }
            if p[..4] != PIECE_MAGIC {
                return Err(bad("bad magic".into()));
            }
            let version = u16::from_le_bytes([p[4], p[5]]);
            if version != INDEX_FORMAT_VERSION {
                return Err(bad(format!("format version {version} is not supported")));
            }
            let first = u32::from_le_bytes([p[8], p[9], p[10], p[11]]) as usize;
            let count = u32::from_le_bytes([p[12], p[13], p[14], p[15]]) as usize;
            if first != entries.len() {
                return Err(bad(format!(
                    "starts at entry {first}, expected {}",
                    entries.len()
                )));
            }
            let body = &p[PIECE_HEADER_LEN..];
            if body.len() != count * DIGEST_LEN {
                return Err(bad(format!(
                    "{} body bytes for {count} entries",
                    body.len()
                )));
            }
            if entries.len() as u64 + count as u64 > expected {
                return Err(IndexError::WrongLength {
                    disk_size,
                    chunk_size,
                    expected,
                    actual: entries.len() as u64 + count as u64,
                });
            }
            entries.extend(body.chunks_exact(DIGEST_LEN).filter_map(Digest::from_slice));
        }
        if entries.len() as u64 != expected {
            return Err(IndexError::WrongLength {
                disk_size,
                chunk_size,
                expected,
                actual: entries.len() as u64,
            });
        }
        Ok(DiskIndex {
            disk_size,
            chunk_size,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CS: u32 = 64 << 10;

    fn digest(n: u64) -> Digest {
        Digest::of(&n.to_le_bytes())
    }

    proptest! {
        #[test]
        fn pieces_round_trip(size in 0u64..(CS as u64 * 9000), seed in any::<u64>()) {
            let mut idx = DiskIndex::zeroed(size, CS).unwrap();
            for i in 0..idx.len() {
                if (seed.wrapping_mul(i as u64 + 1)) % 3 != 0 {
                    idx.set(i, Some(digest(i as u64 ^ seed)));
                }
            }
            let pieces = idx.to_pieces();
            prop_assert_eq!(DiskIndex::from_pieces(size, CS, &pieces).unwrap(), idx);
        }

        /// Overlay = parent everywhere except the changed chunks (and a stale tail).
        #[test]
        fn overlay_keeps_parent_and_applies_changes(
            old_size in 0u64..(CS as u64 * 300),
            new_size in 0u64..(CS as u64 * 300),
            changes in proptest::collection::vec((0usize..320, proptest::option::of(any::<u64>())), 0..40),
        ) {
            let mut parent = DiskIndex::zeroed(old_size, CS).unwrap();
            for i in 0..parent.len() {
                parent.set(i, Some(digest(i as u64)));
            }
            let changes: Vec<(usize, Option<Digest>)> =
                changes.into_iter().map(|(i, d)| (i, d.map(digest))).collect();
            let next = parent.overlay(new_size, changes.clone()).unwrap();
            prop_assert_eq!(next.len() as u64, chunk_count(new_size, CS));
            let stale = parent.stale_tail(new_size);
            for i in 0..next.len() {
                let changed = changes.iter().rev().find(|(c, _)| *c == i).map(|(_, d)| *d);
                let expected = match changed {
                    Some(d) => d,
                    None if Some(i) == stale => None,
                    None if i < parent.len() => parent.get(i),
                    None => None,
                };
                prop_assert_eq!(next.get(i), expected);
            }
        }
    }

    #[test]
    fn rejects_bad_chunk_sizes_and_pieces() {
        assert!(DiskIndex::zeroed(10, 1000).is_err());
        assert!(DiskIndex::zeroed(10, 32 << 20).is_err());
        let idx = DiskIndex::zeroed(CS as u64 * 3, CS).unwrap();
        let mut pieces = idx.to_pieces();
        assert!(DiskIndex::from_pieces(CS as u64 * 4, CS, &pieces).is_err());
        pieces[0][0] = b'X';
        assert!(DiskIndex::from_pieces(CS as u64 * 3, CS, &pieces).is_err());
    }

    #[test]
    fn last_chunk_is_short() {
        let idx = DiskIndex::zeroed(CS as u64 * 2 + 10, CS).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.chunk_extent(2), (CS as u64 * 2, 10));
    }
}
