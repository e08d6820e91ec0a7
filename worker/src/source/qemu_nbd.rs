//! An image served read-only by `qemu-nbd` on a private unix socket and read through
//! Bora's NBD client: QEMU's own block layer interprets the format (qcow2), Bora never
//! parses it. Allocation comes from NBD `base:allocation` block status.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use bora_core::ByteRange;
use bora_core::blockmap::Extent;

use super::image::ImageFormat;
use super::nbd::{CONNECTIONS, NbdSource};
use super::{BlockSource, SourceError};
use crate::nbd::{CONTEXT_BASE_ALLOCATION, NbdAddr, NbdClient, NbdError};

/// A `qemu-nbd` child process serving one image on a unix socket in a private directory.
///
/// It runs without `--persistent`: it exits by itself when its last client disconnects, so
/// a bora process killed with SIGKILL leaves no qemu-nbd behind. It is also killed when
/// dropped.
pub struct QemuNbdServer {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl QemuNbdServer {
    /// Serves `image` as export `disk`; `writable` for restore targets. Waits until the
    /// socket exists, or reports why qemu-nbd exited. Connect with [`Self::connect`].
    pub async fn start(
        image: &Path,
        format: ImageFormat,
        writable: bool,
    ) -> Result<QemuNbdServer, SourceError> {
        let name = image.display().to_string();
        let open_err = |reason: String| SourceError::Open {
            path: name.clone(),
            reason,
        };
        let dir = tempfile::Builder::new()
            .prefix("bora-nbd-")
            .tempdir()
            .map_err(|e| open_err(format!("temp dir for the NBD socket: {e}")))?;
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.arg(format!("--shared={CONNECTIONS}"))
            .arg(format!("--format={}", format.as_str()))
            .arg("--export-name=disk")
            .arg("--socket")
            .arg(&socket);
        if !writable {
            cmd.arg("--read-only");
        }
        cmd.arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| open_err(format!("cannot run qemu-nbd (install qemu-utils): {e}")))?;
        // qemu-nbd creates the socket once the image is open.
        for _ in 0..400 {
            if let Some(status) = child.try_wait().map_err(|e| open_err(e.to_string()))? {
                let mut msg = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut msg).await;
                }
                return Err(open_err(format!(
                    "qemu-nbd exited ({status}): {}",
                    msg.trim()
                )));
            }
            // No probe connection: qemu-nbd would exit when the probe disconnects.
            if socket.exists() {
                return Ok(QemuNbdServer {
                    child,
                    socket,
                    _dir: dir,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(open_err(
            "qemu-nbd did not start serving within 10 s".into(),
        ))
    }

    pub fn addr(&self) -> NbdAddr {
        NbdAddr::Unix(self.socket.clone())
    }

    /// Connects a client, retrying for a few seconds while the server finishes starting
    /// (the socket exists a moment before it listens).
    pub async fn connect(&self, meta_contexts: &[&str]) -> Result<NbdClient, NbdError> {
        let mut attempt = 0;
        loop {
            match NbdClient::connect(&self.addr(), "disk", meta_contexts).await {
                Ok(c) => return Ok(c),
                Err(e) if attempt >= 100 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit, so the image is closed
    /// cleanly (qcow2 metadata written); SIGKILL if it does not exit within 10 s.
    pub async fn stop(mut self) -> Result<(), String> {
        let pid = self
            .child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            // Its exit status after SIGTERM says nothing about the image.
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err("qemu-nbd did not exit within 10 s of SIGTERM".into())
            }
        }
    }
}

/// A read-only image served by qemu-nbd, read through [`NbdSource`].
pub struct QemuNbdSource {
    inner: NbdSource,
    _server: QemuNbdServer,
}

impl QemuNbdSource {
    pub async fn open(image: &Path, format: ImageFormat) -> Result<QemuNbdSource, SourceError> {
        let name = image.display().to_string();
        let server = QemuNbdServer::start(image, format, false).await?;
        let mut clients = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let c = server
                .connect(&[CONTEXT_BASE_ALLOCATION])
                .await
                .map_err(|e| SourceError::Open {
                    path: name.clone(),
                    reason: format!("connecting to qemu-nbd: {e}"),
                })?;
            clients.push(c);
        }
        Ok(QemuNbdSource {
            inner: NbdSource::from_clients(clients, name, None)?,
            _server: server,
        })
    }
}

#[async_trait]
impl BlockSource for QemuNbdSource {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError> {
        self.inner.extents(range).await
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError> {
        self.inner.read(offset, len).await
    }
}
