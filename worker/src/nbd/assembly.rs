//! Checks and reassembles the chunks of one structured reply, without I/O: a read's
//! content chunks must tile the request exactly; a block status reply must describe the
//! requested range with valid extents.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::error::NbdError;

/// The content chunks of one read so far.
#[derive(Debug)]
pub(crate) struct ReadAssembly {
    offset: u64,
    len: u32,
    buf: Option<BytesMut>,
    /// Covered ranges relative to `offset`, start → end, merged when adjacent.
    covered: BTreeMap<u64, u64>,
    total: u64,
}

impl ReadAssembly {
    pub fn new(offset: u64, len: u32) -> Self {
        ReadAssembly {
            offset,
            len,
            buf: None,
            covered: BTreeMap::new(),
            total: 0,
        }
    }

    /// Records a content chunk of `length` bytes at absolute `offset`: it must lie inside
    /// the request and overlap no earlier chunk. Returns where its bytes go in the buffer.
    pub fn claim(&mut self, offset: u64, length: u64) -> Result<Range<usize>, NbdError> {
        let outside = || NbdError::OutsideRequest {
            offset,
            length,
            req_offset: self.offset,
            req_length: self.len,
        };
        let start = offset.checked_sub(self.offset).ok_or_else(outside)?;
        let end = start.checked_add(length).ok_or_else(outside)?;
        if length == 0 || end > u64::from(self.len) {
            return Err(outside());
        }
        let overlap = NbdError::Overlap { offset, length };
        let mut new_start = start;
        let mut new_end = end;
        if let Some((&s, &e)) = self.covered.range(..=start).next_back() {
            if e > start {
                return Err(overlap);
            }
            if e == start {
                self.covered.remove(&s);
                new_start = s;
            }
        }
        if let Some((&s, &e)) = self.covered.range(start..).next() {
            if s < end {
                return Err(overlap);
            }
            if s == end {
                self.covered.remove(&s);
                new_end = e;
            }
        }
        self.covered.insert(new_start, new_end);
        self.total += length;
        // Both below `len`, a u32.
        Ok(start as usize..end as usize)
    }

    /// The reply buffer, zeroed (holes stay zero), allocated on first use.
    pub fn buf_mut(&mut self) -> &mut [u8] {
        let len = self.len as usize;
        self.buf.get_or_insert_with(|| BytesMut::zeroed(len))
    }

    /// The data, if the chunks covered the whole request.
    pub fn finish(mut self) -> Result<Bytes, NbdError> {
        if self.total != u64::from(self.len) {
            return Err(NbdError::IncompleteRead {
                req_offset: self.offset,
                req_length: self.len,
                covered: self.total,
            });
        }
        self.buf_mut();
        Ok(self.buf.map(BytesMut::freeze).unwrap_or_default())
    }
}

/// The block status chunks of one reply so far.
#[derive(Debug)]
pub(crate) struct StatusAssembly {
    offset: u64,
    len: u32,
    export_size: u64,
    wanted: u32,
    /// Context ids negotiated on this connection.
    known: Vec<u32>,
    seen: Vec<u32>,
    extents: Option<Vec<(u32, u32)>>,
}

/// Position within one context's chunk while its extents stream in.
#[derive(Debug)]
pub(crate) struct ContextCursor {
    store: bool,
    pos: u64,
}

impl StatusAssembly {
    pub fn new(offset: u64, len: u32, export_size: u64, wanted: u32, known: Vec<u32>) -> Self {
        StatusAssembly {
            offset,
            len,
            export_size,
            wanted,
            known,
            seen: Vec::new(),
            extents: None,
        }
    }

    /// Starts a chunk for context `id`: known, and not seen before in this reply.
    pub fn begin(&mut self, id: u32) -> Result<ContextCursor, NbdError> {
        if !self.known.contains(&id) {
            return Err(NbdError::UnknownContextId(id));
        }
        if self.seen.contains(&id) {
            return Err(NbdError::DuplicateContext(id));
        }
        self.seen.push(id);
        let store = id == self.wanted;
        if store {
            self.extents = Some(Vec::new());
        }
        Ok(ContextCursor { store, pos: 0 })
    }

