//! Block nodes, dirty bitmaps and `blockdev-add`/`blockdev-del`.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::QmpClient;
use super::error::QmpError;
use super::graph::{self, BlockDevice, BlockGraph};

/// A dirty bitmap on a node (`BlockDirtyInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BitmapInfo {
    pub name: String,
    /// Whether it records writes (enabled).
    pub recording: bool,
    /// Whether it is saved in the image (qcow2) and survives a restart.
    pub persistent: bool,
    /// Whether a job or an export is using it; busy bitmaps cannot be changed.
    pub busy: bool,
    /// Bytes per bit.
    pub granularity: u32,
    /// Dirty bytes.
    pub count: u64,
}

/// A block node, as `query-named-block-nodes` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RawNode")]
pub struct BlockNode {
    pub node_name: String,
    /// The driver: `qcow2`, `raw`, `file`, `copy-before-write`, …
    pub drv: String,
    /// Guest-visible size in bytes (`image.virtual-size`), 0 if not reported.
    pub virtual_size: u64,
    pub read_only: bool,
    pub dirty_bitmaps: Vec<BitmapInfo>,
}

impl BlockNode {
    pub fn bitmap(&self, name: &str) -> Option<&BitmapInfo> {
        self.dirty_bitmaps.iter().find(|b| b.name == name)
    }
}

/// A disk: a top-level node, named by its guest device where there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The device id (`qdev`, else the legacy `device` name) in a QEMU VM; the node name
    /// when no device uses the node (qemu-storage-daemon).
    pub name: String,
    pub node: BlockNode,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct RawNode {
    node_name: String,
    drv: String,
    ro: bool,
    image: RawImage,
    dirty_bitmaps: Vec<BitmapInfo>,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct RawImage {
    virtual_size: u64,
}

impl From<RawNode> for BlockNode {
    fn from(r: RawNode) -> Self {
        BlockNode {
            node_name: r.node_name,
            drv: r.drv,
            virtual_size: r.image.virtual_size,
            read_only: r.ro,
            dirty_bitmaps: r.dirty_bitmaps,
        }
    }
}

/// Decodes the reply of `command`.
pub(super) fn parse<T: DeserializeOwned>(command: &str, value: Value) -> Result<T, QmpError> {
    serde_json::from_value(value).map_err(|source| QmpError::BadReply {
        command: command.to_owned(),
        source,
    })
}

/// Arguments naming one bitmap.
pub(super) fn bitmap_args(node: &str, name: &str) -> Value {
    json!({ "node": node, "name": name })
}

pub(super) fn bitmap_add_args(node: &str, name: &str, persistent: bool) -> Value {
    json!({ "node": node, "name": name, "persistent": persistent })
}

pub(super) fn bitmap_merge_args(node: &str, target: &str, sources: &[&str]) -> Value {
    json!({ "node": node, "target": target, "bitmaps": sources })
}

impl QmpClient {
    /// Runs `command` and decodes its reply.
    pub(super) async fn query<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Value,
    ) -> Result<T, QmpError> {
        parse(command, self.execute(command, arguments).await?)
    }

    /// Runs `command`, whose reply carries nothing.
    pub(super) async fn run(&self, command: &str, arguments: Value) -> Result<(), QmpError> {
        self.execute(command, arguments).await.map(drop)
    }

    /// Every named node, flat (children included), with its dirty bitmaps.
    pub async fn query_named_block_nodes(&self) -> Result<Vec<BlockNode>, QmpError> {
        self.query("query-named-block-nodes", json!({ "flat": true }))
            .await
    }

    /// The disks: nodes that no other node uses as a child, leaving out filters (such as
    /// the copy-before-write node a backup job inserts) and Bora's own `bora-*` nodes.
    /// Needs `x-debug-query-block-graph` (QEMU ≥ 4.0).
    pub async fn top_level_nodes(&self) -> Result<Vec<Disk>, QmpError> {
        let block_graph: BlockGraph = self.query("x-debug-query-block-graph", Value::Null).await?;
        let nodes = self.query_named_block_nodes().await?;
        let devices: Vec<BlockDevice> = match self.query("query-block", Value::Null).await {
            Ok(d) => d,
            Err(e) if e.class() == Some("CommandNotFound") => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(graph::top_level(&block_graph, nodes, &devices))
    }

    /// Adds an enabled dirty bitmap to `node`; `persistent` keeps it in the qcow2.
    pub async fn bitmap_add(
        &self,
        node: &str,
        name: &str,
        persistent: bool,
    ) -> Result<(), QmpError> {
        self.run(
            "block-dirty-bitmap-add",
            bitmap_add_args(node, name, persistent),
        )
        .await
    }

    /// Removes a bitmap (from the image too, if persistent).
    pub async fn bitmap_remove(&self, node: &str, name: &str) -> Result<(), QmpError> {
        self.run("block-dirty-bitmap-remove", bitmap_args(node, name))
            .await
    }

    /// Makes a bitmap record writes again.
    pub async fn bitmap_enable(&self, node: &str, name: &str) -> Result<(), QmpError> {
        self.run("block-dirty-bitmap-enable", bitmap_args(node, name))
            .await
    }

    /// Stops a bitmap recording writes (needed before a read-only export may expose it).
    pub async fn bitmap_disable(&self, node: &str, name: &str) -> Result<(), QmpError> {
        self.run("block-dirty-bitmap-disable", bitmap_args(node, name))
            .await
    }

    /// ORs the bitmaps `sources` into `target`, all on `node`.
    pub async fn bitmap_merge(
        &self,
        node: &str,
        target: &str,
        sources: &[&str],
    ) -> Result<(), QmpError> {
        self.run(
            "block-dirty-bitmap-merge",
            bitmap_merge_args(node, target, sources),
        )
        .await
    }

    /// Adds a node graph described by `options` (`BlockdevOptions`, e.g.
    /// `{"driver":"qcow2","node-name":"bora-fleece","file":"bora-fleece-file"}`).
    pub async fn blockdev_add(&self, options: Value) -> Result<(), QmpError> {
        self.run("blockdev-add", options).await
    }

    /// Deletes a node added with `blockdev-add`; it must have no parent left.
    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.run("blockdev-del", json!({ "node-name": node_name }))
            .await
    }
}
