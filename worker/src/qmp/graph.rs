//! Which nodes are disks: the block graph from `x-debug-query-block-graph`, read as
//! "which node is whose child", and the devices from `query-block` to name them.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::BORA_NODE_PREFIX;
use super::block::{BlockNode, Disk};

/// Drivers that sit transparently on top of a disk (the backup job's copy-before-write
/// node, throttling, …): never a disk themselves, and not a parent that hides one.
const FILTER_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "preallocate",
    "snapshot-access",
    "throttle",
];

/// `x-debug-query-block-graph`: block-driver nodes, plus block backends (devices, exports)
/// and jobs as parents.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct BlockGraph {
    nodes: Vec<GraphNode>,
    edges: Vec<GraphEdge>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GraphNode {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct GraphEdge {
    parent: u64,
    child: u64,
}

/// One entry of `query-block`: a guest device (QEMU only; empty on qemu-storage-daemon).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct BlockDevice {
    /// The legacy `-drive` id; empty for `-blockdev` setups.
    device: String,
    /// The device's id, else its QOM path.
    qdev: String,
    inserted: Option<Inserted>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct Inserted {
    node_name: String,
}

impl BlockDevice {
    /// The most useful name: a qdev id, else the drive name, else the QOM path.
    fn name(&self) -> Option<&str> {
        let qdev = (!self.qdev.is_empty()).then_some(self.qdev.as_str());
        let drive = (!self.device.is_empty()).then_some(self.device.as_str());
        match qdev {
            Some(id) if !id.starts_with('/') => Some(id),
            _ => drive.or(qdev),
        }
    }
}

fn hidden(node_name: &str, drv: &str) -> bool {
    node_name.starts_with(BORA_NODE_PREFIX) || FILTER_DRIVERS.contains(&drv)
}

/// The nodes of `nodes` with no block-driver parent other than filters and Bora's nodes,
/// and that are neither themselves; in `nodes`' order.
pub(super) fn top_level(
    graph: &BlockGraph,
    nodes: Vec<BlockNode>,
    devices: &[BlockDevice],
) -> Vec<Disk> {
    let drv: HashMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.node_name.as_str(), n.drv.as_str()))
        .collect();
    let driver_nodes: HashMap<u64, &str> = graph
        .nodes
        .iter()
        .filter(|n| n.kind == "block-driver")
        .map(|n| (n.id, n.name.as_str()))
        .collect();
    let mut children: HashSet<&str> = HashSet::new();
    for edge in &graph.edges {
        let (Some(&parent), Some(&child)) = (
            driver_nodes.get(&edge.parent),
            driver_nodes.get(&edge.child),
        ) else {
            continue; // a device, an export or a job
        };
        // A parent missing from `nodes` (added in between) counts as a real parent.
        if !hidden(parent, drv.get(parent).copied().unwrap_or_default()) {
            children.insert(child);
        }
    }
    let children: HashSet<String> = children.into_iter().map(str::to_owned).collect();
    let device_names: HashMap<&str, &str> = devices
        .iter()
        .filter_map(|d| Some((d.inserted.as_ref()?.node_name.as_str(), d.name()?)))
        .collect();
    nodes
        .into_iter()
        .filter(|n| !hidden(&n.node_name, &n.drv) && !children.contains(&n.node_name))
        .map(|node| Disk {
            name: device_names
                .get(node.node_name.as_str())
                .map_or_else(|| node.node_name.clone(), |d| (*d).to_owned()),
            node,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, drv: &str) -> BlockNode {
        BlockNode {
            node_name: name.into(),
            drv: drv.into(),
            ..BlockNode::default()
        }
    }

    fn names(disks: &[Disk]) -> Vec<(&str, &str)> {
        disks
            .iter()
            .map(|d| (d.name.as_str(), d.node.node_name.as_str()))
            .collect()
    }

    /// The graph qemu-storage-daemon 10.0.2 reported in the middle of a backup: the live
    /// export on the copy-before-write filter over disk0, the fleece image with disk0 as
    /// backing, and the job.
    #[test]
    fn a_backup_in_progress_hides_nothing_and_adds_nothing() {
        let graph: BlockGraph = serde_json::from_value(json!({
            "edges": [
                {"name": "file", "parent": 2, "child": 7}, {"name": "target", "parent": 2, "child": 4},
                {"name": "file", "parent": 4, "child": 8}, {"name": "backing", "parent": 4, "child": 7},
                {"name": "file", "parent": 7, "child": 6}, {"name": "main node", "parent": 5, "child": 2},
                {"name": "target", "parent": 5, "child": 4}, {"name": "root", "parent": 3, "child": 4},
                {"name": "root", "parent": 1, "child": 2}],
            "nodes": [
                {"name": "#block090", "type": "block-driver", "id": 2},
                {"name": "bora-f", "type": "block-driver", "id": 4},
                {"name": "bora-f-file", "type": "block-driver", "id": 8},
                {"name": "disk0", "type": "block-driver", "id": 7},
                {"name": "disk0-file", "type": "block-driver", "id": 6},
                {"name": "bk1", "type": "block-job", "id": 5},
                {"name": "", "type": "block-backend", "id": 3},
                {"name": "", "type": "block-backend", "id": 1}]
        }))
        .unwrap();
        let nodes = vec![
            node("#block090", "copy-before-write"),
            node("bora-f", "qcow2"),
            node("bora-f-file", "file"),
            node("disk0", "qcow2"),
            node("disk0-file", "file"),
        ];
        assert_eq!(names(&top_level(&graph, nodes, &[])), [("disk0", "disk0")]);
    }

    #[test]
    fn devices_name_their_disks() {
        let graph: BlockGraph = serde_json::from_value(json!({
            "nodes": [
                {"name": "fmt-a", "type": "block-driver", "id": 1},
                {"name": "file-a", "type": "block-driver", "id": 2},
                {"name": "#block1", "type": "block-driver", "id": 3},
                {"name": "orphan", "type": "block-driver", "id": 4},
                {"name": "virtio-disk0", "type": "block-backend", "id": 5}],
            "edges": [{"parent": 1, "child": 2}, {"parent": 5, "child": 1}, {"parent": 5, "child": 3}]
        }))
        .unwrap();
        let devices: Vec<BlockDevice> = serde_json::from_value(json!([
            {"device": "", "qdev": "virtio-disk0", "inserted": {"node-name": "fmt-a"}},
            {"device": "drive-ide0", "qdev": "/machine/unattached/device[3]",
             "inserted": {"node-name": "#block1"}},
            {"device": "cd0", "qdev": "ide1-cd0"}
        ]))
        .unwrap();
        let nodes = vec![
            node("fmt-a", "qcow2"),
            node("file-a", "file"),
            node("#block1", "raw"),
            node("orphan", "raw"),
        ];
        assert_eq!(
            names(&top_level(&graph, nodes, &devices)),
            [
                ("virtio-disk0", "fmt-a"),
                ("drive-ide0", "#block1"),
                ("orphan", "orphan")
            ]
        );
    }
}
