//! A partition view: `[start, start + size)` of a snapshot's disk as a blocking
//! `Read + Seek` (and `Write` that always fails, for crates that want a read-write device)
//! and as ext4-view's `Ext4Read`.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use crate::snapshot_reader::{BlockingReader, SnapshotReader};

pub struct PartitionView {
    disk: BlockingReader,
    start: u64,
    size: u64,
    pos: u64,
}

impl PartitionView {
    /// A view of `[start, start + size)`, clamped to the disk. Use it only on a blocking
    /// thread.
    pub fn new(
        reader: &Arc<SnapshotReader>,
        handle: &tokio::runtime::Handle,
        start: u64,
        size: u64,
    ) -> PartitionView {
        let disk_size = reader.size();
        let start = start.min(disk_size);
        let size = size.min(disk_size - start);
        PartitionView {
            disk: reader.blocking(handle.clone()),
            start,
            size,
            pos: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `buf.len()` bytes at `offset` of the partition.
    pub fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at offset {offset} is past the end of the {}-byte partition",
                    buf.len(),
                    self.size
                ),
            ));
        }
        self.pos = offset;
        self.read_exact(buf)
    }
}

impl fmt::Debug for PartitionView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionView")
            .field("start", &self.start)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish()
    }
}

impl Read for PartitionView {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.size.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.disk.seek(SeekFrom::Start(self.start + self.pos))?;
        let mut done = 0;
        while done < n {
            match self.disk.read(&mut buf[done..n])? {
                0 => break,
                k => done += k,
            }
        }
        self.pos += done as u64;
        Ok(done)
    }
}

impl Seek for PartitionView {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => i128::from(o),
            SeekFrom::End(d) => i128::from(self.size) + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        self.pos = u64::try_from(new).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}

/// Snapshots are read-only: a parser that tries to write gets an error.
impl Write for PartitionView {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the snapshot is read-only",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ext4_view::Ext4Read for PartitionView {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_exact_at(start_byte, dst).map_err(Into::into)
    }
}
