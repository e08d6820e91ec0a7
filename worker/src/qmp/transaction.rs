//! `transaction`: several actions applied atomically, e.g. the freeze for a backup (start a
//! new bitmap, stop the old one, start the copy-before-write job) in one step.

use serde_json::{Value, json};

use super::QmpClient;
use super::block::{bitmap_add_args, bitmap_args, bitmap_merge_args, parse};
use super::error::QmpError;

/// What a `blockdev-backup` job copies to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupSync {
    /// Nothing up front: only the old data of blocks the guest overwrites (fleecing).
    None,
    /// The whole disk.
    Full,
    /// The allocated parts of the top image.
    Top,
}

impl BackupSync {
    fn as_str(self) -> &'static str {
        match self {
            BackupSync::None => "none",
            BackupSync::Full => "full",
            BackupSync::Top => "top",
        }
    }
}

/// The actions of one QMP `transaction`, in order; all take effect or none does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transaction {
    actions: Vec<Value>,
}

impl Transaction {
    pub fn new() -> Self {
        Self::default()
    }

    /// Any action, as `{"type": kind, "data": data}`.
    pub fn action(mut self, kind: &str, data: Value) -> Self {
        self.actions.push(json!({ "type": kind, "data": data }));
        self
    }

    pub fn bitmap_add(self, node: &str, name: &str, persistent: bool) -> Self {
        self.action(
            "block-dirty-bitmap-add",
            bitmap_add_args(node, name, persistent),
        )
    }

    pub fn bitmap_remove(self, node: &str, name: &str) -> Self {
        self.action("block-dirty-bitmap-remove", bitmap_args(node, name))
    }

    pub fn bitmap_enable(self, node: &str, name: &str) -> Self {
        self.action("block-dirty-bitmap-enable", bitmap_args(node, name))
    }

    pub fn bitmap_disable(self, node: &str, name: &str) -> Self {
        self.action("block-dirty-bitmap-disable", bitmap_args(node, name))
    }

    pub fn bitmap_clear(self, node: &str, name: &str) -> Self {
        self.action("block-dirty-bitmap-clear", bitmap_args(node, name))
    }

    pub fn bitmap_merge(self, node: &str, target: &str, sources: &[&str]) -> Self {
        self.action(
            "block-dirty-bitmap-merge",
            bitmap_merge_args(node, target, sources),
        )
    }

    /// A backup job `job_id` from node `device` to node `target`. Started with QEMU's
    /// defaults: auto-finalize and auto-dismiss on.
    pub fn blockdev_backup(
        self,
        device: &str,
        target: &str,
        job_id: &str,
        sync: BackupSync,
    ) -> Self {
        self.action(
            "blockdev-backup",
            json!({ "device": device, "target": target, "job-id": job_id, "sync": sync.as_str() }),
        )
    }

    pub fn actions(&self) -> &[Value] {
        &self.actions
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl QmpClient {
    /// Runs `tx` as one QMP `transaction`.
    pub async fn transaction(&self, tx: &Transaction) -> Result<(), QmpError> {
        self.run("transaction", json!({ "actions": tx.actions }))
            .await
    }

    /// The action types this QEMU accepts in a `transaction`, from `query-qmp-schema`.
    pub async fn transaction_actions(&self) -> Result<Vec<String>, QmpError> {
        let schema: Vec<Value> = self.query("query-qmp-schema", Value::Null).await?;
        let bad = |what: &str| QmpError::BadReply {
            command: "query-qmp-schema".into(),
            source: serde::de::Error::custom(what),
        };
        let find = |name: &str| schema.iter().find(|e| e["name"] == name);
        let members = |entry: &Value| entry["members"].as_array().cloned().unwrap_or_default();
        let member_type = |entry: &Value, member: &str| {
            members(entry)
                .iter()
                .find(|m| m["name"] == member)
                .and_then(|m| m["type"].as_str().map(str::to_owned))
        };
        let command = find("transaction").ok_or_else(|| bad("no transaction command"))?;
        let args = command["arg-type"]
            .as_str()
            .and_then(find)
            .ok_or_else(|| bad("no transaction arguments"))?;
        let array = member_type(args, "actions")
            .and_then(|t| find(&t))
            .ok_or_else(|| bad("no transaction actions"))?;
        let action = array["element-type"]
            .as_str()
            .and_then(find)
            .ok_or_else(|| bad("no transaction action type"))?;
        let tag = action["tag"]
            .as_str()
            .ok_or_else(|| bad("untagged action"))?;
        let kinds = member_type(action, tag)
            .and_then(|t| find(&t))
            .ok_or_else(|| bad("no action kind enum"))?;
        parse("query-qmp-schema", kinds["values"].clone())
    }
}
