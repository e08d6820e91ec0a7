//! `bora files`: partition tables (GPT, MBR, none) and file systems (ext4, FAT12/16/32,
//! NTFS) read straight out of a snapshot through a [`SnapshotReader`], without restoring
//! the disk: only the chunks the parsers touch are fetched.
//!
//! The parsers are third-party crates fed with data that may be corrupt. Every operation
//! runs on a blocking thread inside [`guarded`]: a panic in a crate becomes
//! [`FilesError::Crashed`], never a crash of the process, and loops that a corrupt file
//! system could make endless (directory listings, recursion) are bounded.

mod ext4;
mod extract;
mod fat;
mod ntfs;
mod table;
mod view;

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use serde::Serialize;

use crate::snapshot_reader::SnapshotReader;

pub use extract::GetReport;
pub use table::{PartitionInfo, TableKind};

/// A file system `bora files` can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext4,
    Fat,
    Ntfs,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Ext4 => "ext4",
            FsKind::Fat => "FAT",
            FsKind::Ntfs => "NTFS",
        })
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A device node, FIFO or socket (ext4): listed, skipped by `get`.
    Other,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Bytes (0 for directories).
    pub size: u64,
    /// Last modification, RFC 3339 UTC; `None` where the file system has none (FAT root).
    pub mtime: Option<String>,
}

/// A listing of `path` (the entry itself when `path` is not a directory).
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub partition: PartitionInfo,
    pub path: String,
    pub entries: Vec<Entry>,
}

/// Why a `files` operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("the disk has no partition table and no recognised file system (ext4, FAT, NTFS)")]
    NoFileSystem,
    #[error(
        "no partition holds a recognised file system (ext4, FAT, NTFS); partitions: {partitions}"
    )]
    NoRecognisedPartition { partitions: String },
    #[error("several partitions hold a file system, choose one with --partition: {partitions}")]
    Ambiguous { partitions: String },
    #[error("partition {number} does not exist (partitions: {partitions})")]
    NoSuchPartition { number: u32, partitions: String },
    #[error("partition {number} holds no recognised file system (ext4, FAT, NTFS)")]
    Unrecognised { number: u32 },
    #[error("partition table: {0}")]
    Table(String),
    #[error("{fs} file system is corrupt or unsupported: {msg}")]
    Corrupt { fs: FsKind, msg: String },
    #[error("{stage} crashed on corrupt data: {msg}")]
    Crashed { stage: String, msg: String },
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: not a directory")]
    NotADirectory { path: String },
    #[error("{}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Destination(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FilesError {
    fn local(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
        move |source| FilesError::Local {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A blocking view of one file system, addressed by normalised path components.
pub(crate) trait FileSystem {
    /// The entry at `path`, not following a final symlink; the root is a directory "/".
    fn stat(&mut self, path: &[String]) -> Result<Entry, FilesError>;
    /// The entries of directory `path` (without "." and "..").
    fn list(&mut self, path: &[String]) -> Result<Vec<Entry>, FilesError>;
    /// The target of symlink `path`.
    fn read_link(&mut self, path: &[String]) -> Result<String, FilesError>;
    /// Streams regular file `path` (`size` bytes by its entry) into `out` in pieces;
    /// returns the bytes written.
    fn copy_file(
        &mut self,
        path: &[String],
        size: u64,
        out: &mut Sink<'_>,
    ) -> Result<u64, FilesError>;
}

/// Where a file being copied out goes.
pub(crate) struct Sink<'a> {
    pub out: &'a mut dyn std::io::Write,
    pub path: &'a Path,
    /// Bytes that may still be written by this `get` (a bound for tests over corrupt file
    /// systems whose sizes can be anything).
    pub budget: &'a mut u64,
}

impl Sink<'_> {
    /// Copies up to `size` bytes from `read` (a `read(2)`-like function: 0 at the end) in
    /// pieces of [`PIECE`] bytes.
    pub fn pump(
        &mut self,
        size: u64,
        mut read: impl FnMut(&mut [u8]) -> Result<usize, FilesError>,
    ) -> Result<u64, FilesError> {
        let mut buf = vec![0u8; PIECE.min(usize::try_from(size).unwrap_or(PIECE)).max(1)];
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(buf.len() as u64) as usize;
            let n = read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            if n as u64 > *self.budget {
                return Err(FilesError::Destination(format!(
                    "{}: more bytes than this copy may write",
                    self.path.display()
                )));
            }
            *self.budget -= n as u64;
            self.out
                .write_all(&buf[..n])
                .map_err(FilesError::local(self.path))?;
            done += n as u64;
        }
        Ok(done)
    }
}

/// Most entries read from one directory: a corrupt file system can make a listing endless
/// (a cycle in a cluster chain), a real one stays far below.
pub(crate) const MAX_DIR_ENTRIES: usize = 10_000_000;
/// Deepest directory nesting `get` follows.
pub(crate) const MAX_DEPTH: usize = 256;
/// Bytes moved per read when streaming a file out.
pub(crate) const PIECE: usize = 1 << 20;

