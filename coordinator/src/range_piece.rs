//! A range's result as content-addressed pieces in the chunk store: the leader stores the
//! chunk entries a worker reported before it proposes `AcceptRange`, and the replicated
//! catalog keeps only the pieces' digests. A leader that takes a job over loads the
//! entries of the ranges done before from here, so a backup survives a leader change
//! without the log growing with every chunk.
//!
//! Format (little-endian): the magic `BORARNG1`, the number of entries (u64), then per
//! entry the chunk number (u64), a flag (0: all zeros, 1: a digest follows) and the
//! digest (32 bytes). Pieces hold at most [`MAX_ENTRIES`] entries each.

use bora_core::Digest;
use bora_core::chunk::{self, DEFAULT_ZSTD_LEVEL};
use bora_core::store::{ChunkStore, StoreError};

const MAGIC: &[u8; 8] = b"BORARNG1";
/// Entries per piece: about 1 MiB of entries at most.
pub const MAX_ENTRIES: usize = 25_000;

/// Why a range's pieces could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RangePieceError {
    #[error("storing a range's result: {0}")]
    Put(#[source] StoreError),
    #[error("range result piece {digest}: {source}")]
    Read {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("range result piece {digest} is malformed: {reason}")]
    Malformed { digest: Digest, reason: String },
    #[error("encoding a range's result: {0}")]
    Encode(#[from] chunk::ChunkError),
}

/// One chunk of a range: its number and digest (`None`: all zeros).
pub type Entry = (usize, Option<Digest>);

/// The pieces of `entries`, in order (at least one, even for no entries).
pub fn encode(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut groups = entries.chunks(MAX_ENTRIES);
    let first = groups.next().unwrap_or(&[]);
    for group in std::iter::once(first).chain(groups) {
        let mut b = Vec::with_capacity(16 + group.len() * 41);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(group.len() as u64).to_le_bytes());
        for (chunk, digest) in group {
            b.extend_from_slice(&(*chunk as u64).to_le_bytes());
            match digest {
                Some(d) => {
                    b.push(1);
                    b.extend_from_slice(&d.0);
                }
                None => b.push(0),
            }
        }
        out.push(b);
    }
    out
}

/// The entries of one piece.
pub fn decode(digest: Digest, piece: &[u8]) -> Result<Vec<Entry>, RangePieceError> {
    let bad = |reason: &str| RangePieceError::Malformed {
        digest,
        reason: reason.into(),
    };
    let rest = piece.strip_prefix(MAGIC).ok_or_else(|| bad("no magic"))?;
    let (count, mut rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
    let count = u64::from_le_bytes(count.try_into().map_err(|_| bad("truncated"))?);
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_ENTRIES)
        .ok_or_else(|| bad("too many entries"))?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let (chunk, r) = rest.split_at_checked(9).ok_or_else(|| bad("truncated"))?;
        let (number, flag) = chunk.split_at(8);
        let number = u64::from_le_bytes(number.try_into().map_err(|_| bad("truncated"))?);
        let number = usize::try_from(number).map_err(|_| bad("chunk number too large"))?;
        rest = r;
        let digest = match flag {
            [0] => None,
            [1] => {
                let (d, r) = rest.split_at_checked(32).ok_or_else(|| bad("truncated"))?;
                rest = r;
                Some(Digest(d.try_into().map_err(|_| bad("truncated"))?))
            }
            _ => return Err(bad("bad entry flag")),
        };
        entries.push((number, digest));
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(entries)
}

/// Stores `entries` (only pieces the store lacks are written) and returns the pieces'
/// digests.
pub async fn store(
    store: &dyn ChunkStore,
    entries: &[Entry],
) -> Result<Vec<Digest>, RangePieceError> {
    let pieces = encode(entries);
    let digests: Vec<Digest> = pieces.iter().map(|p| Digest::of(p)).collect();
    let missing = store
        .missing(&digests)
        .await
        .map_err(RangePieceError::Put)?;
    let mut new = Vec::new();
    for ((piece, digest), missing) in pieces.iter().zip(&digests).zip(missing) {
        if missing {
            new.push(chunk::encode_with_digest(
                *digest,
                piece,
                DEFAULT_ZSTD_LEVEL,
            )?);
        }
    }
    if !new.is_empty() {
        store.put(new).await.map_err(RangePieceError::Put)?;
    }
    Ok(digests)
}

/// Loads the entries of a range from its pieces (each verified against its digest by the
/// store).
pub async fn load(
    store: &dyn ChunkStore,
    pieces: &[Digest],
) -> Result<Vec<Entry>, RangePieceError> {
    let mut entries = Vec::new();
    for digest in pieces {
        let data = store
            .read(digest)
            .await
            .map_err(|source| RangePieceError::Read {
                digest: *digest,
                source,
            })?;
        entries.extend(decode(*digest, &data)?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::store::memory::MemoryChunkStore;

    #[tokio::test]
    async fn entries_round_trip_through_the_store_in_several_pieces() {
        let entries: Vec<Entry> = (0..MAX_ENTRIES + 7)
            .map(|i| (i + 100, (i % 3 != 0).then(|| Digest::of(&i.to_le_bytes()))))
            .collect();
        let s = MemoryChunkStore::default();
        let pieces = store(&s, &entries).await.unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(load(&s, &pieces).await.unwrap(), entries);
        // No entries (an incremental range with no change) is one empty piece.
        let none = store(&s, &[]).await.unwrap();
        assert_eq!(none.len(), 1);
        assert!(load(&s, &none).await.unwrap().is_empty());
    }

    #[test]
    fn malformed_pieces_are_refused() {
        let d = Digest::of(b"x");
        let good = encode(&[(1, Some(d)), (2, None)]).remove(0);
        assert_eq!(decode(d, &good).unwrap().len(), 2);
        for bad in [
            &good[..good.len() - 1],
            &good[1..],
            &[good.as_slice(), &[0]].concat()[..],
        ] {
            assert!(decode(d, bad).is_err());
        }
        let mut flag = good.clone();
        flag[16 + 8] = 7;
        let e = decode(d, &flag).unwrap_err();
        assert!(e.to_string().contains("flag"), "{e}");
    }
}
