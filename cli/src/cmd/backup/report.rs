//! What a committed backup reports.

use bora_core::snapshot::SnapshotMeta;

use crate::output;

/// A committed backup, for reporting.
pub struct BackupReport {
    pub meta: SnapshotMeta,
    pub duration_s: f64,
}

impl BackupReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "snapshot": self.meta.id,
            "vm": self.meta.vm,
            "parent": self.meta.parent,
            "time": self.meta.time,
            "disks": self.meta.disks.iter().map(|d| {
                let cbt = d.cbt.as_ref();
                serde_json::json!({
                    "disk": d.disk,
                    "size": d.size,
                    "mode": cbt.map_or("full", |c| c.mode.as_str()),
                    "reason": cbt.and_then(|c| c.reason.clone()),
                    "base": cbt.and_then(|c| c.base.clone()),
                    "bitmap": cbt.and_then(|c| c.bitmap.clone()),
                    "bytes_read": d.stats.bytes_read,
                    "bytes_uploaded": d.stats.bytes_uploaded,
                    "chunks_new": d.stats.chunks_new,
                    "chunks_reused": d.stats.chunks_reused,
                    "chunks_zero": d.stats.chunks_zero,
                    "chunks_clean": d.stats.chunks_clean,
                })
            }).collect::<Vec<_>>(),
            "duration_s": self.duration_s,
        })
    }

    pub fn print_human(&self) {
        println!("snapshot {} of vm {}", self.meta.id, self.meta.vm);
        for d in &self.meta.disks {
            let mode = match &d.cbt {
                Some(c) if c.mode == "incremental" => "incremental".to_string(),
                Some(c) => format!("full ({})", c.reason.as_deref().unwrap_or("no reason")),
                None => "full".to_string(),
            };
            println!(
                "  disk {}: {} size, {mode}, {} read, {} uploaded ({} new chunks, {} reused, {} zero, {} unchanged) in {:.1} s ({})",
                d.disk,
                output::bytes(d.size),
                output::bytes(d.stats.bytes_read),
                output::bytes(d.stats.bytes_uploaded),
                d.stats.chunks_new,
                d.stats.chunks_reused,
                d.stats.chunks_zero,
                d.stats.chunks_clean,
                self.duration_s,
                output::rate(d.stats.bytes_read, self.duration_s),
            );
        }
    }
}

/// Prints the reports of one `backup` command: one JSON document (an object for one VM,
/// an array for several) or each report's text.
pub fn print_all(reports: &[BackupReport], json: bool) -> anyhow::Result<()> {
    if json {
        match reports {
            [one] => output::json(&one.to_json()),
            many => output::json(&serde_json::Value::Array(
                many.iter().map(BackupReport::to_json).collect(),
            )),
        }
    } else {
        for r in reports {
            r.print_human();
        }
        Ok(())
    }
}

/// Each VM once, in the order given: the same VM twice would have two backups tearing
/// down each other's freeze.
pub fn unique_vms(vms: &[String]) -> Vec<&String> {
    let mut unique: Vec<&String> = Vec::new();
    for vm in vms {
        if !unique.contains(&vm) {
            unique.push(vm);
        }
    }
    unique
}

/// The reports of a multi-VM backup, or one error naming every VM that failed (after
/// saying on stderr which ones did commit). `failed` holds failures found earlier.
pub fn collect_outcomes(
    outcomes: impl IntoIterator<Item = (String, anyhow::Result<BackupReport>)>,
    mut failed: Vec<String>,
) -> anyhow::Result<Vec<BackupReport>> {
    let mut reports = Vec::new();
    for (vm, r) in outcomes {
        match r {
            Ok(rep) => reports.push(rep),
            Err(e) => failed.push(format!("{vm}: {}", output::one_line(&e))),
        }
    }
    if !failed.is_empty() {
        for r in &reports {
            eprintln!("backed up vm {} as snapshot {}", r.meta.vm, r.meta.id);
        }
        anyhow::bail!("backup failed for {}", failed.join("; "));
    }
    Ok(reports)
}
