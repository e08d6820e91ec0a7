//! One module per command; each returns an error with context for the one-line report.

use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::repo::default_repo_dir;

mod backup;
mod copy_back;
mod files;
mod host;
mod quickstart;
mod restore;
mod serve;
mod snapshots;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let repo: PathBuf = cli.repo.clone().unwrap_or_else(default_repo_dir);
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
        Command::Restore(a) => restore::run(&repo, a, cli.json).await,
        Command::Quickstart(a) => quickstart::run(&repo, a, cli.json).await,
        Command::Serve(a) => serve::run(&repo, a, cli.json).await,
        Command::CopyBack(a) => copy_back::run(&repo, a, cli.json).await,
        Command::Files(c) => files::run(&repo, c, cli.json).await,
        Command::Host(c) => host::run_host(&repo, c, cli.json).await,
        Command::Vm(c) => host::run_vm(&repo, c, cli.json).await,
    }
}