    /// Adds one extent: nonzero, starting before the requested range ends (only the last
    /// may run past it) and ending inside the export.
    pub fn push(
        &mut self,
        cur: &mut ContextCursor,
        length: u32,
        flags: u32,
    ) -> Result<(), NbdError> {
        let offset = self.offset.saturating_add(cur.pos);
        if length == 0 {
            return Err(NbdError::ZeroLengthExtent { offset });
        }
        if cur.pos >= u64::from(self.len) {
            return Err(NbdError::ExtentPastRequest {
                offset,
                end: self.offset.saturating_add(u64::from(self.len)),
            });
        }
        let end = offset.saturating_add(u64::from(length));
        if end > self.export_size {
            return Err(NbdError::ExtentPastExport {
                end,
                size: self.export_size,
            });
        }
        cur.pos += u64::from(length);
        if cur.store
            && let Some(v) = self.extents.as_mut()
        {
            v.push((length, flags));
        }
        Ok(())
    }

    /// The extents of the wanted context.
    pub fn finish(self) -> Result<Vec<(u32, u32)>, NbdError> {
        match self.extents {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(NbdError::MissingContext(self.wanted)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_chunks_in_any_order_tile_the_request() {
        let mut a = ReadAssembly::new(1000, 300);
        assert_eq!(a.claim(1200, 100).ok(), Some(200..300));
        assert_eq!(a.claim(1000, 100).ok(), Some(0..100));
        assert!(a.finish().is_err(), "a gap must be refused");

        let mut a = ReadAssembly::new(1000, 300);
        for (o, l) in [(1200, 100), (1000, 100), (1100, 100)] {
            assert!(a.claim(o, l).is_ok());
        }
        assert_eq!(a.covered.len(), 1, "adjacent ranges merge");
        assert_eq!(a.finish().map(|b| b.len()).ok(), Some(300));
    }

    #[test]
    fn read_chunks_outside_or_overlapping_are_refused() {
        let mut a = ReadAssembly::new(1000, 300);
        assert!(matches!(
            a.claim(999, 10),
            Err(NbdError::OutsideRequest { .. })
        ));
        assert!(matches!(
            a.claim(1290, 11),
            Err(NbdError::OutsideRequest { .. })
        ));
        assert!(matches!(
            a.claim(u64::MAX, 2),
            Err(NbdError::OutsideRequest { .. })
        ));
        assert!(matches!(
            a.claim(1000, 0),
            Err(NbdError::OutsideRequest { .. })
        ));
        assert!(a.claim(1100, 100).is_ok());
        assert!(matches!(a.claim(1050, 51), Err(NbdError::Overlap { .. })));
        assert!(matches!(a.claim(1199, 10), Err(NbdError::Overlap { .. })));
        assert!(matches!(a.claim(1120, 10), Err(NbdError::Overlap { .. })));
        assert!(a.claim(1000, 100).is_ok());
    }

    #[test]
    fn status_extents_are_checked() {
        let mut s = StatusAssembly::new(0, 100, 1000, 7, vec![7, 9]);
        assert!(matches!(s.begin(8), Err(NbdError::UnknownContextId(8))));
        let mut c = s.begin(7).expect("known context");
        assert!(matches!(
            s.push(&mut c, 0, 0),
            Err(NbdError::ZeroLengthExtent { .. })
        ));
        assert!(s.push(&mut c, 50, 1).is_ok());
        assert!(
            s.push(&mut c, 500, 0).is_ok(),
            "the last extent may run past the request"
        );
        assert!(matches!(
            s.push(&mut c, 1, 0),
            Err(NbdError::ExtentPastRequest { .. })
        ));
        assert!(matches!(s.begin(7), Err(NbdError::DuplicateContext(7))));
        let mut c = s.begin(9).expect("known context");
        assert!(matches!(
            s.push(&mut c, 1001, 0),
            Err(NbdError::ExtentPastExport { .. })
        ));
        assert_eq!(s.finish().ok(), Some(vec![(50, 1), (500, 0)]));
    }
}
