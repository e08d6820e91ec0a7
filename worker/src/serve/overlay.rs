//! The copy-on-write overlay of a writable export: a sparse, unnamed temporary file as large
//! as the disk, and an in-memory bitmap of the 4 KiB blocks written to it. Blocks whose bit
//! is set are read from the file; all others from the snapshot, which is never changed. By
//! default the overlay lives as long as the server: the file has no name and vanishes with
//! the process. A saved overlay ([`Overlay::open_dir`]) keeps the file and its bitmap in a
//! directory ([`super::overlay_map`]) for a restart or a copy-back.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use super::overlay_map::{self, DATA_FILE, OverlayHeader, OverlayMapError};
use crate::snapshot_reader::{ReadError, SnapshotReader};

/// Granularity of the overlay.
pub(crate) const BLOCK: u64 = 4096;

/// Largest piece zeroed in one go when a hole cannot be punched.
const ZERO_PIECE: u64 = 1 << 20;

/// One bit per [`BLOCK`] of the disk.
#[derive(Debug)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
}

impl Bitmap {
    pub fn new(disk_size: u64) -> Bitmap {
        let blocks = disk_size.div_ceil(BLOCK);
        Bitmap {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
        }
    }

    /// Blocks of the disk.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether block `b` was written (false past the end).
    pub fn get(&self, b: u64) -> bool {
        self.words
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// Marks blocks `[first, end)` written (clamped to the disk).
    pub fn set_range(&mut self, first: u64, end: u64) {
        for b in first..end.min(self.blocks) {
            if let Some(w) = self.words.get_mut((b / 64) as usize) {
                *w |= 1 << (b % 64);
            }
        }
    }

    /// The first block at or after `b` whose state differs from block `b`'s, or the end.
    pub fn run_end(&self, b: u64) -> u64 {
        let state = self.get(b);
        let mut x = b + 1;
        while x < self.blocks {
            // Skip whole words in one step when they are uniform.
            if x.is_multiple_of(64) {
                let w = self.words[(x / 64) as usize];
                if (state && w == u64::MAX) || (!state && w == 0) {
                    x += 64;
                    continue;
                }
            }
            if self.get(x) != state {
                return x;
            }
            x += 1;
        }
        self.blocks
    }

    /// Blocks written.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Why an overlay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay file: {0}")]
    Io(#[from] io::Error),
    #[error("reading the snapshot under a partial overlay block: {0}")]
    Base(#[from] ReadError),
}

pub(crate) struct Overlay {
    file: Arc<File>,
    size: u64,
    written: Arc<RwLock<Bitmap>>,
    /// Writes run one at a time: a partial block is read, merged and written back.
    write_lock: tokio::sync::Mutex<()>,
    saved: Option<Saved>,
}

/// Where a saved overlay keeps its bitmap.
struct Saved {
    dir: PathBuf,
    header: OverlayHeader,
    /// Saves run one at a time (they share a temporary file name).
    /// Held by the blocking save itself (not by the async caller, whose future can be
    /// dropped while its save still runs), so saves never overlap and the last one
    /// written lists every block fsynced before it.
    save_lock: Arc<std::sync::Mutex<()>>,
    _lock: File,
}

/// Runs blocking file I/O off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("overlay i/o task failed: {e}")))?
}

impl Overlay {
    /// Creates an empty overlay for a disk of `size` bytes in directory `dir`.
    pub fn create(dir: &Path, size: u64) -> io::Result<Overlay> {
        let file = tempfile::tempfile_in(dir)?;
        file.set_len(size)?;
        Ok(Overlay {
            file: Arc::new(file),
            size,
            written: Arc::new(RwLock::new(Bitmap::new(size))),
            write_lock: tokio::sync::Mutex::new(()),
            saved: None,
        })
    }

    /// Opens the saved overlay in `dir` and locks it. With `wanted` (serving), `dir` is
    /// created if needed and an overlay saved there must belong to that snapshot disk; an
    /// empty directory gets a new overlay. Without (copy-back), the overlay must exist.
    pub fn open_dir(
        dir: &Path,
        wanted: Option<&OverlayHeader>,
    ) -> Result<Overlay, OverlayMapError> {
        let io = |source| OverlayMapError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let invalid = |reason: String| OverlayMapError::Invalid {
            dir: dir.to_path_buf(),
            reason,
        };
        if wanted.is_some() {
            std::fs::create_dir_all(dir).map_err(io)?;
        } else if !dir.is_dir() {
            return Err(invalid("no such overlay directory".into()));
        }
        let lock = overlay_map::lock(dir)?;
        let data = dir.join(DATA_FILE);
        let (header, bitmap, file) = match (overlay_map::load(dir)?, wanted) {
            (Some((found, bitmap)), wanted) => {
                if let Some(w) = wanted.filter(|w| **w != found) {
                    return Err(OverlayMapError::OtherDisk {
                        dir: dir.to_path_buf(),
                        found: Box::new(found),
                        wanted: Box::new(w.clone()),
                    });
                }
                let file = File::options()
                    .read(true)
                    .write(true)
                    .open(&data)
                    .map_err(io)?;
                let len = file.metadata().map_err(io)?.len();
                if len != found.size {
                    return Err(invalid(format!(
                        "{DATA_FILE} is {len} bytes, the disk {}",
                        found.size
                    )));
                }
                (found, bitmap, file)
            }
            (None, Some(w)) => {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&data)
                    .map_err(io)?;
                file.set_len(w.size).map_err(io)?;
                file.sync_all().map_err(io)?;
                overlay_map::save(dir, w, Vec::new()).map_err(io)?;
                (w.clone(), Bitmap::new(w.size), file)
            }
            (None, None) => {
                return Err(invalid(format!(
                    "no {}: not a bora overlay",
                    overlay_map::MAP_FILE
                )));
            }
        };
        Ok(Overlay {
            file: Arc::new(file),
            size: header.size,
            written: Arc::new(RwLock::new(bitmap)),
            write_lock: tokio::sync::Mutex::new(()),
            saved: Some(Saved {
                dir: dir.to_path_buf(),
                header,
                save_lock: Arc::new(std::sync::Mutex::new(())),
                _lock: lock,
            }),
        })
    }

    /// The snapshot disk a saved overlay belongs to.
    pub fn header(&self) -> Option<&OverlayHeader> {
        self.saved.as_ref().map(|s| &s.header)
    }

    /// Replaces the bytes of `buf` (disk offset `offset`) that were written in the overlay.
    /// Blocking file I/O.
    pub fn patch_blocking(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64).min(self.size);
        let runs = self.with_bitmap(|bm| {
            let mut runs = Vec::new();
            let mut b = offset / BLOCK;
            while b * BLOCK < end {
                let next = bm.run_end(b);
                if bm.get(b) {
                    runs.push(((b * BLOCK).max(offset), (next * BLOCK).min(end)));
                }
                b = next;
            }
            runs
        });
        for (s, e) in runs {
            let at = (s - offset) as usize;
            self.file
                .read_exact_at(&mut buf[at..at + (e - s) as usize], s)?;
        }
        Ok(())
    }

