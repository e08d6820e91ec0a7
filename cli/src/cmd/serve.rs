//! `bora serve SNAP --vm NAME --disk NAME --listen ADDR [--name EXPORT] [--writable |
//! --overlay DIR]`:
//! exports a snapshot's disk over NBD until SIGINT or SIGTERM. Listen on loopback
//! (`127.0.0.1:PORT`) or a unix socket unless the network is trusted: NBD has no
//! authentication here. The only stdout line is the URL (or `--json` object) once serving.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

use bora_worker::serve::{Export, ListenAddr, Server};
use bora_worker::snapshot_reader::{SnapshotReader, default_cache_chunks};

use crate::cli::ServeArgs;
use crate::snapshot_disk::{Location, Opened, SnapshotDisk, open_at};

pub async fn run(loc: &Location<'_>, args: ServeArgs, json: bool) -> Result<()> {
    let listen = ListenAddr::parse(&args.listen)?;
    let Opened { sd, store, repo } = open_at(loc, &args.snapshot, &args.vm, &args.disk).await?;
    let SnapshotDisk { meta, disk, index } = sd;
    let chunk_size = index.chunk_size();
    let reader = Arc::new(SnapshotReader::new(
        store,
        Arc::new(index),
        default_cache_chunks(chunk_size),
    ));
    let name = args.name.as_deref().unwrap_or(&args.disk);
    let mut export = Export::new(name, &args.vm, &args.disk, reader)?;
    if let Some(dir) = &args.overlay {
        export = export.writable_saved(dir, meta.id.as_str())?;
    } else if args.writable {
        // A throwaway overlay lives in the repository's scratch space, or the system's.
        let dir = match &repo {
            Some(r) => r.dir.join("scratch"),
            None => std::env::temp_dir(),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        export = export.writable(&dir)?;
    }
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    let server = Server::bind(&listen, Arc::new(export)).await?;
    if !server.is_local() {
        eprintln!(
            "warning: {} is reachable from other machines and NBD has no authentication; \
             prefer 127.0.0.1:PORT or unix:PATH",
            args.listen
        );
    }
    let url = server.url();
    let line = if json {
        serde_json::to_string(&serde_json::json!({
            "url": url,
            "export": name,
            "size": disk.size,
            "snapshot": meta.id.to_string(),
            "writable": args.writable || args.overlay.is_some(),
            "overlay": args.overlay,
        }))?
    } else {
        format!("serving {url}")
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    tracing::info!(snapshot = %meta.id, vm = %args.vm, disk = %args.disk, %url, "serving");
    server
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await?;
    Ok(())
}
