//! Partition tables (GPT through the `gpt` crate, MBR through `mbrman`, or none: a file
//! system on the whole disk) and file systems recognised by their magic.

use std::io::Read;
use std::sync::Arc;

use serde::Serialize;

use super::view::PartitionView;
use super::{FilesError, FsKind, human};
use crate::snapshot_reader::SnapshotReader;

/// How the disk is partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table: a file system on the whole disk (partition 0).
    None,
}

/// One partition and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    /// 1-based as the table numbers it (MBR logical partitions from 5); 0 = whole disk.
    pub number: u32,
    pub table: TableKind,
    /// Byte offset on the disk.
    pub start: u64,
    /// Bytes.
    pub size: u64,
    /// The file system found by its magic, if any.
    pub fs: Option<FsKind>,
}

impl PartitionInfo {
    fn describe(&self) -> String {
        let fs = self.fs.map_or_else(
            || "no recognised file system".to_string(),
            |f| f.to_string(),
        );
        format!("{} ({fs}, {})", self.number, human(self.size))
    }
}

pub struct Layout {
    pub partitions: Vec<PartitionInfo>,
}

fn describe_all(parts: &[PartitionInfo]) -> String {
    if parts.is_empty() {
        return "none".into();
    }
    parts
        .iter()
        .map(PartitionInfo::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Layout {
    /// The partition `--partition` names, or the only one with a recognised file system.
    pub fn select(&self, partition: Option<u32>) -> Result<PartitionInfo, FilesError> {
        let parts = &self.partitions;
        match partition {
            Some(n) => parts
                .iter()
                .find(|p| p.number == n)
                .cloned()
                .ok_or_else(|| FilesError::NoSuchPartition {
                    number: n,
                    partitions: describe_all(parts),
                }),
            None => {
                let with_fs: Vec<&PartitionInfo> =
                    parts.iter().filter(|p| p.fs.is_some()).collect();
                match with_fs.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] if parts.is_empty() => Err(FilesError::NoFileSystem),
                    [] => Err(FilesError::NoRecognisedPartition {
                        partitions: describe_all(parts),
                    }),
                    _ => Err(FilesError::Ambiguous {
                        partitions: describe_all(parts),
                    }),
                }
            }
        }
    }
}

/// The file system at the start of `view`, by its magic.
pub fn detect(view: &mut PartitionView) -> Option<FsKind> {
    let mut b = vec![0u8; 2048.min(view.size() as usize)];
    view.read_exact_at(0, &mut b).ok()?;
    detect_bytes(&b)
}

/// The file system whose first bytes are `b` (at least 2048 for ext4).
pub fn detect_bytes(b: &[u8]) -> Option<FsKind> {
    let u16le = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    if b.get(1080..1082) == Some(&[0x53, 0xEF]) {
        return Some(FsKind::Ext4);
    }
    if b.get(3..11) == Some(b"NTFS    ") {
        return Some(FsKind::Ntfs);
    }
    // FAT: a jump instruction, then a BIOS parameter block that makes sense.
    let jump = matches!(b.first(), Some(0xEB) | Some(0xE9));
    let bps = u16le(11)?;
    let spc = *b.get(13)?;
    let reserved = u16le(14)?;
    let fats = *b.get(16)?;
    let media = *b.get(21)?;
    let fat_bpb = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved >= 1
        && (1..=4).contains(&fats)
        && (media == 0xF0 || media >= 0xF8);
    if jump && fat_bpb && b.get(3..11) != Some(b"EXFAT   ") {
        return Some(FsKind::Fat);
    }
    None
}

