//! `get`: copies a file, a directory (recursively) or a symlink (as a symlink) out of a
//! file system to a local path. Nothing local is overwritten or followed: files are created
//! with `O_EXCL`, and names from the (possibly corrupt) file system that could escape the
//! destination are refused.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{EntryKind, FileSystem, FilesError, MAX_DEPTH, PartitionInfo, Sink, display_path};

/// What a `get` wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GetReport {
    /// The path inside the file system.
    pub path: String,
    /// The local path written (the file, directory or symlink created).
    pub to: PathBuf,
    /// The partition read.
    pub partition: u32,
    /// Bytes of regular files written.
    pub size: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Paths of special files (devices, FIFOs, sockets) not copied.
    pub skipped: Vec<String>,
}

pub fn get(
    fs: &mut dyn FileSystem,
    part: &PartitionInfo,
    path: &[String],
    to: &Path,
    mut budget: u64,
) -> Result<GetReport, FilesError> {
    let top = fs.stat(path)?;
    let mut report = GetReport {
        path: display_path(path),
        partition: part.number,
        ..GetReport::default()
    };
    let existing = fs::symlink_metadata(to).ok();
    let (dest, merge) = match existing {
        Some(m) if m.is_dir() => match path.last() {
            Some(name) => (to.join(checked_name(name, path)?), false),
            // The root into an existing directory: its entries go into it.
            None => (to.to_path_buf(), true),
        },
        Some(_) if top.kind == EntryKind::Dir => {
            return Err(FilesError::Destination(format!(
                "{}: exists and is not a directory; {} is a directory",
                to.display(),
                report.path
            )));
        }
        Some(_) => {
            return Err(FilesError::Destination(format!(
                "{}: already exists (files get does not overwrite)",
                to.display()
            )));
        }
        None => (to.to_path_buf(), false),
    };
    report.to = dest.clone();
    let mut ctx = Ctx {
        report: &mut report,
        budget: &mut budget,
    };
    copy(fs, path, top.kind, top.size, &dest, merge, 0, &mut ctx)?;
    Ok(report)
}

/// A name from a directory listing, refused when it could leave the destination.
fn checked_name<'a>(name: &'a str, parent: &[String]) -> Result<&'a str, FilesError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FilesError::Destination(format!(
            "{}: refusing the unsafe file name {name:?} (corrupt file system?)",
            display_path(parent)
        )));
    }
    Ok(name)
}

struct Ctx<'a> {
    report: &'a mut GetReport,
    budget: &'a mut u64,
}

#[allow(clippy::too_many_arguments)]
fn copy(
    fs: &mut dyn FileSystem,
    path: &[String],
    kind: EntryKind,
    size: u64,
    dest: &Path,
    merge: bool,
    depth: usize,
    ctx: &mut Ctx<'_>,
) -> Result<(), FilesError> {
    match kind {
        EntryKind::File => {
            let mut f = fs::File::create_new(dest).map_err(FilesError::local(dest))?;
            let mut sink = Sink {
                out: &mut f,
                path: dest,
                budget: ctx.budget,
            };
            ctx.report.size += fs.copy_file(path, size, &mut sink)?;
            ctx.report.files += 1;
        }
        EntryKind::Symlink => {
            let target = fs.read_link(path)?;
            std::os::unix::fs::symlink(&target, dest).map_err(FilesError::local(dest))?;
            ctx.report.symlinks += 1;
        }
        EntryKind::Other => ctx.report.skipped.push(display_path(path)),
        EntryKind::Dir => {
            if depth >= MAX_DEPTH {
                return Err(FilesError::Destination(format!(
                    "{}: directories nested deeper than {MAX_DEPTH} (corrupt file system?)",
                    display_path(path)
                )));
            }
            if !merge {
                fs::create_dir(dest).map_err(FilesError::local(dest))?;
            }
            ctx.report.dirs += 1;
            let mut child = path.to_vec();
            for e in fs.list(path)? {
                let name = checked_name(&e.name, path)?;
                child.push(name.to_string());
                copy(
                    fs,
                    &child,
                    e.kind,
                    e.size,
                    &dest.join(name),
                    false,
                    depth + 1,
                    ctx,
                )?;
                child.pop();
            }
        }
    }
    Ok(())
}
