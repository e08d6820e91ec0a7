//! `bora quickstart`: the whole product in one command on the embedded default.
//!
//! Builds a sample VM disk (an ext4 file system with files, made with `mkfs.ext4 -d`
//! without mounting anything, converted to qcow2), backs it up, changes files inside it
//! (`debugfs -w`), backs it up again, restores both snapshots and proves each bit-exact
//! with `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use bora_worker::restore::RestoreTarget;
use bora_worker::source::image::ImageFormat;

use super::backup::{BackupReport, backup_image};
use super::restore::{restore, restore_from};
use crate::cli::QuickstartArgs;
use crate::output;
use crate::repo::Repo;
use crate::snapshot_disk::{Location, open_at};

/// Where the quickstart keeps its snapshots: the local repository, or a running cluster.
enum Site<'a> {
    Repo(Repo),
    Cluster(&'a str),
}

impl Site<'_> {
    async fn backup(&self, image: &Path, quiet: bool) -> Result<BackupReport> {
        match self {
            Site::Repo(repo) => backup_image(repo, image, VM, Some(DISK), quiet).await,
            Site::Cluster(urls) => {
                let mut c = crate::cluster::connect(urls).await?;
                super::cluster::backup_image(&mut c, image, VM, Some(DISK)).await
            }
        }
    }

    async fn restore(&self, snapshot: &str, target: &RestoreTarget, quiet: bool) -> Result<()> {
        match self {
            Site::Repo(repo) => {
                restore(repo, snapshot, VM, DISK, None, target, quiet).await?;
            }
            Site::Cluster(urls) => {
                let o = open_at(&Location::Cluster(urls), snapshot, VM, DISK).await?;
                restore_from(o.store, o.sd, None, target, quiet).await?;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self {
            Site::Repo(repo) => format!("repository {}", repo.dir.display()),
            Site::Cluster(urls) => format!("cluster {urls}"),
        }
    }
}

const VM: &str = "quickstart";
const DISK: &str = "disk0";

async fn sh(program: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("cannot run {program} (run deploy/install.sh to install it)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Pseudo-random bytes (xorshift): incompressible, unlike anything else on the disk.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn log_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "2026-11-28T03:{:02}:{:02}Z web-01 nginx[812]: 10.0.{}.{} GET /api/v1/items/{} 200 {}\n",
                (i / 60) % 60,
                i % 60,
                i % 7,
                i % 251,
                i * 7919 % 100_000,
                512 + i % 4096
            )
        })
        .collect()
}