/// Reads the partition table of the disk (or finds a file system on the whole disk).
pub fn scan(
    reader: &Arc<SnapshotReader>,
    handle: &tokio::runtime::Handle,
) -> Result<Layout, FilesError> {
    let disk_size = reader.size();
    let whole = || PartitionView::new(reader, handle, 0, disk_size);
    let mut head = vec![0u8; 8192.min(disk_size as usize)];
    whole()
        .read_exact(&mut head)
        .map_err(|e| FilesError::Table(format!("reading the first sectors: {e}")))?;

    let protective = head.len() >= 512
        && head[510..512] == [0x55, 0xAA]
        && (0..4).any(|i| head[446 + i * 16 + 4] == 0xEE);
    for (lb, at) in [
        (gpt::disk::LogicalBlockSize::Lb512, 512usize),
        (gpt::disk::LogicalBlockSize::Lb4096, 4096),
    ] {
        if (head.get(at..at + 8) == Some(b"EFI PART") || (protective && at == 512))
            && let Some(parts) = read_gpt(whole(), lb)?
        {
            return Ok(Layout {
                partitions: detect_all(reader, handle, parts),
            });
        }
    }
    if let Some(fs) = detect_bytes(&head) {
        return Ok(Layout {
            partitions: vec![PartitionInfo {
                number: 0,
                table: TableKind::None,
                start: 0,
                size: disk_size,
                fs: Some(fs),
            }],
        });
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xAA] {
        let mut disk = whole();
        if let Ok(mbr) = mbrman::MBR::read_from(&mut disk, 512) {
            let parts: Vec<PartitionInfo> = mbr
                .iter()
                .filter(|(_, p)| p.is_used() && !p.is_extended())
                .map(|(i, p)| PartitionInfo {
                    number: i as u32,
                    table: TableKind::Mbr,
                    start: u64::from(p.starting_lba) * 512,
                    size: u64::from(p.sectors) * 512,
                    fs: None,
                })
                .collect();
            if !parts.is_empty() {
                return Ok(Layout {
                    partitions: detect_all(reader, handle, parts),
                });
            }
        }
    }
    Ok(Layout {
        partitions: Vec::new(),
    })
}

fn read_gpt(
    disk: PartitionView,
    lb: gpt::disk::LogicalBlockSize,
) -> Result<Option<Vec<PartitionInfo>>, FilesError> {
    let gpt = match gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open_from_device(disk)
    {
        Ok(g) => g,
        Err(e) => {
            tracing::debug!("no GPT with {lb:?} blocks: {e}");
            return Ok(None);
        }
    };
    let mut parts = Vec::new();
    for (n, p) in gpt.partitions() {
        if !p.is_used() {
            continue;
        }
        let start = p
            .bytes_start(lb)
            .map_err(|e| FilesError::Table(format!("GPT partition {n}: {e}")))?;
        let size = p
            .bytes_len(lb)
            .map_err(|e| FilesError::Table(format!("GPT partition {n}: {e}")))?;
        parts.push(PartitionInfo {
            number: *n,
            table: TableKind::Gpt,
            start,
            size,
            fs: None,
        });
    }
    Ok(Some(parts))
}

fn detect_all(
    reader: &Arc<SnapshotReader>,
    handle: &tokio::runtime::Handle,
    mut parts: Vec<PartitionInfo>,
) -> Vec<PartitionInfo> {
    for p in &mut parts {
        p.fs = detect(&mut PartitionView::new(reader, handle, p.start, p.size));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_of_each_file_system() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1080] = 0x53;
        ext4[1081] = 0xEF;
        assert_eq!(detect_bytes(&ext4), Some(FsKind::Ext4));
        let mut ntfs = vec![0u8; 2048];
        ntfs[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(detect_bytes(&ntfs), Some(FsKind::Ntfs));
        let mut fat = vec![0u8; 2048];
        fat[0] = 0xEB;
        fat[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat[13] = 8;
        fat[14] = 32;
        fat[16] = 2;
        fat[21] = 0xF8;
        assert_eq!(detect_bytes(&fat), Some(FsKind::Fat));
        fat[13] = 3;
        assert_eq!(detect_bytes(&fat), None);
        assert_eq!(detect_bytes(&[0u8; 2048]), None);
        assert_eq!(detect_bytes(&[0u8; 10]), None);
    }
}
