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
    /// A running cluster's coordinator URL(s), comma-separated (e.g. http://127.0.0.1:7100);
    /// without it, commands run embedded over --repo.
    #[arg(long, global = true, env = "BORA_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
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
    /// Forget a VM's snapshots a retention policy does not keep (their chunks stay until
    /// garbage collection; the newest snapshot is always kept).
    Prune(PruneArgs),
    /// Write a disk as it was at a snapshot.
    Restore(RestoreArgs),
    /// Build a sample VM disk, back it up twice, restore it and prove it bit-exact.
    Quickstart(QuickstartArgs),
    /// Export a snapshot's disk over NBD (instant recovery: QEMU can boot from it).
    Serve(ServeArgs),
    /// Write a snapshot disk with the changes saved in a serve overlay onto a disk
    /// (ends an instant recovery: the VM moves back to real storage).
    CopyBack(CopyBackArgs),
    /// Files inside a snapshot's disk (GPT/MBR; ext4, FAT, NTFS), without restoring it.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Hypervisor hosts Bora backs up VMs from.
    #[command(subcommand)]
    Host(HostCommand),
    /// VMs of the registered hosts.
    #[command(subcommand)]
    Vm(VmCommand),
    /// A whole local cluster in the foreground, each member its own child process.
    Up(UpArgs),
    /// One coordinator of a cluster (`--config FILE`), or change a running cluster's
    /// coordinators (`add`, `remove`; need --cluster).
    Coordinator(CoordinatorArgs),
    /// One worker of a cluster (agentless proxy: reads the hosts' disks).
    Worker(MemberArgs),
    /// One storage node of a cluster.
    StorageNode(MemberArgs),
    /// Cluster health: members, the ring, jobs (needs --cluster).
    Status,
    /// Copy every chunk onto each of its owners: after a storage node was down or joined
    /// (needs --cluster).
    Repair,
    /// The cluster's storage nodes (needs --cluster).
    #[command(subcommand)]
    Storage(StorageCommand),
    /// End a running backup job without a commit (needs --cluster; `status` lists jobs).
    /// A live VM's disks are released and its changes kept for the next backup.
    Cancel {
        /// The job id (the id of the snapshot it would have committed).
        job: String,
    },
    /// The cluster's catalog itself (snapshot records, hosts, storage membership).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Remote sites snapshots are replicated to (a second site for disaster recovery).
    #[command(subcommand)]
    Remote(RemoteCommand),
    /// Copy snapshots to a remote site: only indexes and the chunks it lacks cross the
    /// link, in their stored form; resumable.
    Replicate(ReplicateArgs),
}

/// `bora coordinator`: run one (`--config FILE`) or change the cluster's coordinators.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CoordinatorArgs {
    /// The coordinator's TOML config file (examples in deploy/): runs this coordinator
    /// in the foreground.
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<CoordinatorCommand>,
}

