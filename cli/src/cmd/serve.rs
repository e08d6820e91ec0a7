//! `bora serve SNAP --vm NAME --disk NAME --listen ADDR [--name EXPORT] [--writable]`.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cli::ServeArgs;

pub async fn run(_repo_dir: &Path, _args: ServeArgs, _json: bool) -> Result<()> {
    bail!("bora serve is not built yet")
}
