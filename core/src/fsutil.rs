//! Durable small files: write to a temp name, fsync, rename into place, fsync the
//! directory. The rename is the commit point: a crash leaves the old file or the new one.

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` as `dir/name`, durably and atomically.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}
