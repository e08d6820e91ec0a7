//! `bora catalog export --to DIR --cluster URLS`: the replicated catalog, read on the
//! leader at one point (linearizably), written as a coordinator's data-dir files
//! (`snapshots/`, `hosts/`, `membership.json`, `remotes.json` owner-only: it holds the
//! remotes' tokens; all fsynced). Restoring the catalog: start a
//! fresh coordinator with DIR as its `data-dir`; it imports the files once.

use std::time::Instant;

use anyhow::{Context, Result};

use bora_coordinator::service::CatalogExport;
use bora_proto::coordinator::ExportCatalogRequest;
use bora_replica::remote::Remote;

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
    let remotes = answer
        .remote_json
        .iter()
        .map(|j| serde_json::from_str::<Remote>(j))
        .collect::<Result<Vec<_>, _>>()
        .context("the coordinator sent a remote this bora cannot read")?;
    let export = CatalogExport::try_from(answer)?;
    export
        .write_to(&to)
        .with_context(|| format!("exporting the catalog into {}", to.display()))?;
    // remotes.json: owner-only (the remotes' tokens are in it), fsynced.
    for r in &remotes {
        bora_replica::remote::add(&to, r.clone(), false)
            .with_context(|| format!("exporting remote {} into {}", r.name, to.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        return output::json(&serde_json::json!({
            "dir": to,
            "snapshots": export.snapshots.len(),
            "hosts": export.hosts.len(),
            "storage_nodes": export.nodes.len(),
            "remotes": remotes.len(),
            "replicas": export.replicas,
            "term": export.term,
            "applied": export.applied,
            "duration_s": secs,
        }));
    }
    println!(
        "catalog exported to {}: {} snapshots, {} hosts, {} storage nodes, {} remotes (raft term {}, entry {}); \
         to restore, start a new coordinator with this directory as its data-dir",
        to.display(),
        export.snapshots.len(),
        export.hosts.len(),
        export.nodes.len(),
        remotes.len(),
        export.term,
        export
            .applied
            .map_or_else(|| "-".to_string(), |a| a.to_string()),
    );
    Ok(())
}
