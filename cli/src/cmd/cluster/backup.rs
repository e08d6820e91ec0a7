//! `backup` with `--cluster`: the coordinator splits each disk into ranges and the
//! workers back them up; the CLI waits for the commit. Live VMs (`--vm` alone) are frozen
//! by the coordinator through the host's QMP socket and read incrementally when the
//! parent's dirty bitmap is there; `--nbd --bitmap` exports are read incrementally on the
//! same conditions as embedded; image files are read whole (deduplicated).
//! Disconnecting (Ctrl-C) does not cancel a job: it belongs to the coordinator and
//! finishes there (`bora cancel JOB` ends it). The CLI names each job (its snapshot id)
//! so that it can ask again through a leader change and get the same job
//! ([`Cluster::call`]).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use bora_core::snapshot::SnapshotId;
use bora_proto::coordinator::job_status::State;
use bora_proto::coordinator::{
    BackupVmRequest, DiskSource, JobStatus, StartBackupRequest, WaitJobRequest,
};
use bora_worker::nbd::{NbdClient, parse_nbd_url};
use bora_worker::source::image::probe;

use crate::cli::BackupArgs;
use crate::cluster::{Cluster, connect, parse_meta, status_err};
use crate::cmd::backup::Mode;
use crate::cmd::backup::image::{NO_CBT, disk_name};
use crate::cmd::backup::nbd::mode;
use crate::cmd::backup::report::{BackupReport, collect_outcomes, print_all, unique_vms};
use crate::output;
use crate::repo::DEFAULT_CHUNK_SIZE as CHUNK_SIZE;

/// How long one WaitJob call waits before the CLI asks again.
const WAIT_MS: u32 = 10_000;

pub async fn backup(urls: &str, args: BackupArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut c = connect(urls).await?;
    let reports = match (&args.image, &args.nbd) {
        (None, None) => {
            if args.disk.is_some() {
                bail!("--disk goes with --image or --nbd; --vm alone backs up every disk");
            }
            live_vms(&mut c, &args.vm, args.full, started).await?
        }
        (Some(_), Some(_)) => bail!("give either --image or --nbd, not both"),
        _ => {
            let [vm] = args.vm.as_slice() else {
                bail!("--image and --nbd back up one disk of one --vm");
            };
            let disk = match (&args.image, &args.nbd) {
                (Some(image), _) => image_source(image, args.disk.as_deref()).await?,
                (_, Some(url)) => nbd_source(&mut c, vm, url, &args).await?,
                _ => unreachable!("matched above"),
            };
            vec![one_disk(&mut c, vm, disk, started).await?]
        }
    };
    print_all(&reports, json)
}

/// Backs up image `image` as disk `disk` of `vm` (disk name: the file stem by default).
pub async fn backup_image(
    c: &mut Cluster,
    image: &Path,
    vm: &str,
    disk: Option<&str>,
) -> Result<BackupReport> {
    let source = image_source(image, disk).await?;
    one_disk(c, vm, source, Instant::now()).await
}

/// Runs a job backing up one disk of `vm` and waits for it.
async fn one_disk(
    c: &mut Cluster,
    vm: &str,
    disk: DiskSource,
    started: Instant,
) -> Result<BackupReport> {
    // The job's id is chosen here, so that asking again after a leader change gets the
    // same job back.
    let request = StartBackupRequest {
        vm: vm.to_string(),
        host: "images".into(),
        chunk_size: CHUNK_SIZE,
        disks: vec![disk],
        job: SnapshotId::random().to_string(),
    };
    let job = c
        .call(|mut client| {
            let request = request.clone();
            async move { client.start_backup(request).await }
        })
        .await
        .map_err(|s| status_err(&format!("backup of vm {vm}"), s))?
        .job;
    let status = wait(c, &job).await?;
    committed(vm, &job, status, started)
}

