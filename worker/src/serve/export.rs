//! What one export serves: a snapshot's disk, optionally under a copy-on-write overlay.
//! A range of the disk is described as runs of [`Source`]s (pure, from the index and the
//! overlay bitmap), from which READ replies and `base:allocation` extents are built.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use bora_core::index::DiskIndex;

use super::ServeError;
use super::overlay::{BLOCK, Bitmap, Overlay, OverlayError};
use super::overlay_map::OverlayHeader;
use super::wire;
use crate::nbd::{STATE_HOLE, STATE_ZERO};
use crate::snapshot_reader::{ReadError, SnapshotReader};

/// Where the bytes of a run come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// An all-zero chunk of the snapshot, not overwritten: a hole.
    Zero,
    /// Data of the snapshot.
    Snapshot,
    /// Blocks written through the export.
    Overlay,
}

impl Source {
    /// The `base:allocation` flags of a run.
    pub fn allocation_flags(self) -> u32 {
        match self {
            Source::Zero => STATE_HOLE | STATE_ZERO,
            Source::Snapshot | Source::Overlay => 0,
        }
    }
}

/// A run of the disk: `len` bytes from `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub len: u64,
    pub source: Source,
}

/// Splits `[offset, offset + len)` (inside the disk) into runs of one source each, merging
/// neighbours of the same source; stops early once `max_runs` runs are complete.
pub(crate) fn runs(
    index: &DiskIndex,
    written: Option<&Bitmap>,
    offset: u64,
    len: u64,
    max_runs: usize,
) -> Vec<Run> {
    let end = offset.saturating_add(len).min(index.disk_size());
    let cs = u64::from(index.chunk_size());
    let mut out: Vec<Run> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let (source, next) = match written {
            Some(bm) if bm.get(pos / BLOCK) => (Source::Overlay, bm.run_end(pos / BLOCK) * BLOCK),
            _ => {
                let i = (pos / cs) as usize;
                let chunk_end = (i as u64 + 1) * cs;
                let source = if index.get(i).is_some() {
                    Source::Snapshot
                } else {
                    Source::Zero
                };
                let next = match written {
                    Some(bm) => chunk_end.min(bm.run_end(pos / BLOCK) * BLOCK),
                    None => chunk_end,
                };
                (source, next)
            }
        };
        let next = next.min(end);
        let n = next - pos;
        let full = out.len() >= max_runs;
        match out.last_mut() {
            Some(last) if last.source == source => last.len += n,
            _ if full => break,
            _ => out.push(Run { len: n, source }),
        }
        pos = next;
    }
    out
}

/// `base:allocation` extents (length, flags) of runs, merging equal neighbours.
pub(crate) fn allocation_extents(runs: &[Run], max: usize) -> Vec<(u32, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for r in runs {
        let flags = r.source.allocation_flags();
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += r.len,
            _ => out.push((r.len, flags)),
        }
    }
    out.truncate(max.max(1));
    // Requests are at most u32::MAX bytes, so every extent fits.
    out.into_iter()
        .map(|(l, f)| (u32::try_from(l).unwrap_or(u32::MAX), f))
        .collect()
}

/// Why serving one request failed; reported to the client as an errno.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("the export is read-only")]
    ReadOnly,
}

impl ExportError {
    pub(crate) fn errno(&self) -> u32 {
        match self {
            ExportError::ReadOnly => wire::EPERM,
            ExportError::Overlay(OverlayError::Io(e))
                if e.kind() == std::io::ErrorKind::StorageFull =>
            {
                wire::ENOSPC
            }
            _ => wire::EIO,
        }
    }
}

/// One disk of one snapshot, as served.
pub struct Export {
    name: String,
    pub(crate) vm: String,
    pub(crate) disk: String,
    reader: Arc<SnapshotReader>,
    overlay: Option<Overlay>,
}

impl Export {
    /// A read-only export called `name` of disk `disk` of VM `vm`.
    pub fn new(
        name: &str,
        vm: &str,
        disk: &str,
        reader: Arc<SnapshotReader>,
    ) -> Result<Export, ServeError> {
        if name.len() > wire::MAX_STRING {
            return Err(ServeError::ExportName(name.len()));
        }
        Ok(Export {
            name: name.to_string(),
            vm: vm.to_string(),
            disk: disk.to_string(),
            reader,
            overlay: None,
        })
    }

    /// Makes the export writable through a copy-on-write overlay file created in `dir`.
    pub fn writable(mut self, dir: &Path) -> Result<Export, ServeError> {
        let overlay = Overlay::create(dir, self.size()).map_err(|source| ServeError::Overlay {
            dir: dir.to_path_buf(),
            source,
        })?;
        self.overlay = Some(overlay);
        Ok(self)
    }

    /// Makes the export writable through the saved overlay in `dir` (created if needed;
    /// an overlay already there must belong to this disk of `snapshot`). It outlives the
    /// server: serving it again resumes it, `bora copy-back` writes it onto a disk.
    pub fn writable_saved(mut self, dir: &Path, snapshot: &str) -> Result<Export, ServeError> {
        let header = OverlayHeader {
            vm: self.vm.clone(),
            disk: self.disk.clone(),
            snapshot: snapshot.to_string(),
            size: self.size(),
        };
        self.overlay = Some(Overlay::open_dir(dir, Some(&header))?);
        Ok(self)
    }

    /// Whether writes are kept after the server stops.
    pub fn is_saved(&self) -> bool {
        self.overlay.as_ref().is_some_and(|o| o.header().is_some())
    }

