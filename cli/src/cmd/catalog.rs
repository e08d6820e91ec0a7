//! `bora catalog export --to DIR --cluster URLS`: the replicated catalog, read on the
//! leader at one point (linearizably), written as a coordinator's data-dir files
//! (`snapshots/`, `hosts/`, `membership.json`, fsynced). Restoring the catalog: start a
//! fresh coordinator with DIR as its `data-dir`; it imports the files once.

use std::time::Instant;

use anyhow::{Context, Result};

use bora_coordinator::service::CatalogExport;
use bora_proto::coordinator::ExportCatalogRequest;

use crate::cli::CatalogCommand;
use crate::cluster::{connect, status_err};
use crate::output;

pub async fn run(urls: &str, cmd: CatalogCommand, json: bool) -> Result<()> {
    let CatalogCommand::Export { to } = cmd;
    let started = Instant::now();
    let mut c = connect(urls).await?;
    let request = ExportCatalogRequest {};
    let answer = match c.client.export_catalog(request).await {
        Ok(r) => r,
        Err(s) if c.follow_leader(&s).await => c
            .client
            .export_catalog(request)
            .await
            .map_err(|s| status_err("exporting the catalog", s))?,
        Err(s) => return Err(status_err("exporting the catalog", s)),
    }
    .into_inner();
    let export = CatalogExport::try_from(answer)?;
    export
        .write_to(&to)
        .with_context(|| format!("exporting the catalog into {}", to.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        return output::json(&serde_json::json!({
            "dir": to,
            "snapshots": export.snapshots.len(),
            "hosts": export.hosts.len(),
            "storage_nodes": export.nodes.len(),
            "replicas": export.replicas,
            "term": export.term,
            "applied": export.applied,
            "duration_s": secs,
        }));
    }
    println!(
        "catalog exported to {}: {} snapshots, {} hosts, {} storage nodes (raft term {}, entry {}); \
         to restore, start a new coordinator with this directory as its data-dir",
        to.display(),
        export.snapshots.len(),
        export.hosts.len(),
        export.nodes.len(),
        export.term,
        export
            .applied
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
    );
    Ok(())
}
