//! Lease numbers on the wire. The lease table numbers leases from 1 each time it is made,
//! which is every time a coordinator becomes the leader or restarts: a worker still
//! holding "lease 5" of an earlier leadership must not be taken for the holder of the new
//! one's lease 5 (its result would land in another range). The wire number is an epoch in
//! the top 24 bits and the table's number in the low 40. The epoch is the leader's Raft
//! term (16 bits; unique to one leader) and this process's start number (8 bits, saved in
//! the data directory: a single coordinator may lead again in the same term after a
//! restart). A number from another epoch is a lease of another leadership: ended.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ServiceError;
use crate::fsutil::write_atomic;
use crate::lease::LeaseId;

const FILE: &str = "epoch.json";
const FORMAT: u32 = 1;
const TABLE_BITS: u32 = 40;
const TABLE_MASK: u64 = (1 << TABLE_BITS) - 1;
const START_BITS: u32 = 8;
const EPOCH_MASK: u64 = (1 << (64 - TABLE_BITS)) - 1;
/// Start numbers run 1..=MAX_START and then start over at 1.
const MAX_START: u64 = (1 << START_BITS) - 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: u32,
    epoch: u64,
}

/// This process's start number (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Start(u64);

impl Start {
    /// The number of this start: one past the saved one, saved before it is used.
    pub(super) fn next(data_dir: &Path) -> Result<Start, ServiceError> {
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
        let epoch = if last >= MAX_START { 1 } else { last + 1 };
        let text = serde_json::to_vec(&Saved {
            format: FORMAT,
            epoch,
        })
        .map_err(|e| state(e.to_string()))?;
        write_atomic(data_dir, FILE, &text).map_err(|e| state(e.to_string()))?;
        Ok(Start(epoch))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Epoch(u64);

impl Epoch {
    /// The epoch of this process's leadership in `term`.
    pub(super) fn of(term: u64, start: Start) -> Epoch {
        Epoch(((term << START_BITS) | (start.0 & MAX_START)) & EPOCH_MASK)
    }

    /// No leadership: every wire number is foreign.
    pub(super) const NONE: Epoch = Epoch(u64::MAX);

    /// The wire number of `lease`.
    pub(super) fn wire(self, lease: LeaseId) -> u64 {
        ((self.0 & EPOCH_MASK) << TABLE_BITS) | (lease.0 & TABLE_MASK)
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
    fn each_leadership_and_start_has_its_own_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = Start::next(dir.path()).unwrap();
        let s2 = Start::next(dir.path()).unwrap();
        assert_ne!(s1, s2);
        let a = Epoch::of(3, s1);
        let w = a.wire(LeaseId(5));
        assert_eq!(a.local(w), Some(LeaseId(5)));
        // Another term, or the same term after a restart: foreign.
        for other in [Epoch::of(4, s1), Epoch::of(3, s2), Epoch::NONE] {
            assert_eq!(other.local(w), None);
        }
        assert_eq!(Epoch::NONE.local(Epoch::NONE.wire(LeaseId(5))), None);
    }
}
