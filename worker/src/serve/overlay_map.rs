//! The saved state of a persistent overlay (`bora serve --writable --overlay DIR`), so the
//! writes of a VM running from a backup survive a restart of the server and can be copied
//! back onto a real disk (`bora copy-back`).
//!
//! `DIR/data` is the sparse overlay file (as large as the disk); `DIR/map.json` names the
//! snapshot disk the overlay sits on and lists the written 4 KiB blocks as runs. The map is
//! rewritten atomically after the data file is fsynced (on every NBD FLUSH or FUA write and
//! when the server stops), so a block listed in it is always durable; writes the client
//! never flushed may be lost in a crash, exactly as on a real disk. `DIR/lock` is flock()ed
//! while a process uses the overlay.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::overlay::{BLOCK, Bitmap};

pub(crate) const DATA_FILE: &str = "data";
pub(crate) const MAP_FILE: &str = "map.json";
const LOCK_FILE: &str = "lock";
const VERSION: u32 = 1;

/// Which disk of which snapshot an overlay was written over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayHeader {
    pub vm: String,
    pub disk: String,
    pub snapshot: String,
    pub size: u64,
}

/// `map.json`.
#[derive(Serialize, Deserialize)]
struct MapFile {
    version: u32,
    #[serde(flatten)]
    header: OverlayHeader,
    block: u64,
    /// Written blocks as `[first, end)` runs, ascending.
    written: Vec<[u64; 2]>,
}

/// Why a saved overlay cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OverlayMapError {
    #[error("overlay {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("overlay {} is in use by another bora process", dir.display())]
    Locked { dir: PathBuf },
    #[error("overlay {}: {reason}", dir.display())]
    Invalid { dir: PathBuf, reason: String },
    #[error(
        "overlay {} was written over vm {} disk {} snapshot {}, not vm {} disk {} snapshot {}",
        dir.display(), found.vm, found.disk, found.snapshot, wanted.vm, wanted.disk, wanted.snapshot
    )]
    OtherDisk {
        dir: PathBuf,
        found: Box<OverlayHeader>,
        wanted: Box<OverlayHeader>,
    },
}

/// Takes `DIR/lock` for as long as the returned file lives.
pub(crate) fn lock(dir: &Path) -> Result<File, OverlayMapError> {
    let io = |source| OverlayMapError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(OverlayMapError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Reads `DIR/map.json`, if there is one.
pub(crate) fn load(dir: &Path) -> Result<Option<(OverlayHeader, Bitmap)>, OverlayMapError> {
    let path = dir.join(MAP_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OverlayMapError::Io {
                dir: dir.to_path_buf(),
                source,
            });
        }
    };
    let invalid = |reason: String| OverlayMapError::Invalid {
        dir: dir.to_path_buf(),
        reason,
    };
    let map: MapFile =
        serde_json::from_slice(&text).map_err(|e| invalid(format!("{MAP_FILE}: {e}")))?;
    if map.version != VERSION || map.block != BLOCK {
        return Err(invalid(format!(
            "{MAP_FILE} has version {} and block size {}; this bora reads version {VERSION} with {BLOCK}",
            map.version, map.block
        )));
    }
    let mut bitmap = Bitmap::new(map.header.size);
    let blocks = map.header.size.div_ceil(BLOCK);
    let mut prev_end = 0;
    for [first, end] in map.written {
        if first < prev_end || end <= first || end > blocks {
            return Err(invalid(format!(
                "{MAP_FILE} lists blocks {first}..{end}, out of order or past the disk's {blocks}"
            )));
        }
        bitmap.set_range(first, end);
        prev_end = end;
    }
    Ok(Some((map.header, bitmap)))
}

/// The written runs of `bitmap`.
pub(crate) fn runs(bitmap: &Bitmap) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    let mut b = 0;
    while b < bitmap.blocks() {
        let end = bitmap.run_end(b);
        if bitmap.get(b) {
            out.push([b, end]);
        }
        b = end;
    }
    out
}

/// Writes `DIR/map.json` atomically (the data file must be synced first).
pub(crate) fn save(
    dir: &Path,
    header: &OverlayHeader,
    written: Vec<[u64; 2]>,
) -> std::io::Result<()> {
    let map = MapFile {
        version: VERSION,
        header: header.clone(),
        block: BLOCK,
        written,
    };
    let text = serde_json::to_vec(&map).map_err(std::io::Error::other)?;
    bora_core::fsutil::write_atomic(dir, MAP_FILE, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> OverlayHeader {
        OverlayHeader {
            vm: "vm".into(),
            disk: "d".into(),
            snapshot: "0123456789abcdef".into(),
            size: 100 * BLOCK + 7,
        }
    }

    #[test]
    fn map_round_trips_and_rejects_nonsense() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        let mut bm = Bitmap::new(header().size);
        bm.set_range(3, 9);
        bm.set_range(64, 130);
        bm.set_range(100, 101);
        let r = runs(&bm);
        assert_eq!(r, vec![[3, 9], [64, 101]]);
        save(dir.path(), &header(), r.clone()).expect("save");
        let (h, back) = load(dir.path()).expect("load").expect("some");
        assert_eq!(h, header());
        assert_eq!(runs(&back), r);

        for bad in [
            r#"{"version":1,"vm":"v","disk":"d","snapshot":"s","size":8192,"block":4096,"written":[[0,3]]}"#,
            r#"{"version":1,"vm":"v","disk":"d","snapshot":"s","size":8192,"block":4096,"written":[[1,2],[0,1]]}"#,
            r#"{"version":2,"vm":"v","disk":"d","snapshot":"s","size":8192,"block":4096,"written":[]}"#,
            r#"{"version":1,"vm":"v","disk":"d","snapshot":"s","size":8192,"block":512,"written":[]}"#,
            "not json",
        ] {
            std::fs::write(dir.path().join(MAP_FILE), bad).expect("write");
            assert!(
                matches!(load(dir.path()), Err(OverlayMapError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_locked_overlay_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = lock(dir.path()).expect("lock");
        assert!(matches!(
            lock(dir.path()),
            Err(OverlayMapError::Locked { .. })
        ));
    }
}
