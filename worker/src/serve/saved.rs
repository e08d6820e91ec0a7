//! A saved overlay opened for copy-back: the snapshot disk it belongs to, and the blocks
//! written over it, applied on top of the snapshot's chunks as they are restored.

use std::path::Path;

use super::overlay::{BLOCK, Overlay};
use super::overlay_map::{OverlayHeader, OverlayMapError};
use crate::restore::Patch;

/// A saved overlay, locked against a server using it at the same time.
pub struct SavedOverlay {
    overlay: Overlay,
    header: OverlayHeader,
}

impl SavedOverlay {
    /// Opens the overlay saved in `dir` (`bora serve --writable --overlay DIR`).
    pub fn open(dir: &Path) -> Result<SavedOverlay, OverlayMapError> {
        let overlay = Overlay::open_dir(dir, None)?;
        let header = overlay
            .header()
            .cloned()
            .ok_or_else(|| OverlayMapError::Invalid {
                dir: dir.to_path_buf(),
                reason: "not a saved overlay".into(),
            })?;
        Ok(SavedOverlay { overlay, header })
    }

    /// The snapshot disk the overlay was written over.
    pub fn header(&self) -> &OverlayHeader {
        &self.header
    }

    /// Bytes written over the snapshot (whole 4 KiB blocks).
    pub fn bytes_written(&self) -> u64 {
        self.overlay.with_bitmap(|b| b.count()) * BLOCK
    }
}

impl Patch for SavedOverlay {
    fn touches(&self, offset: u64, len: u64) -> bool {
        self.overlay.touches(offset, len)
    }

    fn apply(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.overlay.patch_blocking(offset, buf)
    }
}
