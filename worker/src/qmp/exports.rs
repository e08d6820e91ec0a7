//! The NBD server and block exports: what a backup reader connects to.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

use super::QmpClient;
use super::error::QmpError;
use super::jobs::Awaited;

/// A block export (`query-block-exports`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct BlockExport {
    pub id: String,
    /// The node exported (a copy-before-write filter's name while a backup job runs
    /// under a live export).
    pub node_name: String,
    /// `nbd`, `fuse`, `vhost-user-blk`, …
    #[serde(rename = "type")]
    pub export_type: String,
    /// Deletion was requested and waits for its clients to go.
    pub shutting_down: bool,
}

/// How `block-export-del` treats connected clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExportRemoveMode {
    /// Refuse while clients are connected.
    #[default]
    Safe,
    /// Disconnect the clients.
    Hard,
}

impl ExportRemoveMode {
    fn as_str(self) -> &'static str {
        match self {
            ExportRemoveMode::Safe => "safe",
            ExportRemoveMode::Hard => "hard",
        }
    }
}

impl QmpClient {
    /// Starts QEMU's NBD server on a unix socket. If one already runs (the daemon's
    /// `--nbd-server`, an earlier run) the error satisfies
    /// [`QmpError::is_nbd_server_running_error`].
    pub async fn nbd_server_start_unix(&self, path: &Path) -> Result<(), QmpError> {
        let path = path
            .to_str()
            .ok_or_else(|| QmpError::NonUtf8Path(path.to_owned()))?;
        let addr = json!({ "type": "unix", "data": { "path": path } });
        self.run("nbd-server-start", json!({ "addr": addr })).await
    }

    /// Starts QEMU's NBD server on TCP `host:port` (NBD has no authentication without
    /// TLS: bind to a loopback or a private address).
    pub async fn nbd_server_start_tcp(&self, host: &str, port: u16) -> Result<(), QmpError> {
        let addr = json!({ "type": "inet", "data": { "host": host, "port": port.to_string() } });
        self.run("nbd-server-start", json!({ "addr": addr })).await
    }

    /// Stops the NBD server and every NBD export.
    pub async fn nbd_server_stop(&self) -> Result<(), QmpError> {
        self.run("nbd-server-stop", Value::Null).await
    }

    /// Exports `node_name` over the running NBD server as `export_name`, exposing the
    /// dirty `bitmaps` as `qemu:dirty-bitmap:NAME` contexts (a read-only export needs them
    /// disabled; they may live on a backing node).
    pub async fn block_export_add_nbd(
        &self,
        id: &str,
        node_name: &str,
        export_name: &str,
        writable: bool,
        bitmaps: &[&str],
    ) -> Result<(), QmpError> {
        let mut args = json!({
            "type": "nbd",
            "id": id,
            "node-name": node_name,
            "name": export_name,
            "writable": writable,
        });
        if !bitmaps.is_empty() {
            args["bitmaps"] = json!(bitmaps);
        }
        self.run("block-export-add", args).await
    }

    /// Requests deletion of an export; it is gone once `BLOCK_EXPORT_DELETED` arrives
    /// (see [`QmpClient::block_export_del_and_wait`]).
    pub async fn block_export_del(&self, id: &str, mode: ExportRemoveMode) -> Result<(), QmpError> {
        self.run(
            "block-export-del",
            json!({ "id": id, "mode": mode.as_str() }),
        )
        .await
    }

    /// Deletes an export and waits (up to the command timeout) until QEMU reports it gone.
    pub async fn block_export_del_and_wait(
        &self,
        id: &str,
        mode: ExportRemoveMode,
    ) -> Result<(), QmpError> {
        let rx = self.events();
        self.block_export_del(id, mode).await?;
        self.wait_event_or_state(
            rx,
            |ev| ev.event == "BLOCK_EXPORT_DELETED" && ev.data_str("id") == Some(id),
            Awaited::ExportGone(id),
        )
        .await
        .map(drop)
    }

    pub async fn query_block_exports(&self) -> Result<Vec<BlockExport>, QmpError> {
        self.query("query-block-exports", Value::Null).await
    }
}