#[derive(Subcommand)]
pub enum CoordinatorCommand {
    /// Add a running coordinator with an empty data dir to the cluster (needs --cluster):
    /// it joins as a learner, catches up with the leader's log, then becomes a voter.
    Add {
        /// Its Raft id (`[raft] id` in its config): a new one, never an id a member had.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// HOST:PORT of its listener, as the other coordinators reach it.
        addr: String,
        /// How long it may take to catch up before the add gives up (it then stays a
        /// learner).
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        wait: u32,
    },
    /// Remove a coordinator from the cluster (needs --cluster), e.g. a dead one before
    /// adding its replacement; the leader itself may be removed (it steps down). The
    /// last one cannot be.
    Remove {
        /// Its Raft id (`bora status` lists them).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// Write the catalog (read from the leader at one point) into a new directory as a
    /// coordinator's data-dir files: to restore, start a fresh coordinator with that
    /// directory as its data-dir (needs --cluster).
    Export {
        /// A new (or empty) directory.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add a remote site: a cluster whose coordinator has a `[replica]` listener.
    Add(RemoteAddArgs),
    /// List the remotes (tokens are never shown).
    List,
    /// Remove a remote (its snapshots on the remote site stay).
    Remove {
        /// The remote's name.
        name: String,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("trust").required(true).args(["ca", "fingerprint", "insecure"])))]
pub struct RemoteAddArgs {
    pub name: String,
    /// The remote's replica listener: https://HOST:PORT (http:// with --insecure).
    pub url: String,
    /// Trust the remote's certificate if this CA (PEM file) signed it for the URL's host.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Trust only the certificate with this SHA-256 fingerprint (hex, colons allowed).
    #[arg(long, value_name = "SHA256")]
    pub fingerprint: Option<String>,
    /// File holding the token the remote accepts (copied into the remotes file, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Plaintext, without TLS: only to a loopback address, for tests.
    #[arg(long)]
    pub insecure: bool,
    /// Replicate these VMs by default (repeat; default: all).
    #[arg(long, value_name = "NAME")]
    pub vm: Vec<String>,
    /// Replicate new snapshots by themselves shortly after each backup (in a cluster: by
    /// its coordinator; embedded: at the end of `bora backup`).
    #[arg(long)]
    pub auto: bool,
    /// Replace a remote of the same name.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args)]
pub struct ReplicateArgs {
    /// The remote's name (see `bora remote list`).
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// Only this VM's snapshots (repeat; default: the remote's VMs, or all).
    #[arg(long, value_name = "NAME")]
    pub vm: Vec<String>,
    /// Connections used at once (fill a high-latency link).
    #[arg(long, value_name = "N", default_value_t = bora_replica::send::DEFAULT_STREAMS)]
    pub streams: usize,
    /// Bandwidth limit over all connections, bytes per second.
    #[arg(long, value_name = "BYTES")]
    pub limit: Option<u64>,
}

#[derive(Subcommand)]
pub enum StorageCommand {
    /// Add a running storage node to the ring (then `bora repair` moves its chunks to it).
    Add {
        id: String,
        /// HOST:PORT it listens on.
        addr: String,
    },
    /// Take a storage node out of the ring (run `bora repair` first while it is up).
    Remove { id: String },
}

#[derive(Args)]
pub struct MemberArgs {
    /// The member's TOML config file (examples in deploy/).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct UpArgs {
    /// Where the members keep their configs, data and logs (default: bora-cluster next to
    /// the embedded repository).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// IP:PORT of the coordinator; storage nodes take the next ports. Port 0 picks free ones.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Coordinators: their catalog is replicated with Raft (3 or 5 survive 1 or 2 down).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub coordinators: usize,
    /// With several coordinators: a Raft snapshot of the catalog every N log entries,
    /// keeping the last N/2 entries in the log (default 10000, keeping 1000).
    #[arg(long, value_name = "N")]
    pub raft_snapshot_every: Option<u64>,
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub storage_nodes: usize,
    /// Copies of every chunk (default: min(2, storage nodes)).
    #[arg(long, value_name = "R")]
    pub replicas: Option<u32>,
    /// How long a worker's range lease lasts without a heartbeat.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Bytes per block range a worker leases (rounded to chunks): smaller ranges spread a
    /// disk over more workers and make a lost range cheaper to redo.
    #[arg(long, value_name = "BYTES", default_value_t = 256 << 20)]
    pub range_bytes: u64,
    /// Cap each source's read rate per worker (bytes/s), to model a network-bound cluster.
    #[arg(long, value_name = "BYTES")]
    pub read_limit: Option<u64>,
    /// Ranges read at once from one hypervisor host, over all workers (default: no limit).
    #[arg(long, value_name = "N")]
    pub per_host_limit: Option<usize>,
    /// Receive second-site replication on IP:PORT (port 0 picks one): writes a CA, a
    /// certificate, its key and a random token under DIR/replica/ and prints how to add
    /// this cluster as a remote.
    #[arg(long, value_name = "ADDR")]
    pub replica_listen: Option<String>,
    /// With --replica-listen: plaintext instead of TLS (loopback addresses only; tests).
    #[arg(long, requires = "replica_listen")]
    pub replica_insecure: bool,
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// Register a host: one VM's QMP socket, or a directory of them.
    Add(HostAddArgs),
    /// List registered hosts.
    List,
    /// Forget a host (its snapshots stay).
    Remove { name: String },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("qmp-target").required(true).args(["qmp", "qmp_dir"])))]
