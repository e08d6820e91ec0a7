//! `bora backup --image PATH --vm NAME [--disk NAME]`.

use std::path::Path;

use anyhow::{Result, anyhow};

use bora_core::snapshot::SnapshotId;
use bora_worker::source::image::open_image;

use super::{BackupReport, DiskInput, Mode, backup_disks};
use crate::repo::Repo;

/// Backs up one image file as disk `disk` (default: the file stem) of `vm`. `quiet`: no
/// progress bar.
/// Why an image file is always read in full.
pub const NO_CBT: &str = "image files carry no changed-block information";

/// The disk an image is backed up as: `--disk`, else the file stem.
pub fn disk_name(image: &Path, disk: Option<&str>) -> Result<String> {
    match disk {
        Some(d) => Ok(d.to_string()),
        None => image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| {
                anyhow!(
                    "cannot derive a disk name from {}; pass --disk",
                    image.display()
                )
            }),
    }
}

pub async fn backup_image(
    repo: &Repo,
    image: &Path,
    vm: &str,
    disk: Option<&str>,
    quiet: bool,
) -> Result<BackupReport> {
    let disk = disk_name(image, disk)?;
    let source = open_image(image).await?;
    let parent = repo.catalog.latest(vm)?;
    let input = DiskInput {
        disk,
        source,
        source_desc: image.display().to_string(),
        mode: Mode::Full {
            reason: NO_CBT.into(),
        },
        next_bitmap: None,
    };
    backup_disks(
        repo,
        vm,
        SnapshotId::random(),
        parent.as_ref(),
        vec![input],
        quiet,
    )
    .await
}