fn write_tree(root: &Path) -> Result<()> {
    for d in ["etc", "var/log", "data", "home/operator"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::write(root.join("etc/hostname"), "quickstart-vm\n")?;
    std::fs::write(root.join("var/log/access.log"), log_lines(200_000))?;
    std::fs::write(root.join("data/blob.bin"), noise(24 << 20, 42))?;
    std::fs::write(
        root.join("home/operator/README"),
        "This disk was made by bora quickstart.\n",
    )?;
    Ok(())
}

async fn compare(a: &Path, b: &Path) -> Result<()> {
    let (a, b) = (a.to_string_lossy(), b.to_string_lossy());
    sh("qemu-img", &["compare", "-q", &a, &b])
        .await
        .context("restored disk differs from the original")
}

/// The quickstart on the embedded default or against a running cluster (the sample
/// images must then be readable by its workers at the same path: run it on the cluster's
/// machine, e.g. after `bora up`).
pub async fn run(loc: &Location<'_>, args: QuickstartArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let temp;
    let work: PathBuf = match &args.workdir {
        Some(w) => {
            std::fs::create_dir_all(w)?;
            w.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("bora-quickstart-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let p = |name: &str| work.join(name);
    let s = |path: PathBuf| path.to_string_lossy().into_owned();
    if !json {
        println!(
            "building a {} MiB sample VM disk (ext4 with files) in {}",
            args.size_mib,
            work.display()
        );
    }
    let tree = p("tree");
    let _ = std::fs::remove_dir_all(&tree);
    write_tree(&tree)?;
    let size = format!("{}M", args.size_mib);
    let raw = s(p("disk.raw"));
    let _ = std::fs::remove_file(&raw);
    sh(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "quickstart",
            "-d",
            &s(tree.clone()),
            &raw,
            &size,
        ],
    )
    .await?;
    let v1 = p("disk-v1.qcow2");
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &raw, &s(v1.clone())],
    )
    .await?;

    let site = match loc {
        Location::Cluster(urls) => Site::Cluster(urls),
        Location::Repo(dir) => Site::Repo(Repo::open(dir, true, None)?),
    };
    let first = site.backup(&v1, json).await?;
    if !json {
        print!("first backup:  ");
        first.print_human();
    }

    // Change the VM's files: a new file, a changed config, a deleted log.
    std::fs::write(p("new.bin"), noise(6 << 20, 7))?;
    std::fs::write(p("hostname"), "quickstart-vm-renamed\n")?;
    for cmd in [
        format!("write {} /data/new.bin", s(p("new.bin"))),
        "rm /etc/hostname".to_string(),
        format!("write {} /etc/hostname", s(p("hostname"))),
        "rm /var/log/access.log".to_string(),
    ] {
        sh("debugfs", &["-w", "-R", &cmd, &raw]).await?;
    }
    let v2 = p("disk-v2.qcow2");
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "qcow2", &raw, &s(v2.clone())],
    )
    .await?;
    let second = site.backup(&v2, json).await?;
    if !json {
        print!("second backup: ");
        second.print_human();
    }

    // Restore both points in time and let QEMU judge them.
    let restore_started = Instant::now();
    let mut restored = Vec::new();
    for (report, original, name) in [
        (&second, &v2, "restored-v2.qcow2"),
        (&first, &v1, "restored-v1.qcow2"),
    ] {
        let out = p(name);
        let target = RestoreTarget::File {
            path: out.clone(),
            format: ImageFormat::Qcow2,
            force: true,
        };
        site.restore(report.meta.id.as_str(), &target, json).await?;
        compare(original, &out).await?;
        restored.push(out);
    }
    let restore_s = restore_started.elapsed().as_secs_f64();
    summary(
        &first,
        &second,
        restore_s,
        started.elapsed().as_secs_f64(),
        &site.describe(),
        json,
    )
}

fn summary(
    first: &BackupReport,
    second: &BackupReport,
    restore_s: f64,
    total_s: f64,
    site: &str,
    json: bool,
) -> Result<()> {
    let d1 = &first.meta.disks[0];
    let d2 = &second.meta.disks[0];
    let read = d1.stats.bytes_read + d2.stats.bytes_read;
    let stored = d1.stats.bytes_uploaded + d2.stats.bytes_uploaded;
    let chunks2 = d2.stats.chunks_new + d2.stats.chunks_reused;
    if json {
        return output::json(&serde_json::json!({
            "vm": VM,
            "snapshots": [first.to_json(), second.to_json()],
            "bytes_read": read,
            "bytes_stored": stored,
            "second_backup_chunks_reused": d2.stats.chunks_reused,
            "second_backup_chunks": chunks2,
            "restore_s": restore_s,
            "identical": true,
            "duration_s": total_s,
        }));
    }
    println!();
    println!("quickstart done in {total_s:.1} s — {site}");
    println!("  disk size        {}", output::bytes(d1.size));
    println!(
        "  read             {} (holes and zero blocks are never read)",
        output::bytes(read)
    );
    println!(
        "  stored           {} after dedup and zstd",
        output::bytes(stored)
    );
    println!(
        "  deduplicated     second backup reused {} of {} data chunks, uploaded {}",
        d2.stats.chunks_reused,
        chunks2,
        output::bytes(d2.stats.bytes_uploaded)
    );
    println!(
        "  speed            backup {}, restore of both snapshots in {:.1} s",
        output::rate(d1.stats.bytes_read, first.duration_s),
        restore_s
    );
    println!("  verified         both snapshots restored bit-exact (qemu-img compare)");
    println!(
        "next: bora snapshots --vm {VM}; bora restore latest --vm {VM} --disk {DISK} --to disk.qcow2"
    );
    Ok(())
}
