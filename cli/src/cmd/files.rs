//! `bora files ls|get`: file systems read straight out of a snapshot.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cli::FilesCommand;

pub async fn run(_repo_dir: &Path, _cmd: FilesCommand, _json: bool) -> Result<()> {
    bail!("bora files is not built yet")
}
