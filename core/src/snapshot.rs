//! Snapshot metadata: what the catalog records for one backup of one VM.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::index::IndexRef;

pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// A snapshot's id: 1–64 characters of `[0-9a-z-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

/// A string that cannot be a snapshot id.
#[derive(Debug, thiserror::Error)]
#[error("invalid snapshot id {0:?}: expected 1-64 characters of 0-9, a-z and '-'")]
pub struct SnapshotIdError(pub String);

impl SnapshotId {
    /// A fresh random id (16 hex digits).
    pub fn random() -> SnapshotId {
        let mut seed = [0u8; 8];
        // Unique enough without another dependency: BLAKE3 of time, pid and a counter;
        // the catalog refuses a duplicate id anyway.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = blake3::hash(format!("{now}-{}-{n}", std::process::id()).as_bytes());
        seed.copy_from_slice(&h.as_bytes()[..8]);
        SnapshotId(hex::encode(seed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = SnapshotIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        if ok {
            Ok(SnapshotId(s))
        } else {
            Err(SnapshotIdError(s))
        }
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.0
    }
}

impl FromStr for SnapshotId {
    type Err = SnapshotIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SnapshotId::try_from(s.to_string())
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM or disk name: 1–128 characters, no '/', no control characters, not "." or "..".
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: use 1-128 characters without '/' or control characters"
        ))
    }
}

/// Counters of one disk's backup, kept with the snapshot for reporting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub chunks_new: u64,
    pub chunks_reused: u64,
    pub chunks_zero: u64,
    /// Chunks not read because the dirty bitmap says they did not change (incremental).
    #[serde(default)]
    pub chunks_clean: u64,
}

impl DiskStats {
    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &DiskStats) {
        self.bytes_read += other.bytes_read;
        self.bytes_uploaded += other.bytes_uploaded;
        self.chunks_new += other.chunks_new;
        self.chunks_reused += other.chunks_reused;
        self.chunks_zero += other.chunks_zero;
        self.chunks_clean += other.chunks_clean;
    }
}

/// One disk inside a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSnapshot {
    pub disk: String,
    pub size: u64,
    pub index: IndexRef,
    /// Where the data came from (image path or NBD URL), for the operator's information.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub stats: DiskStats,
    /// How the disk was read and which dirty bitmap tracks changes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cbt: Option<CbtRecord>,
}

/// Changed-block tracking of one disk in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CbtRecord {
    /// `"incremental"` (read only what the parent's bitmap marked) or `"full"`.
    pub mode: String,
    /// Why a full read was needed, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The dirty bitmap an incremental read was taken against: the one the parent
    /// snapshot left, marking every write since the parent's point in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The dirty bitmap that records changes made after this snapshot's point in time
    /// (the next incremental's base), e.g. `bora-<snapshot id>`; none when the source
    /// has no changed-block tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
}

/// A committed snapshot of one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Format version of this record.
    pub format: u32,
    pub id: SnapshotId,
    pub vm: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub parent: Option<SnapshotId>,
    pub disks: Vec<DiskSnapshot>,
}

impl SnapshotMeta {
    pub fn disk(&self, name: &str) -> Option<&DiskSnapshot> {
        self.disks.iter().find(|d| d.disk == name)
    }
}

/// The current time as RFC 3339 UTC with whole seconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate() {
        assert!("abc-123".parse::<SnapshotId>().is_ok());
        assert!("".parse::<SnapshotId>().is_err());
        assert!("ABC".parse::<SnapshotId>().is_err());
        assert!("a/b".parse::<SnapshotId>().is_err());
        let a = SnapshotId::random();
        assert_eq!(a.as_str().len(), 16);
    }

    #[test]
    fn names_validate() {
        assert!(check_name("vm", "web-01").is_ok());
        assert!(check_name("vm", "../etc").is_err());
        assert!(check_name("vm", "..").is_err());
        assert!(check_name("vm", "").is_err());
    }

    #[test]
    fn time_is_rfc3339() {
        let t = now_rfc3339();
        assert!(
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).is_ok(),
            "{t}"
        );
    }
}
