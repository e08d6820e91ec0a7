//! Block maps: which parts of a disk hold data, and which chunks a backup must read.

use crate::range::ByteRange;

/// What a stretch of a disk holds, as the source's allocation map says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated: must be read.
    Data,
    /// A hole or a zeroed extent: reads as zeros, never read or stored.
    Zero,
}

/// A stretch of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
}

/// One chunk of a disk and the parts of it that hold data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Chunk number (offset / chunk size).
    pub index: usize,
    pub offset: u64,
    pub len: u32,
    /// Absolute `(offset, length)` of the data-bearing parts inside the chunk, in order;
    /// empty when the chunk is all zeros.
    pub data: Vec<(u64, u64)>,
}

impl ChunkPlan {
    pub fn is_zero(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes the chunk reads from the source.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, l)| l).sum()
    }
}

/// An allocation map that does not describe the disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockMapError {
    #[error("extent at {offset} does not start where the previous one ended ({expected})")]
    Gap { offset: u64, expected: u64 },
    #[error("extents end at {end}, the range ends at {range_end}")]
    WrongEnd { end: u64, range_end: u64 },
    #[error(
        "range {range} does not start on a chunk boundary or ends past the disk ({disk_size} bytes)"
    )]
    BadRange { range: ByteRange, disk_size: u64 },
    #[error("extent at {0} has zero length")]
    Empty(u64),
}

/// Merges adjacent extents of the same kind and checks that they tile `range`.
pub fn normalize(extents: &[Extent], range: ByteRange) -> Result<Vec<Extent>, BlockMapError> {
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    let mut expected = range.offset;
    for e in extents {
        if e.length == 0 {
            return Err(BlockMapError::Empty(e.offset));
        }
        if e.offset != expected {
            return Err(BlockMapError::Gap {
                offset: e.offset,
                expected,
            });
        }
        expected = e.offset.saturating_add(e.length);
        match out.last_mut() {
            Some(last) if last.kind == e.kind => last.length += e.length,
            _ => out.push(*e),
        }
    }
    if expected != range.end() {
        return Err(BlockMapError::WrongEnd {
            end: expected,
            range_end: range.end(),
        });
    }
    Ok(out)
}

/// Plans every chunk of `range` (chunk-aligned, inside a disk of `disk_size`): which parts
/// of each hold data. `extents` must tile the range (see [`normalize`]).
pub fn plan_chunks(
    extents: &[Extent],
    range: ByteRange,
    disk_size: u64,
    chunk_size: u32,
) -> Result<Vec<ChunkPlan>, BlockMapError> {
    let cs = u64::from(chunk_size);
    if cs == 0 || !range.offset.is_multiple_of(cs) || range.end() > disk_size {
        return Err(BlockMapError::BadRange { range, disk_size });
    }
    let extents = normalize(extents, range)?;
    let first = (range.offset / cs) as usize;
    let n = (range.length.div_ceil(cs)) as usize;
    let mut plans: Vec<ChunkPlan> = (first..first + n)
        .map(|i| {
            let offset = i as u64 * cs;
            ChunkPlan {
                index: i,
                offset,
                len: (range.end() - offset).min(cs) as u32,
                data: Vec::new(),
            }
        })
        .collect();
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        let end = e.offset + e.length;
        let mut pos = e.offset;
        while pos < end {
            let i = (pos / cs) as usize;
            let chunk_end = ((i as u64 + 1) * cs).min(range.end());
            let part_end = end.min(chunk_end);
            plans[i - first].data.push((pos, part_end - pos));
            pos = part_end;
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiling(lengths: &[(u64, bool)]) -> (Vec<Extent>, u64) {
        let mut off = 0;
        let v = lengths
            .iter()
            .map(|&(len, data)| {
                let e = Extent {
                    offset: off,
                    length: len,
                    kind: if data {
                        ExtentKind::Data
                    } else {
                        ExtentKind::Zero
                    },
                };
                off += len;
                e
            })
            .collect();
        (v, off)
    }

    proptest! {
        /// Every data byte belongs to exactly one chunk's data list; no zero byte is read.
        #[test]
        fn every_data_byte_read_once(parts in proptest::collection::vec((1u64..300_000, any::<bool>()), 1..30)) {
            let (extents, size) = tiling(&parts);
            let cs = 64 * 1024;
            let whole = ByteRange { offset: 0, length: size };
            let merged = normalize(&extents, whole).unwrap();
            let plans = plan_chunks(&extents, whole, size, cs).unwrap();
            prop_assert_eq!(plans.len() as u64, size.div_ceil(cs as u64));
            let data_total: u64 = extents.iter().filter(|e| e.kind == ExtentKind::Data).map(|e| e.length).sum();
            prop_assert_eq!(plans.iter().map(|p| p.data_len()).sum::<u64>(), data_total);
            for p in &plans {
                for &(o, l) in &p.data {
                    prop_assert!(o >= p.offset && o + l <= p.offset + p.len as u64);
                    let inside = merged.iter().any(|e| e.kind == ExtentKind::Data && o >= e.offset && o + l <= e.offset + e.length);
                    prop_assert!(inside);
                }
            }
        }
    }

    #[test]
    fn gaps_and_wrong_ends_are_errors() {
        let e = |offset, length| Extent {
            offset,
            length,
            kind: ExtentKind::Data,
        };
        let r = |offset, length| ByteRange { offset, length };
        assert!(normalize(&[e(0, 10), e(11, 5)], r(0, 16)).is_err());
        assert!(normalize(&[e(0, 10)], r(0, 11)).is_err());
        assert!(normalize(&[e(0, 0)], r(0, 0)).is_err());
        assert_eq!(normalize(&[e(0, 10), e(10, 6)], r(0, 16)).unwrap().len(), 1);
        assert_eq!(normalize(&[e(8, 8)], r(8, 8)).unwrap().len(), 1);
    }
}
