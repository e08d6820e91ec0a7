//! ext2/3/4 through `ext4-view` (read-only, pure Rust, journal-aware), over a partition
//! view that implements its `Ext4Read`.

use ext4_view::{Ext4, Ext4Error, Metadata};

use super::view::PartitionView;
use super::{
    Entry, EntryKind, FileSystem, FilesError, FsKind, MAX_DIR_ENTRIES, Sink, display_path, rfc3339,
};

pub struct Ext4Fs {
    fs: Ext4,
}

impl Ext4Fs {
    pub fn mount(view: PartitionView) -> Result<Ext4Fs, FilesError> {
        let fs = Ext4::load(Box::new(view)).map_err(corrupt)?;
        Ok(Ext4Fs { fs })
    }
}

fn corrupt(e: Ext4Error) -> FilesError {
    FilesError::Corrupt {
        fs: FsKind::Ext4,
        msg: e.to_string(),
    }
}

/// Maps "not found"/"not a directory" to their own errors naming `path`.
fn at(path: &[String]) -> impl FnOnce(Ext4Error) -> FilesError + '_ {
    move |e| match e {
        Ext4Error::NotFound => FilesError::NotFound {
            path: display_path(path),
        },
        Ext4Error::NotADirectory => FilesError::NotADirectory {
            path: display_path(path),
        },
        e => corrupt(e),
    }
}

fn entry(name: String, m: &Metadata) -> Entry {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_regular_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    let t = m.modified();
    Entry {
        name,
        kind,
        size: if kind == EntryKind::Dir { 0 } else { m.len() },
        mtime: rfc3339(t.seconds(), t.nanoseconds()),
    }
}

impl FileSystem for Ext4Fs {
    fn stat(&mut self, path: &[String]) -> Result<Entry, FilesError> {
        let m = self
            .fs
            .symlink_metadata(display_path(path).as_str())
            .map_err(at(path))?;
        let name = path.last().cloned().unwrap_or_else(|| "/".into());
        Ok(entry(name, &m))
    }

    fn list(&mut self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let mut out = Vec::new();
        for e in self
            .fs
            .read_dir(display_path(path).as_str())
            .map_err(at(path))?
        {
            let e = e.map_err(corrupt)?;
            let name = e.file_name();
            let name = match name.as_str() {
                Ok(s) => s.to_string(),
                Err(_) => name.display().to_string(),
            };
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_DIR_ENTRIES {
                return Err(FilesError::Corrupt {
                    fs: FsKind::Ext4,
                    msg: format!(
                        "{}: more than {MAX_DIR_ENTRIES} entries",
                        display_path(path)
                    ),
                });
            }
            let m = e.metadata().map_err(corrupt)?;
            out.push(entry(name, &m));
        }
        Ok(out)
    }

    fn read_link(&mut self, path: &[String]) -> Result<String, FilesError> {
        let target = self
            .fs
            .read_link(display_path(path).as_str())
            .map_err(at(path))?;
        Ok(match target.to_str() {
            Ok(s) => s.to_string(),
            Err(_) => target.display().to_string(),
        })
    }

    fn copy_file(
        &mut self,
        path: &[String],
        size: u64,
        out: &mut Sink<'_>,
    ) -> Result<u64, FilesError> {
        let mut f = self
            .fs
            .open(display_path(path).as_str())
            .map_err(at(path))?;
        out.pump(size, |buf| f.read_bytes(buf).map_err(corrupt))
    }
}
