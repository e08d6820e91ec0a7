//! The command line, as `../shared/CLI.md` defines it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bora",
    version,
    about = "Bora: Backup Once, Recover Any — image-based VM backup"
)]
pub struct Cli {
    /// Local repository of the embedded default.
    #[arg(long, global = true, env = "BORA_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug); BORA_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Create a repository (optional: backup creates one with defaults).
    Init(InitArgs),
    /// Back up a disk image.
    Backup(BackupArgs),
    /// List snapshots, oldest first.
    Snapshots(SnapshotsArgs),
    /// Write a disk as it was at a snapshot.
    Restore(RestoreArgs),
    /// Build a sample VM disk, back it up twice, restore it and prove it bit-exact.
    Quickstart(QuickstartArgs),
}

#[derive(Args)]
pub struct InitArgs {
    /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB; default 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u32>,
}

#[derive(Args)]
pub struct BackupArgs {
    /// A raw or qcow2 image file.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,
    /// An NBD export: nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(long, value_name = "URL")]
    pub nbd: Option<String>,
    /// With --nbd: the export's dirty bitmap recording writes since the parent snapshot.
    #[arg(long, value_name = "NAME", requires = "nbd")]
    pub bitmap: Option<String>,
    /// The VM the disk belongs to.
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    /// The disk's name (default for --image: the file stem; required with --nbd).
    #[arg(long, value_name = "NAME")]
    pub disk: Option<String>,
    /// Read every allocated block even when changed-block information exists.
    #[arg(long)]
    pub full: bool,
}

#[derive(Args)]
pub struct SnapshotsArgs {
    /// Only this VM's snapshots.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    #[arg(long, value_name = "NAME")]
    pub disk: String,
    /// A file or block device path, nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    /// Image format of a file target (default: qcow2 for *.qcow2, else raw).
    #[arg(long, value_parser = ["raw", "qcow2"])]
    pub format: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct QuickstartArgs {
    /// Where to build the sample disk (default: a temporary directory, removed after).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Size of the sample disk in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub size_mib: u64,
}
