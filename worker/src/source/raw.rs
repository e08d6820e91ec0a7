//! A raw image file (or block device) read directly: `pread` for data, `SEEK_DATA` /
//! `SEEK_HOLE` for the allocation map.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use bora_core::ByteRange;
use bora_core::blockmap::{Extent, ExtentKind};

use super::{BlockSource, SourceError};

pub struct RawSource {
    file: Arc<File>,
    size: u64,
    name: String,
}

impl RawSource {
    pub fn open(path: &Path) -> Result<RawSource, SourceError> {
        let name = path.display().to_string();
        let open_err = |reason: String| SourceError::Open {
            path: name.clone(),
            reason,
        };
        let file = File::open(path).map_err(|e| open_err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| open_err(e.to_string()))?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // A block device: its size is where seeking to the end lands.
            rustix::fs::seek(&file, SeekFrom::End(0)).map_err(|e| open_err(e.to_string()))?
        };
        Ok(RawSource {
            file: Arc::new(file),
            size,
            name,
        })
    }

    fn map_sync(file: &File, range: ByteRange) -> Result<Vec<Extent>, Errno> {
        let mut out = Vec::new();
        let mut push = |offset: u64, end: u64, kind| {
            if end > offset {
                out.push(Extent {
                    offset,
                    length: end - offset,
                    kind,
                });
            }
        };
        let end = range.end();
        let mut pos = range.offset;
        while pos < end {
            let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(end),
                Err(Errno::NXIO) => end, // no data after pos
                Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                    // The file system cannot tell: treat everything as data.
                    push(pos, end, ExtentKind::Data);
                    return Ok(out);
                }
                Err(e) => return Err(e),
            };
            push(pos, data, ExtentKind::Zero);
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(file, SeekFrom::Hole(data)) {
                Ok(h) => h.min(end),
                Err(Errno::NXIO) => end,
                Err(e) => return Err(e),
            };
            push(data, hole, ExtentKind::Data);
            pos = hole;
        }
        Ok(out)
    }
}

#[async_trait]
impl BlockSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError> {
        let file = self.file.clone();
        let map_err = |reason: String| SourceError::Map {
            source_name: self.name.clone(),
            range,
            reason,
        };
        tokio::task::spawn_blocking(move || RawSource::map_sync(&file, range))
            .await
            .map_err(|e| map_err(e.to_string()))?
            .map_err(|e| map_err(e.to_string()))
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError> {
        let file = self.file.clone();
        let read_err = |reason: String| SourceError::Read {
            source_name: self.name.clone(),
            offset,
            len: u64::from(len),
            reason,
        };
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset).map(|_| buf)
        })
        .await
        .map_err(|e| read_err(e.to_string()))?
        .map(Bytes::from)
        .map_err(|e| read_err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sparse_file_map_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[0xaa; 1 << 20], 8 << 20).unwrap();
        f.sync_all().unwrap();
        let src = RawSource::open(&path).unwrap();
        assert_eq!(src.size(), 64 << 20);
        let whole = ByteRange {
            offset: 0,
            length: 64 << 20,
        };
        let ext = src.extents(whole).await.unwrap();
        let data: u64 = ext
            .iter()
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| e.length)
            .sum();
        assert!((1 << 20..8 << 20).contains(&data), "{ext:?}");
        bora_core::blockmap::normalize(&ext, whole).unwrap();
        assert_eq!(src.read(8 << 20, 16).await.unwrap()[..], [0xaa; 16]);
        assert!(src.read((64 << 20) - 8, 16).await.is_err());
    }
}
