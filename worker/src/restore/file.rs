//! Restoring into a raw file, a block device, or a new qcow2 image.
//!
//! New files are written under a temporary name beside the target and renamed into place
//! only when complete and synced, so a failed restore never leaves a half disk under the
//! name the operator asked for.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::process::Command;

use super::RestoreError;
use super::nbd_target::NbdWriter;
use super::target::DiskWriter;
use crate::source::image::ImageFormat;
use crate::source::qemu_nbd::QemuNbdServer;

fn target_err(path: &Path, reason: impl std::fmt::Display) -> RestoreError {
    RestoreError::Target {
        target: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The temporary name a new file is written under.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    path.with_file_name(format!(".{name}.bora-partial"))
}

/// Checks that `path` may be created: refuses to overwrite unless `force`.
fn check_new(path: &Path, force: bool) -> Result<(), RestoreError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(target_err(path, "is a directory")),
        Ok(_) if !force => Err(target_err(
            path,
            "already exists; choose a new path or pass --force to replace it",
        )),
        _ => Ok(()),
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// A raw file (new, sparse) or an existing block device.
pub struct FileWriter {
    file: Arc<File>,
    path: PathBuf,
    /// Where the data goes until `finish` (None for a block device).
    partial: Option<PathBuf>,
}

impl FileWriter {
    pub fn create(path: &Path, size: u64, force: bool) -> Result<FileWriter, RestoreError> {
        let is_block = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if is_block {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| target_err(path, e))?;
            let dev_size = rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))
                .map_err(|e| target_err(path, e))?;
            if dev_size < size {
                return Err(target_err(
                    path,
                    format!("device is {dev_size} bytes, the disk needs {size}"),
                ));
            }
            return Ok(FileWriter {
                file: Arc::new(file),
                path: path.to_path_buf(),
                partial: None,
            });
        }
        check_new(path, force)?;
        let partial = partial_path(path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| target_err(path, e))?;
        file.set_len(size).map_err(|e| target_err(path, e))?;
        Ok(FileWriter {
            file: Arc::new(file),
            path: path.to_path_buf(),
            partial: Some(partial),
        })
    }
}

#[async_trait]
impl DiskWriter for FileWriter {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn is_fresh(&self) -> bool {
        self.partial.is_some()
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), RestoreError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(|e| RestoreError::Internal(e.to_string()))?
            .map_err(|e| target_err(&self.path, format!("writing at offset {offset}: {e}")))
    }

    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), RestoreError> {
        self.write_at(offset, Bytes::from(vec![0u8; len as usize]))
            .await
    }

    async fn finish(self: Box<Self>) -> Result<(), RestoreError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(|e| RestoreError::Internal(e.to_string()))?
            .map_err(|e| target_err(&self.path, e))?;
        if let Some(partial) = &self.partial {
            std::fs::rename(partial, &self.path).map_err(|e| target_err(&self.path, e))?;
            sync_parent(&self.path).map_err(|e| target_err(&self.path, e))?;
        }
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        if let Some(partial) = &self.partial {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// A new qcow2 image: created with `qemu-img create`, written through `qemu-nbd` (QEMU's
/// own qcow2 code), so unwritten clusters stay unallocated.
pub struct Qcow2Writer {
    inner: NbdWriter,
    server: QemuNbdServer,
    path: PathBuf,
    partial: PathBuf,
}

impl Qcow2Writer {
    pub async fn create(path: &Path, size: u64, force: bool) -> Result<Qcow2Writer, RestoreError> {
        check_new(path, force)?;
        let partial = partial_path(path);
        let _ = std::fs::remove_file(&partial);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&partial)
            .arg(size.to_string())
            .output()
            .await
            .map_err(|e| target_err(path, format!("cannot run qemu-img: {e}")))?;
        if !out.status.success() {
            return Err(target_err(
                path,
                format!(
                    "qemu-img create: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let server = QemuNbdServer::start(&partial, ImageFormat::Qcow2, true)
            .await
            .map_err(|e| target_err(path, e))?;
        let connected = server
            .connect(&[])
            .await
            .map_err(|e| target_err(path, format!("connecting to qemu-nbd: {e}")))
            .and_then(|c| NbdWriter::from_client(c, path.display().to_string(), size, true));
        let inner = match connected {
            Ok(w) => w,
            Err(e) => {
                let _ = server.stop().await;
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
        };
        Ok(Qcow2Writer {
            inner,
            server,
            path: path.to_path_buf(),
            partial,
        })
    }
}

#[async_trait]
impl DiskWriter for Qcow2Writer {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn is_fresh(&self) -> bool {
        true
    }

    fn write_concurrency(&self) -> usize {
        self.inner.write_concurrency()
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), RestoreError> {
        self.inner.write_at(offset, data).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), RestoreError> {
        self.inner.write_zeroes(offset, len).await
    }

    async fn finish(self: Box<Self>) -> Result<(), RestoreError> {
        let Qcow2Writer {
            inner,
            server,
            path,
            partial,
        } = *self;
        Box::new(inner).finish().await?;
        server
            .stop()
            .await
            .map_err(|e| target_err(&path, format!("stopping qemu-nbd: {e}")))?;
        let file = File::open(&partial).map_err(|e| target_err(&path, e))?;
        file.sync_all().map_err(|e| target_err(&path, e))?;
        std::fs::rename(&partial, &path).map_err(|e| target_err(&path, e))?;
        sync_parent(&path).map_err(|e| target_err(&path, e))?;
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        let Qcow2Writer {
            inner,
            server,
            partial,
            ..
        } = *self;
        Box::new(inner).abort().await;
        let _ = server.stop().await;
        let _ = std::fs::remove_file(&partial);
    }
}
