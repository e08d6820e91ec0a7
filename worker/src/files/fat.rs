//! FAT12/16/32 through `fatfs`, which wants a read-write device: the partition view fails
//! every write, and nothing here asks for one (no access-date updates).

use std::io::Read;

use fatfs::{Dir, DirEntry, FileSystem as Fat, FsOptions};

use super::view::PartitionView;
use super::{Entry, EntryKind, FileSystem, FilesError, FsKind, Sink, display_path, rfc3339};

/// Entries in one FAT directory at most (the specification's limit: 65536 slots).
const MAX_FAT_DIR_ENTRIES: usize = 65_536;

pub struct FatFs {
    fs: Fat<PartitionView>,
}

impl FatFs {
    pub fn mount(view: PartitionView) -> Result<FatFs, FilesError> {
        let fs = Fat::new(view, FsOptions::new()).map_err(corrupt)?;
        Ok(FatFs { fs })
    }
}

fn corrupt(e: std::io::Error) -> FilesError {
    FilesError::Corrupt {
        fs: FsKind::Fat,
        msg: e.to_string(),
    }
}

type FatDir<'a> = Dir<'a, PartitionView>;
type FatEntry<'a> = DirEntry<'a, PartitionView>;

/// Entries of `dir` without "." and "..", bounded.
fn entries<'a>(dir: &FatDir<'a>, path: &[String]) -> Result<Vec<FatEntry<'a>>, FilesError> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.map_err(corrupt)?;
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        if out.len() >= MAX_FAT_DIR_ENTRIES {
            return Err(FilesError::Corrupt {
                fs: FsKind::Fat,
                msg: format!(
                    "{}: more than {MAX_FAT_DIR_ENTRIES} entries",
                    display_path(path)
                ),
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// FAT names compare without case, long or short.
fn same_name(e: &FatEntry<'_>, name: &str) -> bool {
    let lower = name.to_lowercase();
    e.file_name().to_lowercase() == lower || e.short_file_name().to_lowercase() == lower
}

/// The entry at `path`; `None` for the root.
fn lookup<'a>(
    fs: &'a Fat<PartitionView>,
    path: &[String],
) -> Result<Option<FatEntry<'a>>, FilesError> {
    let mut dir = fs.root_dir();
    let mut found: Option<FatEntry<'a>> = None;
    for (i, name) in path.iter().enumerate() {
        if let Some(prev) = found.take() {
            if !prev.is_dir() {
                return Err(FilesError::NotADirectory {
                    path: display_path(&path[..i]),
                });
            }
            dir = prev.to_dir();
        }
        let e = entries(&dir, &path[..i])?
            .into_iter()
            .find(|e| same_name(e, name))
            .ok_or_else(|| FilesError::NotFound {
                path: display_path(&path[..=i]),
            })?;
        found = Some(e);
    }
    Ok(found)
}

fn entry(e: &FatEntry<'_>) -> Entry {
    let m = e.modified();
    let mtime = time::Date::from_calendar_date(
        i32::from(m.date.year),
        time::Month::try_from(u8::try_from(m.date.month).unwrap_or(0))
            .unwrap_or(time::Month::January),
        u8::try_from(m.date.day).unwrap_or(1),
    )
    .ok()
    .and_then(|d| {
        let t = time::Time::from_hms_milli(
            u8::try_from(m.time.hour).ok()?,
            u8::try_from(m.time.min).ok()?,
            u8::try_from(m.time.sec).ok()?,
            m.time.millis,
        )
        .ok()?;
        // FAT keeps local time without a zone: shown as if it were UTC.
        let unix = time::PrimitiveDateTime::new(d, t).assume_utc();
        rfc3339(unix.unix_timestamp(), unix.nanosecond())
    });
    let dir = e.is_dir();
    Entry {
        name: e.file_name(),
        kind: if dir { EntryKind::Dir } else { EntryKind::File },
        size: if dir { 0 } else { e.len() },
        mtime,
    }
}

impl FileSystem for FatFs {
    fn stat(&mut self, path: &[String]) -> Result<Entry, FilesError> {
        Ok(match lookup(&self.fs, path)? {
            Some(e) => entry(&e),
            None => Entry {
                name: "/".into(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: None,
            },
        })
    }

    fn list(&mut self, path: &[String]) -> Result<Vec<Entry>, FilesError> {
        let dir = match lookup(&self.fs, path)? {
            None => self.fs.root_dir(),
            Some(e) if e.is_dir() => e.to_dir(),
            Some(_) => {
                return Err(FilesError::NotADirectory {
                    path: display_path(path),
                });
            }
        };
        Ok(entries(&dir, path)?.iter().map(entry).collect())
    }

    fn read_link(&mut self, path: &[String]) -> Result<String, FilesError> {
        Err(FilesError::Corrupt {
            fs: FsKind::Fat,
            msg: format!("{}: FAT has no symlinks", display_path(path)),
        })
    }

    fn copy_file(
        &mut self,
        path: &[String],
        size: u64,
        out: &mut Sink<'_>,
    ) -> Result<u64, FilesError> {
        let e = lookup(&self.fs, path)?.ok_or_else(|| FilesError::NotFound {
            path: display_path(path),
        })?;
        let mut f = e.to_file();
        out.pump(size, |buf| f.read(buf).map_err(corrupt))
    }
}
