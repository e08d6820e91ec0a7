//! NTFS through the `ntfs` crate (read-only, `Read + Seek`). Reparse points (Windows
//! symlinks, junctions) are shown as the file or directory they are; the metadata files
//! (`$MFT`, `$Bitmap`, ...) are not listed.

use std::io::Read;

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsFileNamespace;
use ntfs::{Ntfs, NtfsError, NtfsFile, NtfsTime};

use super::view::PartitionView;
use super::{
    Entry, EntryKind, FileSystem, FilesError, FsKind, MAX_DIR_ENTRIES, Sink, display_path, rfc3339,
};

/// File records below this number are NTFS's own metadata files.
const FIRST_USER_RECORD: u64 = 24;
/// 100 ns intervals from 1601-01-01 to 1970-01-01.
const NT_TO_UNIX_SECS: i64 = 11_644_473_600;

pub struct NtfsFs {
    ntfs: Ntfs,
    disk: PartitionView,
}

impl NtfsFs {
    pub fn mount(mut disk: PartitionView) -> Result<NtfsFs, FilesError> {
        let mut ntfs = Ntfs::new(&mut disk).map_err(corrupt)?;
        ntfs.read_upcase_table(&mut disk).map_err(corrupt)?;
        Ok(NtfsFs { ntfs, disk })
    }
}

fn corrupt(e: NtfsError) -> FilesError {
    FilesError::Corrupt {
        fs: FsKind::Ntfs,
        msg: e.to_string(),
    }
}

fn nt_time(t: NtfsTime) -> Option<String> {
    let ticks = t.nt_timestamp();
    let secs = i64::try_from(ticks / 10_000_000).ok()? - NT_TO_UNIX_SECS;
    rfc3339(secs, (ticks % 10_000_000) as u32 * 100)
}

/// The file at `path`.
fn walk<'n>(
    ntfs: &'n Ntfs,
    disk: &mut PartitionView,
    path: &[String],
) -> Result<NtfsFile<'n>, FilesError> {
    let mut file = ntfs.root_directory(disk).map_err(corrupt)?;
    for (i, name) in path.iter().enumerate() {
        if !file.is_directory() {
            return Err(FilesError::NotADirectory {
                path: display_path(&path[..i]),
            });
        }
        let next = {
            let index = file.directory_index(disk).map_err(corrupt)?;
            let mut finder = index.finder();
            let entry = NtfsFileNameIndex::find(&mut finder, ntfs, disk, name)
                .ok_or_else(|| FilesError::NotFound {
                    path: display_path(&path[..=i]),
                })?
                .map_err(corrupt)?;
            entry.to_file(ntfs, disk).map_err(corrupt)?
        };
        file = next;
    }
    Ok(file)
}

/// Size of the unnamed data stream (0 for directories).
fn data_len(file: &NtfsFile<'_>, disk: &mut PartitionView) -> Result<u64, FilesError> {
    if file.is_directory() {
        return Ok(0);
    }
    match file.data(disk, "") {
        None => Ok(0),
        Some(item) => {
            let item = item.map_err(corrupt)?;
            let attr = item.to_attribute().map_err(corrupt)?;
            Ok(attr.value_length())
        }
    }
}

fn entry(name: String, file: &NtfsFile<'_>, disk: &mut PartitionView) -> Result<Entry, FilesError> {
    let dir = file.is_directory();
    let mtime = file
        .info()
        .ok()
        .and_then(|i| nt_time(i.modification_time()));
    Ok(Entry {
        name,
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size: data_len(file, disk)?,
        mtime,
    })
}

impl FileSystem for NtfsFs {
    fn stat(&mut self, path: &[String]) -> Result<Entry, FilesError> {
        let file = walk(&self.ntfs, &mut self.disk, path)?;
        let name = path.last().cloned().unwrap_or_else(|| "/".into());
        entry(name, &file, &mut self.disk)
    }

    fn list(&mut self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let ntfs = &self.ntfs;
        let disk = &mut self.disk;
        let dir = walk(ntfs, disk, path)?;
        if !dir.is_directory() {
            return Err(FilesError::NotADirectory {
                path: display_path(path),
            });
        }
        let index = dir.directory_index(disk).map_err(corrupt)?;
        let mut iter = index.entries();
        let mut out = Vec::new();
        let mut seen = 0usize;
        while let Some(e) = iter.next(disk) {
            seen += 1;
            if seen > MAX_DIR_ENTRIES {
                return Err(FilesError::Corrupt {
                    fs: FsKind::Ntfs,
                    msg: format!(
                        "{}: more than {MAX_DIR_ENTRIES} entries",
                        display_path(path)
                    ),
                });
            }
            let e = e.map_err(corrupt)?;
            let Some(key) = e.key() else { continue };
            let key = key.map_err(corrupt)?;
            if key.namespace() == NtfsFileNamespace::Dos
                || e.file_reference().file_record_number() < FIRST_USER_RECORD
            {
                continue;
            }
            let name = key.name().to_string_lossy();
            let file = e.to_file(ntfs, disk).map_err(corrupt)?;
            out.push(entry(name, &file, disk)?);
        }
        Ok(out)
    }

    fn read_link(&mut self, path: &[String]) -> Result<String, FilesError> {
        Err(FilesError::Corrupt {
            fs: FsKind::Ntfs,
            msg: format!("{}: reparse points are not read", display_path(path)),
        })
    }

    fn copy_file(
        &mut self,
        path: &[String],
        size: u64,
        out: &mut Sink<'_>,
    ) -> Result<u64, FilesError> {
        let disk = &mut self.disk;
        let file = walk(&self.ntfs, disk, path)?;
        let Some(item) = file.data(disk, "") else {
            return Ok(0);
        };
        let item = item.map_err(corrupt)?;
        let attr = item.to_attribute().map_err(corrupt)?;
        let value = attr.value(disk).map_err(corrupt)?;
        let mut r = value.attach(disk);
        out.pump(size, |buf| {
            r.read(buf).map_err(|e| FilesError::Corrupt {
                fs: FsKind::Ntfs,
                msg: e.to_string(),
            })
        })
    }
}