    /// Whether any block of `[offset, offset + len)` was written.
    pub fn touches(&self, offset: u64, len: u64) -> bool {
        let first = offset / BLOCK;
        let end = offset.saturating_add(len).div_ceil(BLOCK);
        self.with_bitmap(|bm| first < bm.blocks() && (bm.get(first) || bm.run_end(first) < end))
    }

    /// Runs `f` on the bitmap (no await inside).
    pub fn with_bitmap<T>(&self, f: impl FnOnce(&Bitmap) -> T) -> T {
        f(&self.written.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads `[offset, offset + len)` from the overlay file (the caller checked that these
    /// blocks were written).
    pub async fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = self.file.clone();
        blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
    }

    /// The aligned block span around `[offset, end)`, clamped to the disk.
    fn span(&self, offset: u64, end: u64) -> (u64, u64) {
        let start = offset / BLOCK * BLOCK;
        let stop = end.div_ceil(BLOCK).saturating_mul(BLOCK).min(self.size);
        (start, stop)
    }

    /// Current contents of the block starting at `start` (overlay if written, else the
    /// snapshot), into `buf` (at most one block).
    async fn current_block(
        &self,
        base: &SnapshotReader,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(), OverlayError> {
        let written = self.with_bitmap(|b| b.get(start / BLOCK));
        let data = if written {
            self.read(start, buf.len()).await?
        } else {
            base.read_at(start, buf.len()).await?.to_vec()
        };
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Writes `data` at `offset` (in range; checked by the caller). Partial blocks at
    /// either end are completed from their current contents first.
    pub async fn write(
        &self,
        base: &SnapshotReader,
        offset: u64,
        data: &[u8],
    ) -> Result<(), OverlayError> {
        if data.is_empty() {
            return Ok(());
        }
        let _guard = self.write_lock.lock().await;
        let end = offset + data.len() as u64;
        let (start, stop) = self.span(offset, end);
        let mut buf = vec![0u8; (stop - start) as usize];
        if offset != start {
            let n = BLOCK.min(stop - start) as usize;
            self.current_block(base, start, &mut buf[..n]).await?;
        }
        let last = (end - 1) / BLOCK * BLOCK;
        if end != stop && (last != start || offset == start) {
            let at = (last - start) as usize;
            let n = (stop - last) as usize;
            self.current_block(base, last, &mut buf[at..at + n]).await?;
        }
        let at = (offset - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        let file = self.file.clone();
        blocking(move || file.write_all_at(&buf, start)).await?;
        self.mark(start, stop);
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros (in range; checked by the caller).
    pub async fn zero(
        &self,
        base: &SnapshotReader,
        offset: u64,
        len: u64,
    ) -> Result<(), OverlayError> {
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        // Partial blocks at the edges go through the merging write path.
        let inner_start = offset.div_ceil(BLOCK) * BLOCK;
        let inner_end = if end == self.size {
            end
        } else {
            end / BLOCK * BLOCK
        };
        if inner_start >= inner_end {
            return self.write(base, offset, &vec![0u8; len as usize]).await;
        }
        if offset < inner_start {
            self.write(base, offset, &vec![0u8; (inner_start - offset) as usize])
                .await?;
        }
        if inner_end < end {
            self.write(base, inner_end, &vec![0u8; (end - inner_end) as usize])
                .await?;
        }
        let _guard = self.write_lock.lock().await;
        let file = self.file.clone();
        blocking(move || {
            let punched = rustix::fs::fallocate(
                &*file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                inner_start,
                inner_end - inner_start,
            );
            if punched.is_ok() {
                return Ok(());
            }
            let zeros = vec![0u8; ZERO_PIECE as usize];
            let mut pos = inner_start;
            while pos < inner_end {
                let n = (inner_end - pos).min(ZERO_PIECE) as usize;
                file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        })
        .await?;
        self.mark(inner_start, inner_end);
        Ok(())
    }

    fn mark(&self, start: u64, stop: u64) {
        self.written
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .set_range(start / BLOCK, stop.div_ceil(BLOCK));
    }

    /// fsyncs the overlay file, then (a saved overlay) saves the bitmap: every block the
    /// saved bitmap lists was written before the fsync.
    pub async fn flush(&self) -> io::Result<()> {
        let Some(saved) = &self.saved else {
            let file = self.file.clone();
            return blocking(move || file.sync_data()).await;
        };
        let lock = saved.save_lock.clone();
        let written = self.written.clone();
        let file = self.file.clone();
        let dir = saved.dir.clone();
        let header = saved.header.clone();
        blocking(move || {
            let _one_at_a_time = lock.lock().unwrap_or_else(PoisonError::into_inner);
            // The blocks listed are the ones written before this point: the fsync below
            // makes them durable before the map that names them is saved.
            let runs = overlay_map::runs(&written.read().unwrap_or_else(PoisonError::into_inner));
            file.sync_data()?;
            overlay_map::save(&dir, &header, runs)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::index::DiskIndex;
    use bora_core::store::memory::MemoryChunkStore;

    #[test]
    fn bitmap_sets_ranges_and_finds_run_ends() {
        let mut b = Bitmap::new(1000 * BLOCK + 1);
        assert_eq!(b.blocks, 1001);
        assert!(!b.get(0));
        b.set_range(3, 200);
        assert!(b.get(3) && b.get(199) && !b.get(2) && !b.get(200));
        assert_eq!(b.run_end(0), 3);
        assert_eq!(b.run_end(3), 200);
        assert_eq!(b.run_end(64), 200);
        assert_eq!(b.run_end(200), 1001);
        b.set_range(1000, 5000);
        assert!(b.get(1000));
        assert!(!b.get(1001), "past the end");
        assert_eq!(b.count(), 198);
    }

    fn zero_base(size: u64) -> SnapshotReader {
        let idx = DiskIndex::zeroed(size, 64 << 10).expect("index");
        SnapshotReader::new(Arc::new(MemoryChunkStore::default()), Arc::new(idx), 4)
    }

    #[tokio::test]
    async fn unaligned_writes_merge_with_what_was_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = 10 * BLOCK + 100;
        let base = zero_base(size);
        let o = Overlay::create(dir.path(), size).expect("overlay");
        o.write(&base, 100, &[1u8; 50]).await.expect("write");
        o.write(&base, 120, &[2u8; 10]).await.expect("write");
        o.write(&base, BLOCK - 5, &[3u8; 10]).await.expect("write");
        o.write(&base, size - 3, &[4u8; 3]).await.expect("write");
        assert_eq!(o.with_bitmap(|b| b.count()), 3);
        let got = o.read(0, 2 * BLOCK as usize).await.expect("read");
        let mut want = vec![0u8; 2 * BLOCK as usize];
        want[100..150].fill(1);
        want[120..130].fill(2);
        want[BLOCK as usize - 5..BLOCK as usize + 5].fill(3);
        assert_eq!(got, want);
        let tail = o.read(10 * BLOCK, 100).await.expect("read");
        assert_eq!(&tail[97..], &[4, 4, 4]);

        o.zero(&base, 110, 2 * BLOCK).await.expect("zero");
        let got = o.read(0, 3 * BLOCK as usize).await.expect("read");
        assert_eq!(&got[100..110], &[1u8; 10]);
        assert!(got[110..].iter().all(|b| *b == 0));
        o.flush().await.expect("flush");
    }

    #[tokio::test]
    async fn saved_overlay_reopens_and_patches_only_written_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ov = dir.path().join("ov");
        let size = 20 * BLOCK;
        let base = zero_base(size);
        let header = OverlayHeader {
            vm: "v".into(),
            disk: "d".into(),
            snapshot: "s".into(),
            size,
        };
        {
            let o = Overlay::open_dir(&ov, Some(&header)).expect("create");
            o.write(&base, 5 * BLOCK + 10, &[7u8; 20])
                .await
                .expect("write");
            o.write(&base, 9 * BLOCK, &[8u8; 4096])
                .await
                .expect("write");
            o.flush().await.expect("flush");
            // Written but never flushed: not promised to survive.
            o.write(&base, 15 * BLOCK, &[9u8; 4096])
                .await
                .expect("write");
        }
        let o = Overlay::open_dir(&ov, None).expect("reopen");
        assert_eq!(o.header(), Some(&header));
        assert!(o.touches(0, 6 * BLOCK) && o.touches(9 * BLOCK + 4095, 1));
        assert!(!o.touches(0, 5 * BLOCK) && !o.touches(6 * BLOCK, 3 * BLOCK));
        assert!(!o.touches(size, BLOCK), "past the end");
        let mut buf = vec![1u8; (8 * BLOCK) as usize];
        o.patch_blocking(4 * BLOCK, &mut buf).expect("patch");
        let b = BLOCK as usize;
        assert!(
            buf[..b].iter().all(|x| *x == 1),
            "unwritten block untouched"
        );
        assert_eq!(&buf[b + 10..b + 30], &[7u8; 20]);
        assert!(
            buf[b..b + 10].iter().all(|x| *x == 0),
            "rest of a written block"
        );
        assert!(buf[5 * b..6 * b].iter().all(|x| *x == 8));
        assert!(buf[6 * b..].iter().all(|x| *x == 1));
        let other = OverlayHeader {
            snapshot: "t".into(),
            ..header
        };
        drop(o);
        assert!(matches!(
            Overlay::open_dir(&ov, Some(&other)),
            Err(OverlayMapError::OtherDisk { .. })
        ));
    }
}
