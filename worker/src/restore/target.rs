//! Where a restore writes: a raw or qcow2 file, a block device, or an NBD export.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use super::RestoreError;
use super::file::{FileWriter, Qcow2Writer};
use super::nbd_target::NbdWriter;
use crate::nbd::{NbdAddr, parse_nbd_url};
use crate::source::image::ImageFormat;

/// A restore destination as the operator names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// A file (created; an existing one only with `force`) or a block device.
    File {
        path: PathBuf,
        format: ImageFormat,
        force: bool,
    },
    /// A writable NBD export, e.g. a hypervisor's disk on another host.
    Nbd { addr: NbdAddr, export: String },
}

impl RestoreTarget {
    /// Parses `--to`: `nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`, or a
    /// path. `format` applies to paths; without it, `.qcow2` means qcow2, else raw.
    pub fn parse(to: &str, format: Option<ImageFormat>, force: bool) -> Result<Self, String> {
        if to.starts_with("nbd://") || to.starts_with("nbd+unix://") {
            let (addr, export) = parse_nbd_url(to)?;
            return Ok(RestoreTarget::Nbd { addr, export });
        }
        if to.contains("://") {
            return Err(format!(
                "{to}: unsupported target (a path, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)"
            ));
        }
        let format = format.unwrap_or(if to.ends_with(".qcow2") {
            ImageFormat::Qcow2
        } else {
            ImageFormat::Raw
        });
        Ok(RestoreTarget::File {
            path: PathBuf::from(to),
            format,
            force,
        })
    }
}

/// Writes a restored disk.
#[async_trait]
pub trait DiskWriter: Send + Sync {
    fn name(&self) -> String;
    /// True when the target reads as zeros before we write (a new file): zeros are then
    /// left as holes instead of written.
    fn is_fresh(&self) -> bool;
    /// Chunks worth writing at once: one for a local file or device (concurrent pwrites
    /// only contend for its inode lock), several for an NBD export (each write waits for a
    /// round trip).
    fn write_concurrency(&self) -> usize {
        1
    }
    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), RestoreError>;
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), RestoreError>;
    /// Makes everything durable and puts the result in place.
    async fn finish(self: Box<Self>) -> Result<(), RestoreError>;
    /// Gives up: removes whatever a new file target had written.
    async fn abort(self: Box<Self>);
}

/// Opens `target` for a disk of `size` bytes.
pub async fn open_target(
    target: &RestoreTarget,
    size: u64,
) -> Result<Box<dyn DiskWriter>, RestoreError> {
    Ok(match target {
        RestoreTarget::File {
            path,
            format: ImageFormat::Raw,
            force,
        } => Box::new(FileWriter::create(path, size, *force)?),
        RestoreTarget::File {
            path,
            format: ImageFormat::Qcow2,
            force,
        } => Box::new(Qcow2Writer::create(path, size, *force).await?),
        RestoreTarget::Nbd { addr, export } => {
            Box::new(NbdWriter::connect(addr, export, size).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            RestoreTarget::parse("nbd://127.0.0.1:10810/target", None, false).unwrap(),
            RestoreTarget::Nbd {
                addr: NbdAddr::Tcp("127.0.0.1:10810".into()),
                export: "target".into()
            }
        );
        assert_eq!(
            RestoreTarget::parse("nbd+unix:///live?socket=/run/n.sock", None, false).unwrap(),
            RestoreTarget::Nbd {
                addr: NbdAddr::Unix("/run/n.sock".into()),
                export: "live".into()
            }
        );
        assert!(matches!(
            RestoreTarget::parse("out.qcow2", None, false).unwrap(),
            RestoreTarget::File {
                format: ImageFormat::Qcow2,
                ..
            }
        ));
        assert!(matches!(
            RestoreTarget::parse("out.img", None, false).unwrap(),
            RestoreTarget::File {
                format: ImageFormat::Raw,
                ..
            }
        ));
        assert!(RestoreTarget::parse("s3://x", None, false).is_err());
        assert!(RestoreTarget::parse("nbd+unix:///x", None, false).is_err());
    }
}
