//! Pack objects: many chunk records in one object, so an object store is not asked for
//! millions of tiny objects.
//!
//! ```text
//! offset size field
//!      0    4 magic "BPAK"
//!      4    2 pack format version (1, little-endian)
//!      6    . chunk records back to back (bora-core chunk encoding, header + payload)
//! ```
//! Each record carries its digest in its own header, so a pack can be scanned to rebuild
//! the index ([`scan`]). Packs are written once and never modified.

use std::fmt;

use bora_core::chunk::{CHUNK_HEADER_LEN, ChunkError, ChunkHeader};
use bora_core::digest::Digest;

pub const PACK_MAGIC: [u8; 4] = *b"BPAK";
pub const PACK_FORMAT_VERSION: u16 = 1;
pub const PACK_HEADER_LEN: usize = 6;

const _: () = assert!(PACK_HEADER_LEN == PACK_MAGIC.len() + size_of::<u16>());

/// A pack's identity: 128 random bits, so nodes and concurrent writers never collide.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId(pub u128);

impl PackId {
    pub fn random() -> PackId {
        PackId(uuid::Uuid::new_v4().as_u128())
    }

    /// The pack's object name: `<first 2 hex digits>/<32 hex digits>.pack`, which keeps
    /// directories of a local filesystem backend to a few thousand entries each.
    pub fn object_name(&self) -> String {
        let hex = self.to_string();
        format!("{}/{hex}.pack", &hex[..2])
    }

    /// The inverse of [`PackId::object_name`]; `None` for any other name.
    pub fn from_object_name(name: &str) -> Option<PackId> {
        let (dir, file) = name.split_once('/')?;
        let hex = file.strip_suffix(".pack")?;
        if hex.len() != 32 || !hex.starts_with(dir) || dir.len() != 2 {
            return None;
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        u128::from_str_radix(hex, 16).ok().map(PackId)
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({self})")
    }
}

/// One record placed in a pack being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedRecord {
    pub digest: Digest,
    /// Offset of the record from the start of the pack object.
    pub offset: u64,
    /// Record bytes (chunk header + payload).
    pub length: u32,
    pub raw_len: u32,
}

/// Builds one pack in memory.
#[derive(Debug)]
pub struct PackWriter {
    buf: Vec<u8>,
    records: Vec<PackedRecord>,
}

impl PackWriter {
    pub fn with_capacity(record_bytes: usize) -> PackWriter {
        let mut buf = Vec::with_capacity(PACK_HEADER_LEN + record_bytes);
        buf.extend_from_slice(&PACK_MAGIC);
        buf.extend_from_slice(&PACK_FORMAT_VERSION.to_le_bytes());
        PackWriter {
            buf,
            records: Vec::new(),
        }
    }

    /// Appends a record whose header the caller has already validated.
    pub fn push(&mut self, digest: Digest, raw_len: u32, record: &[u8]) -> PackedRecord {
        let placed = PackedRecord {
            digest,
            offset: self.buf.len() as u64,
            length: record.len() as u32,
            raw_len,
        };
        self.buf.extend_from_slice(record);
        self.records.push(placed);
        placed
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn finish(self) -> (Vec<u8>, Vec<PackedRecord>) {
        (self.buf, self.records)
    }
}

/// Why a pack could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("not a pack: bad magic or shorter than its {PACK_HEADER_LEN}-byte header")]
    BadHeader,
    #[error(
        "pack format version {0} is not supported (this build reads version {PACK_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("bad chunk record at offset {offset}: {source}")]
    BadRecord {
        offset: u64,
        #[source]
        source: ChunkError,
    },
    #[error("chunk record at offset {offset} runs past the end of the pack ({len} bytes)")]
    Truncated { offset: u64, len: u64 },
}

/// Lists the records of a pack from their headers (payloads are not verified here).
pub fn scan(pack: &[u8]) -> Result<Vec<PackedRecord>, PackError> {
    if pack.len() < PACK_HEADER_LEN || pack[..4] != PACK_MAGIC {
        return Err(PackError::BadHeader);
    }
    let version = u16::from_le_bytes([pack[4], pack[5]]);
    if version != PACK_FORMAT_VERSION {
        return Err(PackError::UnsupportedVersion(version));
    }
    let mut records = Vec::new();
    let mut pos = PACK_HEADER_LEN;
    while pos < pack.len() {
        let offset = pos as u64;
        let header = ChunkHeader::parse(&pack[pos..])
            .map_err(|source| PackError::BadRecord { offset, source })?;
        let length = CHUNK_HEADER_LEN + header.stored_len;
        let end = pos
            .checked_add(length)
            .filter(|&end| end <= pack.len())
            .ok_or(PackError::Truncated {
                offset,
                len: pack.len() as u64,
            })?;
        records.push(PackedRecord {
            digest: header.digest,
            offset,
            length: length as u32,
            raw_len: header.raw_len as u32,
        });
        pos = end;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_core::chunk::encode;

    #[test]
    fn object_name_round_trips() {
        let id = PackId(0xab12_0000_0000_0000_0000_0000_0000_00ff);
        assert_eq!(id.object_name(), "ab/ab1200000000000000000000000000ff.pack");
        assert_eq!(PackId::from_object_name(&id.object_name()), Some(id));
        let r = PackId::random();
        assert_eq!(PackId::from_object_name(&r.object_name()), Some(r));
        for bad in [
            "ab/cd12.pack",
            "cd/ab1200000000000000000000000000ff.pack",
            "x.pack",
        ] {
            assert_eq!(PackId::from_object_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn scan_finds_what_was_written() {
        let chunks: Vec<_> = [&b""[..], &b"one"[..], &[7u8; 10_000][..]]
            .iter()
            .map(|d| encode(d, 1).expect("encode"))
            .collect();
        let mut w = PackWriter::with_capacity(0);
        let placed: Vec<_> = chunks
            .iter()
            .map(|c| w.push(c.digest, c.raw_len, &c.record))
            .collect();
        let (bytes, records) = w.finish();
        assert_eq!(records, placed);
        assert_eq!(scan(&bytes).expect("scan"), placed);
        assert_eq!(placed[0].offset, PACK_HEADER_LEN as u64);
        for (c, p) in chunks.iter().zip(&placed) {
            let at = p.offset as usize..p.offset as usize + p.length as usize;
            assert_eq!(&bytes[at], &c.record[..]);
        }
        assert!(matches!(
            scan(&bytes[..bytes.len() - 1]),
            Err(PackError::Truncated { .. })
        ));
        let last = placed[2].offset as usize;
        assert!(matches!(
            scan(&bytes[..last + 10]),
            Err(PackError::BadRecord { offset, .. }) if offset == last as u64
        ));
        assert!(matches!(scan(b"BPAK"), Err(PackError::BadHeader)));
        assert!(matches!(
            scan(b"BPAK\x02\x00"),
            Err(PackError::UnsupportedVersion(2))
        ));
    }
}
