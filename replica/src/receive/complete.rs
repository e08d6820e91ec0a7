//! Whether a snapshot is complete on a site: every index piece of every disk, and every
//! chunk those indexes list, is in the site's chunk store.

use bora_core::digest::Digest;
use bora_core::index_store::load_index;
use bora_core::snapshot::SnapshotMeta;
use bora_core::store::ChunkStore;

use crate::error::ReceiveError;

/// Digests asked about at once.
const BATCH: usize = 4096;

/// `(missing count, first missing)` of `digests` in `store`.
async fn count_missing(
    store: &dyn ChunkStore,
    digests: &[Digest],
) -> Result<(u64, Option<Digest>), ReceiveError> {
    let mut n = 0u64;
    let mut first = None;
    for batch in digests.chunks(BATCH) {
        let flags = store.missing(batch).await?;
        for (d, m) in batch.iter().zip(flags) {
            if m {
                n += 1;
                first.get_or_insert(*d);
            }
        }
    }
    Ok((n, first))
}

/// Ok if `meta` can be restored from `store` alone.
pub(super) async fn check(store: &dyn ChunkStore, meta: &SnapshotMeta) -> Result<(), ReceiveError> {
    let incomplete = |missing, first| ReceiveError::Incomplete {
        id: meta.id.to_string(),
        vm: meta.vm.clone(),
        missing,
        first,
    };
    for disk in &meta.disks {
        if let (n, Some(first)) = count_missing(store, &disk.index.pieces).await? {
            return Err(incomplete(n, first));
        }
        let index = load_index(store, &disk.index)
            .await
            .map_err(|source| ReceiveError::Index {
                id: meta.id.to_string(),
                source,
            })?;
        let mut digests: Vec<Digest> = index.stored_digests().map(|(_, d)| d).collect();
        digests.sort_unstable();
        digests.dedup();
        if let (n, Some(first)) = count_missing(store, &digests).await? {
            return Err(incomplete(n, first));
        }
    }
    Ok(())
}
