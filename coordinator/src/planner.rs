//! The planner: splits a disk into block ranges for workers. Pure: sizes in, ranges out.

use bora_core::ByteRange;

/// Default bytes per range: large enough that per-range overhead (a catalog entry, a
/// lease) is negligible, small enough that a 1 TiB disk gives 1024 ranges to spread over
/// workers.
pub const DEFAULT_RANGE_BYTES: u64 = 1 << 30;

/// Splits `[0, disk_size)` into ranges of about `range_bytes` (rounded up to whole
/// chunks). Every range starts on a chunk boundary; together they cover every byte once.
pub fn split_disk(disk_size: u64, chunk_size: u32, range_bytes: u64) -> Vec<ByteRange> {
    let cs = u64::from(chunk_size.max(1));
    let step = range_bytes.max(1).div_ceil(cs) * cs;
    let mut out = Vec::with_capacity(disk_size.div_ceil(step) as usize);
    let mut offset = 0;
    while offset < disk_size {
        let length = step.min(disk_size - offset);
        out.push(ByteRange { offset, length });
        offset += length;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every byte of the disk belongs to exactly one range; ranges start on chunks.
        #[test]
        fn ranges_tile_the_disk(disk in 0u64..(1 << 40), cs_shift in 16u32..24, range in 1u64..(1 << 34)) {
            let cs = 1u32 << cs_shift;
            let ranges = split_disk(disk, cs, range);
            let mut expected = 0;
            for r in &ranges {
                prop_assert_eq!(r.offset, expected);
                prop_assert!(r.length > 0);
                prop_assert_eq!(r.offset % cs as u64, 0);
                expected = r.end();
            }
            prop_assert_eq!(expected, disk);
            prop_assert!(ranges.len() <= 1 + disk.div_ceil(range.max(cs as u64)) as usize);
        }
    }
}
