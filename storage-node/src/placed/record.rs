//! Reading one chunk in its stored form from whichever node of its ranking has a good
//! copy: what second-site replication sends, without decompressing and recompressing.

use bora_core::chunk::EncodedChunk;
use bora_core::digest::Digest;
use bora_core::store::StoreError;

use super::{PlacedChunkStore, is_node_failure};

impl PlacedChunkStore {
    /// The stored record of `digest` (verified by the node and again on arrival), from the
    /// first node of its ranking that has a good copy; live nodes first.
    pub async fn read_record(&self, digest: &Digest) -> Result<EncodedChunk, StoreError> {
        let (live, down): (Vec<_>, Vec<_>) = self
            .membership()
            .ranking(digest)
            .into_iter()
            .partition(|n| self.is_live(n));
        let mut said = Vec::new();
        let mut all_not_found = true;
        for node in live.into_iter().chain(down) {
            let r = match self.node(&node) {
                Ok(c) => c.read_record(digest).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(record) => {
                    self.mark_up(&node);
                    return Ok(record);
                }
                Err(e) => {
                    if is_node_failure(&e) {
                        self.mark_down(&node, &e);
                    }
                    all_not_found &= matches!(e, StoreError::NotFound(_));
                    said.push(format!("{node}: {e}"));
                }
            }
        }
        if all_not_found {
            return Err(StoreError::NotFound(*digest));
        }
        Err(StoreError::Backend(format!(
            "the record of chunk {digest} could not be read from any storage node: {}",
            said.join("; ")
        )))
    }
}
