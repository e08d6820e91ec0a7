//! `bora backup`: `--image PATH`, `--nbd URL` or `--vm NAME` (a registered QEMU VM).
//! Every form ends in [`backup_disks`]: back up each disk through the coordinator's job
//! runner and the worker's pipeline, then commit one snapshot.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use bora_coordinator::backup::{DiskJob, backup_disk};
use bora_core::progress::Progress;
use bora_core::snapshot::{
    CbtRecord, SNAPSHOT_FORMAT_VERSION, SnapshotId, SnapshotMeta, check_name, now_rfc3339,
};
use bora_core::store::ChunkStore;
use bora_worker::pipeline::{PipelineOptions, SeenDigests, SourceWorker};
use bora_worker::source::BlockSource;

use crate::cli::BackupArgs;

use crate::progress::Bar;
use crate::repo::Repo;

pub mod image;
pub mod live;
pub mod nbd;
pub mod report;
pub mod vm;

pub use image::backup_image;
pub use report::BackupReport;

/// How a disk is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only chunks the source's dirty bitmap (named here) marks; the rest from the parent
    /// snapshot.
    Incremental { base: String },
    /// Every allocated chunk, deduplicated; why no incremental was possible.
    Full { reason: String },
}

impl Mode {
    /// What a snapshot records of a disk read in this mode; `next_bitmap` is the bitmap
    /// the next backup starts from.
    pub fn cbt(self, next_bitmap: Option<String>) -> CbtRecord {
        match self {
            Mode::Incremental { base } => CbtRecord {
                mode: "incremental".into(),
                reason: None,
                base: Some(base),
                bitmap: next_bitmap,
            },
            Mode::Full { reason } => CbtRecord {
                mode: "full".into(),
                reason: Some(reason),
                base: None,
                bitmap: next_bitmap,
            },
        }
    }
}

/// One disk to back up.
pub struct DiskInput {
    pub disk: String,
    pub source: Arc<dyn BlockSource>,
    /// Where the data comes from, for the operator.
    pub source_desc: String,
    pub mode: Mode,
    /// The dirty bitmap recording changes after this snapshot, if the source has one.
    pub next_bitmap: Option<String>,
}

/// Backs up `disks` of `vm` as snapshot `id` (child of `parent`) and commits it. Nothing
/// is committed unless every disk succeeds.
pub async fn backup_disks(
    repo: &Repo,
    vm: &str,
    id: SnapshotId,
    parent: Option<&SnapshotMeta>,
    disks: Vec<DiskInput>,
    quiet: bool,
) -> Result<BackupReport> {
    let started = Instant::now();
    check_name("vm", vm).map_err(|e| anyhow!(e))?;
    for d in &disks {
        check_name("disk", &d.disk).map_err(|e| anyhow!(e))?;
    }
    let store: Arc<dyn ChunkStore> = repo.store.clone();
    let total: u64 = disks.iter().map(|d| d.source.size()).sum();
    let progress = Arc::new(Progress::default());
    let bar = Bar::start(&format!("backup {vm}"), total, progress.clone(), quiet);
    let seen = Arc::new(SeenDigests::default());
    let mut snaps = Vec::with_capacity(disks.len());
    for d in disks {
        let worker = SourceWorker {
            source: d.source.clone(),
            store: store.clone(),
            seen: seen.clone(),
            opts: PipelineOptions::default(),
            progress: progress.clone(),
        };
        let mut snap = backup_disk(
            store.as_ref(),
            &worker,
            DiskJob {
                job: id.to_string(),
                vm: vm.to_string(),
                disk: d.disk.clone(),
                size: d.source.size(),
                chunk_size: repo.config.chunk_size,
                source: d.source_desc.clone(),
                parent: parent.and_then(|p| p.disk(&d.disk)),
                concurrency: 2,
                incremental: matches!(d.mode, Mode::Incremental { .. }),
            },
        )
        .await
        .with_context(|| {
            format!(
                "backup of {} failed; earlier snapshots are unaffected",
                d.source_desc
            )
        })?;
        snap.cbt = Some(d.mode.cbt(d.next_bitmap));
        snaps.push(snap);
    }
    bar.finish();
    let meta = SnapshotMeta {
        format: SNAPSHOT_FORMAT_VERSION,
        id,
        vm: vm.to_string(),
        time: now_rfc3339(),
        parent: parent.map(|p| p.id.clone()),
        disks: snaps,
    };
    repo.catalog.commit(&meta)?;
    Ok(BackupReport {
        meta,
        duration_s: started.elapsed().as_secs_f64(),
    })
}

pub async fn run(repo_dir: &Path, args: BackupArgs, json: bool) -> Result<()> {
    let repo = Repo::open(repo_dir, true, None)?;
    let one_vm = || match args.vm.as_slice() {
        [vm] => Ok(vm.as_str()),
        _ => Err(anyhow!("--image and --nbd back up one disk of one --vm")),
    };
    let reports = match (&args.image, &args.nbd) {
        (Some(image), None) => {
            // Image files carry no changed-block information: every backup reads all
            // allocated data, so --full changes nothing here.
            vec![backup_image(&repo, image, one_vm()?, args.disk.as_deref(), json).await?]
        }
        (None, Some(url)) => vec![nbd::run(&repo, &args, one_vm()?, url, json).await?],
        (None, None) => {
            if args.disk.is_some() {
                bail!("--disk goes with --image or --nbd; --vm alone backs up every disk");
            }
            vm::run(&repo, &args.vm, args.full, json).await?
        }
        (Some(_), Some(_)) => bail!("give either --image or --nbd, not both"),
    };
    let vms: Vec<String> = reports.iter().map(|r| r.meta.vm.clone()).collect();
    super::replicate::after_backup(repo, &vms).await;
    report::print_all(&reports, json)
}