    /// Bytes of the disk written through the export so far (whole 4 KiB blocks).
    pub fn bytes_written(&self) -> u64 {
        self.overlay
            .as_ref()
            .map_or(0, |o| o.with_bitmap(|b| b.count()) * BLOCK)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn size(&self) -> u64 {
        self.reader.size()
    }

    pub fn read_only(&self) -> bool {
        self.overlay.is_none()
    }

    /// Snapshot bytes fetched from the store so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.reader.bytes_fetched()
    }

    /// Whether a client asking for export `name` gets this one (`""` is the default).
    pub(crate) fn answers_to(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    /// Transmission flags.
    pub(crate) fn transmission_flags(&self) -> u16 {
        let mut f = wire::TFLAG_HAS_FLAGS | wire::TFLAG_SEND_FLUSH | wire::TFLAG_CAN_MULTI_CONN;
        if self.read_only() {
            f |= wire::TFLAG_READ_ONLY;
        } else {
            f |= wire::TFLAG_SEND_FUA | wire::TFLAG_SEND_TRIM | wire::TFLAG_SEND_WRITE_ZEROES;
        }
        f
    }

    /// The runs of `[offset, offset + len)`.
    pub(crate) fn runs(&self, offset: u64, len: u64, max_runs: usize) -> Vec<Run> {
        let index = self.reader.index();
        match &self.overlay {
            Some(o) => o.with_bitmap(|bm| runs(index, Some(bm), offset, len, max_runs)),
            None => runs(index, None, offset, len, max_runs),
        }
    }

    /// The bytes of one run that starts at `offset`; `None` for a hole.
    pub(crate) async fn read_run(
        &self,
        offset: u64,
        run: Run,
    ) -> Result<Option<Bytes>, ExportError> {
        let len = run.len as usize;
        match (run.source, &self.overlay) {
            (Source::Zero, _) => Ok(None),
            (Source::Overlay, Some(o)) => Ok(Some(Bytes::from(
                o.read(offset, len).await.map_err(OverlayError::from)?,
            ))),
            _ => Ok(Some(self.reader.read_at(offset, len).await?)),
        }
    }

    pub(crate) async fn write(&self, offset: u64, data: &[u8]) -> Result<(), ExportError> {
        let o = self.overlay.as_ref().ok_or(ExportError::ReadOnly)?;
        Ok(o.write(&self.reader, offset, data).await?)
    }

    pub(crate) async fn zero(&self, offset: u64, len: u64) -> Result<(), ExportError> {
        let o = self.overlay.as_ref().ok_or(ExportError::ReadOnly)?;
        Ok(o.zero(&self.reader, offset, len).await?)
    }

    pub(crate) async fn flush(&self) -> Result<(), ExportError> {
        match &self.overlay {
            Some(o) => Ok(o.flush().await.map_err(OverlayError::from)?),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::Digest;

    const CS: u32 = 64 << 10;
    const C: u64 = CS as u64;

    /// Chunks 0, 1, 4 hold data; 2, 3 and the short tail chunk 5 are zeros.
    fn index() -> DiskIndex {
        let mut idx = DiskIndex::zeroed(5 * C + 1000, CS).expect("index");
        for i in [0usize, 1, 4] {
            idx.set(i, Some(Digest::of(&[i as u8])));
        }
        idx
    }

    fn run(len: u64, source: Source) -> Run {
        Run { len, source }
    }

    #[test]
    fn runs_merge_chunks_of_one_kind_and_clip_to_the_range() {
        let idx = index();
        assert_eq!(
            runs(&idx, None, 0, idx.disk_size(), usize::MAX),
            vec![
                run(2 * C, Source::Snapshot),
                run(2 * C, Source::Zero),
                run(C, Source::Snapshot),
                run(1000, Source::Zero),
            ]
        );
        assert_eq!(
            runs(&idx, None, C + 10, C, usize::MAX),
            vec![run(C - 10, Source::Snapshot), run(10, Source::Zero)]
        );
        assert_eq!(runs(&idx, None, 0, idx.disk_size(), 2).len(), 2);
        // Past the end is clipped, never extended.
        let all: u64 = runs(&idx, None, 5 * C, 1 << 30, usize::MAX)
            .iter()
            .map(|r| r.len)
            .sum();
        assert_eq!(all, 1000);
    }

    #[test]
    fn overlay_blocks_split_runs() {
        let idx = index();
        let mut bm = Bitmap::new(idx.disk_size());
        bm.set_range(2 * C / BLOCK + 1, 2 * C / BLOCK + 3); // inside zero chunk 2
        bm.set_range(0, 1); // first block of data chunk 0
        let r = runs(&idx, Some(&bm), 0, 4 * C, usize::MAX);
        assert_eq!(
            r,
            vec![
                run(BLOCK, Source::Overlay),
                run(2 * C - BLOCK, Source::Snapshot),
                run(BLOCK, Source::Zero),
                run(2 * BLOCK, Source::Overlay),
                run(2 * C - 3 * BLOCK, Source::Zero),
            ]
        );
        assert_eq!(
            allocation_extents(&r, usize::MAX),
            vec![
                (2 * CS, 0),
                (BLOCK as u32, 3),
                (2 * BLOCK as u32, 0),
                (2 * CS - 3 * BLOCK as u32, 3)
            ]
        );
    }

    #[test]
    fn allocation_extents_merge_and_cap() {
        let r = [
            run(10, Source::Snapshot),
            run(5, Source::Overlay),
            run(7, Source::Zero),
            run(1, Source::Snapshot),
        ];
        assert_eq!(allocation_extents(&r, 10), vec![(15, 0), (7, 3), (1, 0)]);
        assert_eq!(allocation_extents(&r, 1), vec![(15, 0)]);
        assert_eq!(allocation_extents(&r, 0), vec![(15, 0)]);
    }
}
