//! An NBD export as a backup source: a hypervisor's frozen (fleecing) export, an export
//! someone else made (`bora backup --nbd URL`), or qemu-nbd over an image file. Reads are
//! spread over several connections; allocation comes from `base:allocation`, changed
//! blocks from `qemu:dirty-bitmap:NAME` when a bitmap is given.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use bora_core::ByteRange;
use bora_core::blockmap::{Extent, ExtentKind};

use super::{BlockSource, SourceError};
use crate::nbd::{
    CONTEXT_BASE_ALLOCATION, NbdAddr, NbdClient, STATE_DIRTY, STATE_ZERO, dirty_bitmap_context,
};

/// Connections per export: reads are spread over them.
pub const CONNECTIONS: usize = 4;

pub struct NbdSource {
    clients: Vec<NbdClient>,
    next: AtomicUsize,
    size: u64,
    name: String,
    /// The negotiated dirty-bitmap meta context, if any.
    dirty_context: Option<String>,
}

impl NbdSource {
    /// Opens `connections` connections to `export` at `addr`, negotiating
    /// `base:allocation` and, with `bitmap`, `qemu:dirty-bitmap:BITMAP` (an error if the
    /// server does not offer it).
    pub async fn connect(
        addr: &NbdAddr,
        export: &str,
        bitmap: Option<&str>,
        connections: usize,
        name: String,
    ) -> Result<NbdSource, SourceError> {
        let dirty = bitmap.map(dirty_bitmap_context);
        let mut contexts = vec![CONTEXT_BASE_ALLOCATION];
        if let Some(d) = &dirty {
            contexts.push(d);
        }
        let mut clients = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let c = NbdClient::connect(addr, export, &contexts)
                .await
                .map_err(|e| SourceError::Open {
                    path: name.clone(),
                    reason: e.to_string(),
                })?;
            clients.push(c);
        }
        NbdSource::from_clients(clients, name, bitmap)
    }

    /// A source over connected clients (all to the same export, with the same contexts).
    pub fn from_clients(
        clients: Vec<NbdClient>,
        name: String,
        bitmap: Option<&str>,
    ) -> Result<NbdSource, SourceError> {
        let size = clients
            .first()
            .map(NbdClient::size)
            .ok_or_else(|| SourceError::Open {
                path: name.clone(),
                reason: "no connection".into(),
            })?;
        Ok(NbdSource {
            clients,
            next: AtomicUsize::new(0),
            size,
            name,
            dirty_context: bitmap.map(dirty_bitmap_context),
        })
    }

    fn client(&self) -> &NbdClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    async fn status(
        &self,
        context: &str,
        range: ByteRange,
        set: impl Fn(u32) -> bool,
    ) -> Result<Vec<Extent>, SourceError> {
        let status = self
            .client()
            .block_status(context, range.offset, range.length)
            .await
            .map_err(|e| SourceError::Map {
                source_name: self.name.clone(),
                range,
                reason: e.to_string(),
            })?;
        Ok(status
            .into_iter()
            .map(|e| Extent {
                offset: e.offset,
                length: e.length,
                kind: if set(e.flags) {
                    ExtentKind::Data
                } else {
                    ExtentKind::Zero
                },
            })
            .collect())
    }
}

#[async_trait]
impl BlockSource for NbdSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn extents(&self, range: ByteRange) -> Result<Vec<Extent>, SourceError> {
        // HOLE without ZERO may read as non-zero (a backing file): only ZERO is skipped.
        self.status(CONTEXT_BASE_ALLOCATION, range, |f| f & STATE_ZERO == 0)
            .await
    }

    async fn dirty(&self, range: ByteRange) -> Result<Option<Vec<Extent>>, SourceError> {
        match &self.dirty_context {
            Some(ctx) => Ok(Some(
                self.status(ctx, range, |f| f & STATE_DIRTY != 0).await?,
            )),
            None => Ok(None),
        }
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, SourceError> {
        self.client()
            .read(offset, len)
            .await
            .map_err(|e| SourceError::Read {
                source_name: self.name.clone(),
                offset,
                len: u64::from(len),
                reason: e.to_string(),
            })
    }
}