/// Path components of `path` inside a file system: absolute or not, empty components and
/// "." dropped, ".." goes up (never above the root).
pub fn normalize(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// `/a/b` for components `[a, b]`.
pub fn display_path(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

/// RFC 3339 UTC of a Unix time; `None` when out of range.
pub(crate) fn rfc3339(secs: i64, nanos: u32) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .replace_nanosecond(nanos.min(999_999_999))
        .ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Bytes as B/KiB/MiB/GiB with one decimal (for partition lists in errors).
pub(crate) use bora_core::units::human_bytes as human;

thread_local! {
    /// Whether this thread is inside [`guarded`]: its panics are turned into errors.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Makes panics inside [`guarded`] sections silent (they are reported as errors instead);
/// other panics still reach the previous hook. Call once from a binary before using this
/// module; without it a caught panic still prints the default panic message.
pub fn quiet_guarded_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                tracing::debug!("parser panic caught: {info}");
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into [`FilesError::Crashed`] naming `stage` as it was when
/// the panic happened (the parser at work).
pub(crate) fn guarded<T>(
    stage: &Cell<&'static str>,
    f: impl FnOnce() -> Result<T, FilesError>,
) -> Result<T, FilesError> {
    let was = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    r.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        Err(FilesError::Crashed {
            stage: stage.get().to_string(),
            msg,
        })
    })
}

/// Runs `op` on the selected file system on a blocking thread, guarded.
async fn with_fs<T: Send + 'static>(
    reader: &Arc<SnapshotReader>,
    partition: Option<u32>,
    op: impl FnOnce(&PartitionInfo, &mut dyn FileSystem) -> Result<T, FilesError> + Send + 'static,
) -> Result<(PartitionInfo, T), FilesError> {
    let reader = reader.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let stage = Cell::new("the partition table reader");
        guarded(&stage, || {
            let layout = table::scan(&reader, &handle)?;
            let part = layout.select(partition)?;
            let kind = part.fs.ok_or(FilesError::Unrecognised {
                number: part.number,
            })?;
            let view = view::PartitionView::new(&reader, &handle, part.start, part.size);
            stage.set(match kind {
                FsKind::Ext4 => "the ext4 reader",
                FsKind::Fat => "the FAT reader",
                FsKind::Ntfs => "the NTFS reader",
            });
            let mut fs: Box<dyn FileSystem> = match kind {
                FsKind::Ext4 => Box::new(ext4::Ext4Fs::mount(view)?),
                FsKind::Fat => Box::new(fat::FatFs::mount(view)?),
                FsKind::Ntfs => Box::new(ntfs::NtfsFs::mount(view)?),
            };
            let out = op(&part, fs.as_mut())?;
            Ok((part, out))
        })
    })
    .await
    .map_err(|e| FilesError::Internal(e.to_string()))?
}

/// The partitions of the disk (number 0 = the whole disk, when it has no partition table).
pub async fn partitions(reader: &Arc<SnapshotReader>) -> Result<Vec<PartitionInfo>, FilesError> {
    let reader = reader.clone();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let stage = Cell::new("the partition table reader");
        guarded(&stage, || Ok(table::scan(&reader, &handle)?.partitions))
    })
    .await
    .map_err(|e| FilesError::Internal(e.to_string()))?
}

/// Lists `path` on `partition` (default: the only one with a recognised file system).
pub async fn list(
    reader: &Arc<SnapshotReader>,
    partition: Option<u32>,
    path: &str,
) -> Result<Listing, FilesError> {
    let comps = normalize(path);
    let shown = display_path(&comps);
    let (partition, entries) = with_fs(reader, partition, move |_, fs| {
        let e = fs.stat(&comps)?;
        match e.kind {
            EntryKind::Dir => fs.list(&comps),
            _ => Ok(vec![e]),
        }
    })
    .await?;
    Ok(Listing {
        partition,
        path: shown,
        entries,
    })
}

/// Copies `path` (a file, a directory recursively, or a symlink as a symlink) to the local
/// `to`: into it when it is an existing directory, else as it. Nothing is overwritten.
pub async fn get(
    reader: &Arc<SnapshotReader>,
    partition: Option<u32>,
    path: &str,
    to: &Path,
) -> Result<GetReport, FilesError> {
    get_bounded(reader, partition, path, to, u64::MAX).await
}

/// [`get`] writing at most `budget` bytes of file contents.
pub(crate) async fn get_bounded(
    reader: &Arc<SnapshotReader>,
    partition: Option<u32>,
    path: &str,
    to: &Path,
    budget: u64,
) -> Result<GetReport, FilesError> {
    let comps = normalize(path);
    let to = to.to_path_buf();
    let (_, report) = with_fs(reader, partition, move |part, fs| {
        extract::get(fs, part, &comps, &to, budget)
    })
    .await?;
    Ok(report)
}
