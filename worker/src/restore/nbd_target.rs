//! Restoring into a writable NBD export (a hypervisor's disk, or qemu-nbd over a new
//! qcow2 image).

use async_trait::async_trait;
use bytes::Bytes;

use super::RestoreError;
use super::target::DiskWriter;
use crate::nbd::{NbdAddr, NbdClient};

pub struct NbdWriter {
    client: NbdClient,
    name: String,
    fresh: bool,
}

impl NbdWriter {
    fn err(name: &str, reason: impl std::fmt::Display) -> RestoreError {
        RestoreError::Target {
            target: name.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Wraps a connected client; checks the export is writable and large enough.
    pub fn from_client(
        client: NbdClient,
        name: String,
        size: u64,
        fresh: bool,
    ) -> Result<Self, RestoreError> {
        if client.read_only() {
            return Err(Self::err(&name, "export is read-only"));
        }
        if client.size() < size {
            return Err(Self::err(
                &name,
                format!("export is {} bytes, the disk needs {size}", client.size()),
            ));
        }
        Ok(NbdWriter {
            client,
            name,
            fresh,
        })
    }

    /// An export that may hold old data: every byte of the disk is written.
    pub async fn connect(addr: &NbdAddr, export: &str, size: u64) -> Result<Self, RestoreError> {
        let name = match addr {
            NbdAddr::Unix(p) => format!("nbd+unix:///{export}?socket={}", p.display()),
            NbdAddr::Tcp(hp) => format!("nbd://{hp}/{export}"),
        };
        let client = NbdClient::connect(addr, export, &[])
            .await
            .map_err(|e| Self::err(&name, e))?;
        Self::from_client(client, name, size, false)
    }
}

#[async_trait]
impl DiskWriter for NbdWriter {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn write_concurrency(&self) -> usize {
        4
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), RestoreError> {
        self.client
            .write(offset, &data)
            .await
            .map_err(|e| Self::err(&self.name, format!("writing at offset {offset}: {e}")))
    }

    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), RestoreError> {
        self.client
            .write_zeroes(offset, len)
            .await
            .map_err(|e| Self::err(&self.name, format!("zeroing at offset {offset}: {e}")))
    }

    async fn finish(self: Box<Self>) -> Result<(), RestoreError> {
        self.client
            .flush()
            .await
            .map_err(|e| Self::err(&self.name, format!("flush: {e}")))?;
        self.client
            .disconnect()
            .await
            .map_err(|e| Self::err(&self.name, format!("disconnect: {e}")))
    }

    async fn abort(self: Box<Self>) {
        let _ = self.client.disconnect().await;
    }
}