/// Backs up registered VMs live, all at once (the coordinator's per-host limit applies
/// to their reads); reports every VM's outcome.
async fn live_vms(
    c: &mut Cluster,
    vms: &[String],
    full: bool,
    started: Instant,
) -> Result<Vec<BackupReport>> {
    let mut jobs = Vec::new();
    let mut failed = Vec::new();
    for vm in unique_vms(vms) {
        let request = BackupVmRequest {
            vm: vm.clone(),
            full,
            job: SnapshotId::random().to_string(),
        };
        let answer = c
            .call(|mut client| {
                let request = request.clone();
                async move { client.backup_vm(request).await }
            })
            .await;
        match answer {
            Ok(r) => jobs.push((vm.clone(), r.job)),
            Err(s) => failed.push(format!(
                "{vm}: {}",
                output::one_line(&status_err(&format!("backup of vm {vm}"), s))
            )),
        }
    }
    let waits = jobs.iter().map(|(vm, job)| {
        let mut c = c.clone();
        async move {
            let r = match wait(&mut c, job).await {
                Ok(s) => committed(vm, job, s, started),
                Err(e) => Err(e),
            };
            (vm.clone(), r)
        }
    });
    collect_outcomes(futures::future::join_all(waits).await, failed)
}

/// The report of job `job` of `vm` when it committed; its error otherwise.
fn committed(vm: &str, job: &str, status: JobStatus, started: Instant) -> Result<BackupReport> {
    match State::try_from(status.state) {
        Ok(State::Committed) => Ok(BackupReport {
            meta: parse_meta(&status.snapshot_json)?,
            duration_s: started.elapsed().as_secs_f64(),
        }),
        Ok(State::Cancelled) => {
            bail!("backup job {job} of vm {vm} was cancelled; nothing was committed")
        }
        _ => bail!("backup job {job} of vm {vm} failed: {}", status.error),
    }
}

/// An NBD export as a cluster source, incremental when `--bitmap` names the bitmap the
/// VM's latest snapshot of this disk was taken with (and size and chunk size match).
async fn nbd_source(c: &mut Cluster, vm: &str, url: &str, args: &BackupArgs) -> Result<DiskSource> {
    let disk = args
        .disk
        .clone()
        .ok_or_else(|| anyhow!("--nbd needs --disk NAME"))?;
    // The workers read the export; its size comes from one look at it here.
    let (addr, export) = parse_nbd_url(url).map_err(|e| anyhow!(e))?;
    let client = NbdClient::connect(&addr, &export, &[])
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let size = client.size();
    let _ = client.disconnect().await;
    let parent = c.snapshots(Some(vm)).await?.pop();
    let parent_disk = parent.as_ref().and_then(|p| p.disk(&disk));
    let bitmap = args.bitmap.as_deref();
    let m = mode(args.full, bitmap, parent_disk, size, CHUNK_SIZE);
    let (inc_bitmap, parent_snapshot) = match (&m, &parent) {
        (Mode::Incremental { base }, Some(p)) => (base.clone(), p.id.to_string()),
        _ => (String::new(), String::new()),
    };
    let cbt = m.cbt(bitmap.map(str::to_string));
    Ok(DiskSource {
        name: disk,
        source: url.to_string(),
        size,
        bitmap: inc_bitmap,
        parent_snapshot,
        cbt_json: serde_json::to_string(&cbt).context("encoding the disk's CBT record")?,
    })
}

/// An image file as a cluster source. The workers open it, so it must be at the same
/// path on every worker (shared storage).
async fn image_source(image: &Path, disk: Option<&str>) -> Result<DiskSource> {
    let image = std::path::absolute(image)
        .with_context(|| format!("cannot resolve {}", image.display()))?;
    let disk = disk_name(&image, disk)?;
    let info = probe(&image).await?;
    let cbt = Mode::Full {
        reason: NO_CBT.into(),
    }
    .cbt(None);
    Ok(DiskSource {
        name: disk,
        source: image.display().to_string(),
        size: info.size,
        cbt_json: serde_json::to_string(&cbt).context("encoding the disk's CBT record")?,
        ..Default::default()
    })
}

/// Long-polls job `job` until it ends.
pub async fn wait(c: &mut Cluster, job: &str) -> Result<JobStatus> {
    loop {
        let request = WaitJobRequest {
            job: job.to_string(),
            timeout_ms: WAIT_MS,
        };
        // Jobs are replicated: after a leader change the new leader knows the job.
        let s = c
            .call(|mut client| {
                let request = request.clone();
                async move { client.wait_job(request).await }
            })
            .await
            .map_err(|s| status_err(&format!("job {job}"), s))?;
        if s.state != State::Running as i32 {
            return Ok(s);
        }
        tracing::info!(
            job,
            done = s.ranges_done,
            total = s.ranges_total,
            "backup running"
        );
    }
}
