//! Storing a disk index in the chunk store itself, as content-addressed pieces.

use crate::chunk::{self, DEFAULT_ZSTD_LEVEL};
use crate::digest::Digest;
use crate::index::{DiskIndex, INDEX_FORMAT_VERSION, IndexError, IndexRef};
use crate::store::{ChunkStore, StoreError};

/// Why an index could not be stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IndexStoreError {
    #[error("index piece {digest}: {source}")]
    Store {
        digest: Digest,
        #[source]
        source: StoreError,
    },
    #[error("storing the index: {0}")]
    Put(#[source] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("encoding an index piece: {0}")]
    Encode(#[from] chunk::ChunkError),
}

/// Stores `pieces` as content-addressed chunks (only those the store lacks are written)
/// and returns their digests, in order. Shared by everything the catalog references by
/// digest (index pieces, the coordinator's range results).
pub async fn put_pieces(
    store: &dyn ChunkStore,
    pieces: &[impl AsRef<[u8]>],
) -> Result<Vec<Digest>, IndexStoreError> {
    let digests: Vec<Digest> = pieces.iter().map(|p| Digest::of(p.as_ref())).collect();
    let missing = store
        .missing(&digests)
        .await
        .map_err(IndexStoreError::Put)?;
    let mut new = Vec::new();
    for ((piece, digest), missing) in pieces.iter().zip(&digests).zip(missing) {
        if missing {
            new.push(chunk::encode_with_digest(
                *digest,
                piece.as_ref(),
                DEFAULT_ZSTD_LEVEL,
            )?);
        }
    }
    if !new.is_empty() {
        store.put(new).await.map_err(IndexStoreError::Put)?;
    }
    Ok(digests)
}

/// Reads the pieces `digests`, in order (each verified against its digest by the store).
pub async fn read_pieces(
    store: &dyn ChunkStore,
    digests: &[Digest],
) -> Result<Vec<bytes::Bytes>, IndexStoreError> {
    let mut pieces = Vec::with_capacity(digests.len());
    for digest in digests {
        let data = store
            .read(digest)
            .await
            .map_err(|source| IndexStoreError::Store {
                digest: *digest,
                source,
            })?;
        pieces.push(data);
    }
    Ok(pieces)
}

/// Stores `index` as pieces (only pieces the store lacks are written) and returns the
/// reference the catalog keeps.
pub async fn store_index(
    store: &dyn ChunkStore,
    index: &DiskIndex,
) -> Result<IndexRef, IndexStoreError> {
    let digests = put_pieces(store, &index.to_pieces()).await?;
    Ok(IndexRef {
        format: u32::from(INDEX_FORMAT_VERSION),
        disk_size: index.disk_size(),
        chunk_size: index.chunk_size(),
        pieces: digests,
    })
}

/// Loads and verifies an index from its pieces.
pub async fn load_index(
    store: &dyn ChunkStore,
    r: &IndexRef,
) -> Result<DiskIndex, IndexStoreError> {
    if r.format != u32::from(INDEX_FORMAT_VERSION) {
        return Err(IndexError::UnsupportedVersion(r.format).into());
    }
    let pieces = read_pieces(store, &r.pieces).await?;
    Ok(DiskIndex::from_pieces(r.disk_size, r.chunk_size, &pieces)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryChunkStore;

    /// A minimal executor: the memory store never awaits anything that pends.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Noop;
        impl Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = Waker::from(std::sync::Arc::new(Noop));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn index_round_trips_and_shares_unchanged_pieces() {
        let store = MemoryChunkStore::default();
        let cs = 64 << 10;
        let mut idx = DiskIndex::zeroed(cs as u64 * 10_000, cs).unwrap();
        for i in (0..idx.len()).step_by(3) {
            idx.set(i, Some(Digest::of(&i.to_le_bytes())));
        }
        let r1 = block_on(store_index(&store, &idx)).unwrap();
        assert_eq!(r1.pieces.len(), 3);
        assert_eq!(block_on(load_index(&store, &r1)).unwrap(), idx);
        let before = store.len();
        let next = idx.overlay(idx.disk_size(), [(6, None)]).unwrap();
        let r2 = block_on(store_index(&store, &next)).unwrap();
        assert_eq!(store.len(), before + 1, "only the changed piece is new");
        assert_eq!(r1.pieces[1..], r2.pieces[1..]);
    }

    #[test]
    fn corrupt_piece_is_an_error() {
        let store = MemoryChunkStore::default();
        let idx = DiskIndex::zeroed(1 << 20, 64 << 10).unwrap();
        let r = block_on(store_index(&store, &idx)).unwrap();
        store.tamper(&r.pieces[0], |rec| {
            let n = rec.len() - 1;
            rec[n] ^= 1;
        });
        assert!(block_on(load_index(&store, &r)).is_err());
    }
}
