//! One module per command; each returns an error with context for the one-line report.

use std::path::PathBuf;

use anyhow::bail;

use crate::cli::{Cli, Command};
use crate::repo::default_repo_dir;
use crate::snapshot_disk::Location;

mod backup;
mod catalog;
mod cluster;
mod coordinators;
mod copy_back;
mod files;
mod host;
mod members;
mod prune;
mod quickstart;
mod remote;
mod replicate;
mod restore;
mod serve;
mod snapshots;
mod up;
mod up_replica;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let repo: PathBuf = cli.repo.clone().unwrap_or_else(default_repo_dir);
    if let Some(urls) = cli.cluster.as_deref().filter(|u| !u.is_empty()) {
        return run_cluster(urls, cli.command, cli.json).await;
    }
    match cli.command {
        Command::Init(a) => {
            let r = crate::repo::Repo::open(&repo, true, a.chunk_size)?;
            if cli.json {
                crate::output::json(&serde_json::json!({
                    "repo": r.dir, "chunk_size": r.config.chunk_size
                }))
            } else {
                println!(
                    "repository {} (chunk size {})",
                    r.dir.display(),
                    crate::output::bytes(u64::from(r.config.chunk_size))
                );
                Ok(())
            }
        }
        Command::Backup(a) => backup::run(&repo, a, cli.json).await,
        Command::Snapshots(a) => snapshots::run(&repo, a, cli.json),
        Command::Prune(a) => prune::run(&Location::Repo(&repo), a, cli.json).await,
        Command::Restore(a) => restore::run(&Location::Repo(&repo), a, cli.json).await,
        Command::Quickstart(a) => quickstart::run(&Location::Repo(&repo), a, cli.json).await,
        Command::Serve(a) => serve::run(&Location::Repo(&repo), a, cli.json).await,
        Command::CopyBack(a) => copy_back::run(&Location::Repo(&repo), a, cli.json).await,
        Command::Files(c) => files::run(&Location::Repo(&repo), c, cli.json).await,
        Command::Host(c) => host::run_host(&repo, c, cli.json).await,
        Command::Vm(c) => host::run_vm(&repo, c, cli.json).await,
        Command::Up(a) => up::run(a, cli.json).await,
        Command::Coordinator(a) => match (a.config, a.command) {
            (Some(config), None) => members::coordinator(&config).await,
            _ => bail!("this command needs --cluster URL (or BORA_CLUSTER)"),
        },
        Command::Worker(a) => members::worker(&a.config).await,
        Command::StorageNode(a) => members::storage_node(&a.config).await,
        Command::Remote(c) => remote::run(&Location::Repo(&repo), c, cli.json).await,
        Command::Replicate(a) => replicate::run(&Location::Repo(&repo), a, cli.json).await,
        Command::Status
        | Command::Repair
        | Command::Storage(_)
        | Command::Cancel { .. }
        | Command::Catalog(_) => {
            bail!("this command needs --cluster URL (or BORA_CLUSTER)")
        }
    }
}

/// A command with `--cluster`: the cluster's coordinator holds the catalog.
async fn run_cluster(urls: &str, command: Command, json: bool) -> anyhow::Result<()> {
    match command {
        Command::Backup(a) => cluster::backup(urls, a, json).await,
        Command::Snapshots(a) => cluster::snapshots(urls, a, json).await,
        Command::Prune(a) => prune::run(&Location::Cluster(urls), a, json).await,
        Command::Restore(a) => restore::run(&Location::Cluster(urls), a, json).await,
        Command::Status => cluster::status(urls, json).await,
        Command::Repair => cluster::repair(urls, json).await,
        Command::Storage(c) => cluster::storage(urls, c, json).await,
        Command::Remote(c) => remote::run(&Location::Cluster(urls), c, json).await,
        Command::Replicate(a) => replicate::run(&Location::Cluster(urls), a, json).await,
        Command::Up(a) => up::run(a, json).await,
        Command::Coordinator(a) => match (a.config, a.command) {
            (_, Some(c)) => coordinators::run(urls, c, json).await,
            (Some(config), None) => members::coordinator(&config).await,
            (None, None) => bail!("bora coordinator needs --config FILE, or add/remove"),
        },
        Command::Catalog(c) => catalog::run(urls, c, json).await,
        Command::Worker(a) => members::worker(&a.config).await,
        Command::StorageNode(a) => members::storage_node(&a.config).await,
        Command::Init(a) => cluster::init(urls, a, json).await,
        Command::Cancel { job } => cluster::cancel(urls, &job, json).await,
        Command::Quickstart(a) => quickstart::run(&Location::Cluster(urls), a, json).await,
        Command::Serve(a) => serve::run(&Location::Cluster(urls), a, json).await,
        Command::CopyBack(a) => copy_back::run(&Location::Cluster(urls), a, json).await,
        Command::Files(c) => files::run(&Location::Cluster(urls), c, json).await,
        Command::Host(c) => cluster::host(urls, c, json).await,
        Command::Vm(c) => cluster::vm(urls, c, json).await,
    }
}
