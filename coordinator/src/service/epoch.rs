//! Lease numbers on the wire. The lease table numbers leases from 1 each time it is made,
//! so after a restart a worker still holding "lease 5" of the previous run must not be
//! taken for the holder of the new run's lease 5 (its result would land in another
//! range). Every start bumps an epoch saved in the data directory; the wire number is
//! the epoch in the top 24 bits and the table's number in the low 40. A number from
//! another epoch is a lease of an earlier run: ended.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ServiceError;
use crate::fsutil::write_atomic;
use crate::lease::LeaseId;

const FILE: &str = "epoch.json";
const FORMAT: u32 = 1;
const TABLE_BITS: u32 = 40;
const TABLE_MASK: u64 = (1 << TABLE_BITS) - 1;
/// Epochs run 1..=MAX_EPOCH and then start over at 1 (16 million restarts later).
const MAX_EPOCH: u64 = (1 << (64 - TABLE_BITS)) - 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Epoch(u64);

impl Epoch {
    /// The epoch of this start: one past the saved one, saved before it is used.
    pub(super) fn next(data_dir: &Path) -> Result<Epoch, ServiceError> {
        let path = data_dir.join(FILE);
        let state = |reason: String| ServiceError::State {
            path: path.clone(),
            reason,
        };
        let last = match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: Saved = serde_json::from_slice(&bytes)
                    .map_err(|e| state(format!("unreadable: {e}")))?;
                if saved.format != FORMAT {
                    return Err(state(format!(
                        "format version {} is not supported (this build reads {FORMAT})",
                        saved.format
                    )));
                }
                saved.epoch
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(state(e.to_string())),
        };
        let epoch = if last >= MAX_EPOCH { 1 } else { last + 1 };
        let text = serde_json::to_vec(&Saved {
            format: FORMAT,
            epoch,
        })
        .map_err(|e| state(e.to_string()))?;
        write_atomic(data_dir, FILE, &text).map_err(|e| state(e.to_string()))?;
        Ok(Epoch(epoch))
    }

    /// The wire number of `lease`.
    pub(super) fn wire(self, lease: LeaseId) -> u64 {
        (self.0 << TABLE_BITS) | (lease.0 & TABLE_MASK)
    }

    /// The table's lease of a wire number; `None` for a lease of another epoch.
    pub(super) fn local(self, wire: u64) -> Option<LeaseId> {
        (wire >> TABLE_BITS == self.0).then_some(LeaseId(wire & TABLE_MASK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_has_a_new_epoch_and_old_numbers_are_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let a = Epoch::next(dir.path()).unwrap();
        let b = Epoch::next(dir.path()).unwrap();
        assert_ne!(a, b);
        let w = a.wire(LeaseId(5));
        assert_eq!(a.local(w), Some(LeaseId(5)));
        assert_eq!(b.local(w), None);
        assert_eq!(b.local(b.wire(LeaseId(5))), Some(LeaseId(5)));
    }
}