pub struct HostAddArgs {
    pub name: String,
    /// One VM's QMP socket: unix:PATH (the VM is named by the file stem).
    #[arg(long, value_name = "unix:PATH")]
    pub qmp: Option<String>,
    /// Every *.qmp socket in DIR is a VM named by its file stem (Proxmox VE layout).
    #[arg(long, value_name = "DIR")]
    pub qmp_dir: Option<PathBuf>,
    /// Where the host's NBD server listens: unix:PATH or HOST:PORT (started through QMP
    /// if none runs there).
    #[arg(long, value_name = "ADDR")]
    pub nbd: Option<String>,
    /// VMs of this host backed up at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_concurrent: u32,
    /// Directory for fleecing scratch images during backups; the VMs' QEMU processes must
    /// be able to write it (default: scratch/ in the repository).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Replace a host registered under the same name.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// List VMs and their disks (asks each host over QMP).
    List {
        /// Only this host's VMs.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
}

#[derive(Args)]
pub struct InitArgs {
    /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB; default 256 KiB).
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
    /// The VM: with --image/--nbd, the VM the disk belongs to; alone, a VM of a registered
    /// host (repeat --vm to back up several VMs, concurrently up to each host's limit).
    #[arg(long, value_name = "NAME", required = true)]
    pub vm: Vec<String>,
    /// The disk's name (default for --image: the file stem; required with --nbd).
    #[arg(long, value_name = "NAME")]
    pub disk: Option<String>,
    /// Read every allocated block even when changed-block information exists.
    #[arg(long)]
    pub full: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    /// Keep the newest N snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the newest N days that have one (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the newest N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the newest N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Say what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
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

#[derive(Args)]
pub struct ServeArgs {
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    #[arg(long, value_name = "NAME")]
    pub disk: String,
    /// Where to listen: HOST:PORT (loopback unless you mean it) or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Export name (default: the disk's name).
    #[arg(long, value_name = "EXPORT")]
    pub name: Option<String>,
    /// Accept writes into a local copy-on-write overlay (the snapshot is never changed).
    #[arg(long)]
    pub writable: bool,
    /// Keep the overlay in DIR (implies --writable): it survives a restart of `serve`
    /// (serving DIR again resumes it) and `bora copy-back` writes it onto a disk.
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
}

#[derive(Args)]
pub struct CopyBackArgs {
    /// The overlay directory of `bora serve --overlay DIR` (not while it is served).
    #[arg(long, value_name = "DIR")]
    pub overlay: PathBuf,
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

/// Which disk of which snapshot, and which partition.
#[derive(Args)]
pub struct FilesTarget {
    /// Snapshot id, or `latest`.
    pub snapshot: String,
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    #[arg(long, value_name = "NAME")]
    pub disk: String,
    /// Partition number (1-based; default: the only partition with a recognised file
    /// system).
    #[arg(long, value_name = "N")]
    pub partition: Option<u32>,
}

#[derive(Subcommand)]
pub enum FilesCommand {
    /// List a directory (default: the root).
    Ls {
        #[command(flatten)]
        target: FilesTarget,
        /// Directory or file path inside the file system.
        path: Option<String>,
    },
    /// Copy a file or directory (recursively) out of the snapshot.
    Get {
        #[command(flatten)]
        target: FilesTarget,
        /// Path inside the file system.
        path: String,
        /// Local destination.
        #[arg(long, value_name = "LOCAL")]
        to: std::path::PathBuf,
    },
}
