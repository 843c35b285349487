//! The byte layout of a segment, and checked slot arithmetic.
//!
//! ```text
//! offset 0                 4096                4096 + slot_size
//! | SegmentHeader | pad    | slot 0            | slot 1 ... | slot n-1 |
//! ```
//! Slots start page-aligned so that a slot can be page-locked or copied with
//! aligned vector loads. Offsets, never pointers, cross processes.

use thiserror::Error;

/// "IMGSHM01" in ASCII: written last, so a reader that sees it sees the rest.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"IMGSHM01");
/// Bumped when this layout changes.
pub const SEGMENT_VERSION: u32 = 1;
/// Slots start at this alignment (one page).
pub const SLOT_ALIGN: u64 = 4096;
/// Upper bounds that keep every product below in range.
pub const MAX_SLOTS: u32 = 1 << 16;
pub const MAX_SLOT_SIZE: u64 = 1 << 30;

/// The first bytes of every segment. Written once by the host before any
/// gateway learns the segment's name.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub magic: u64,
    pub version: u32,
    pub slot_count: u32,
    pub slot_size: u64,
    pub slots_offset: u64,
    pub total_size: u64,
}

impl SegmentHeader {
    /// Its size in the segment (and of its `#[repr(C)]` layout).
    pub const SIZE: usize = 40;

    /// The header's bytes as `#[repr(C)]` lays them out, native byte order
    /// (both processes run on this machine).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.magic.to_ne_bytes());
        b[8..12].copy_from_slice(&self.version.to_ne_bytes());
        b[12..16].copy_from_slice(&self.slot_count.to_ne_bytes());
        b[16..24].copy_from_slice(&self.slot_size.to_ne_bytes());
        b[24..32].copy_from_slice(&self.slots_offset.to_ne_bytes());
        b[32..40].copy_from_slice(&self.total_size.to_ne_bytes());
        b
    }

    /// The inverse of [`Self::to_bytes`]; any bytes are some header (which
    /// [`SlotLayout::from_header`] then checks).
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        SegmentHeader {
            magic: u64_at(0),
            version: u32_at(8),
            slot_count: u32_at(12),
            slot_size: u64_at(16),
            slots_offset: u64_at(24),
            total_size: u64_at(32),
        }
    }
}

const _: () = assert!(std::mem::size_of::<SegmentHeader>() == SegmentHeader::SIZE);
const _: () = assert!(std::mem::offset_of!(SegmentHeader, version) == 8);
const _: () = assert!(std::mem::offset_of!(SegmentHeader, total_size) == 32);
const _: () = assert!(std::mem::align_of::<SegmentHeader>() == 8);
const _: () = assert!((std::mem::size_of::<SegmentHeader>() as u64) <= SLOT_ALIGN);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("slot index {index} is outside the segment's {count} slots")]
    SlotOutOfRange { index: u32, count: u32 },
    #[error("{len} bytes do not fit a {slot_size}-byte slot")]
    TooLong { len: u64, slot_size: u64 },
    #[error("segment of {slot_count} slots x {slot_size} bytes is outside the limits ({MAX_SLOTS} slots, {MAX_SLOT_SIZE} bytes each)")]
    BadGeometry { slot_count: u32, slot_size: u64 },
    #[error("segment header does not match: {0}")]
    HeaderMismatch(String),
}

/// Slot geometry of one segment; the single source of every offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    slot_count: u32,
    /// Usable bytes per slot (the model's input size).
    slot_size: u64,
    /// Distance between slot starts: slot_size rounded up to SLOT_ALIGN.
    stride: u64,
}

impl SlotLayout {
    pub fn new(slot_count: u32, slot_size: u64) -> Result<Self, LayoutError> {
        if slot_count == 0 || slot_count > MAX_SLOTS || slot_size == 0 || slot_size > MAX_SLOT_SIZE {
            return Err(LayoutError::BadGeometry { slot_count, slot_size });
        }
        let stride = slot_size.div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        Ok(Self { slot_count, slot_size, stride })
    }

    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    pub fn slot_size(&self) -> u64 {
        self.slot_size
    }

    /// Bytes the whole segment needs: header page plus slots.
    pub fn total_size(&self) -> u64 {
        // Cannot overflow: at most 2^16 slots of at most 2^30 bytes.
        SLOT_ALIGN + self.stride * u64::from(self.slot_count)
    }

    /// Byte range of the first `len` bytes of slot `index`, checked.
    pub fn slot_range(&self, index: u32, len: u64) -> Result<std::ops::Range<usize>, LayoutError> {
        if index >= self.slot_count {
            return Err(LayoutError::SlotOutOfRange { index, count: self.slot_count });
        }
        if len > self.slot_size {
            return Err(LayoutError::TooLong { len, slot_size: self.slot_size });
        }
        let start = SLOT_ALIGN + self.stride * u64::from(index);
        let end = start + len;
        debug_assert!(end <= self.total_size());
        Ok(start as usize..end as usize)
    }

    /// The header the host writes for this layout.
    pub fn header(&self) -> SegmentHeader {
        SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: SEGMENT_VERSION,
            slot_count: self.slot_count,
            slot_size: self.slot_size,
            slots_offset: SLOT_ALIGN,
            total_size: self.total_size(),
        }
    }

    /// Rebuilds the layout from a header read out of a mapped segment, and
    /// checks it against what the host said in the handshake and the size
    /// of the mapping.
    pub fn from_header(header: &SegmentHeader, expected: &SlotLayout, mapped_len: u64) -> Result<Self, LayoutError> {
        let mismatch = |what: &str| Err(LayoutError::HeaderMismatch(what.to_string()));
        if header.magic != SEGMENT_MAGIC {
            return mismatch("bad magic");
        }
        if header.version != SEGMENT_VERSION {
            return mismatch(&format!("layout version {} (expected {SEGMENT_VERSION})", header.version));
        }
        let layout = SlotLayout::new(header.slot_count, header.slot_size)?;
        if layout != *expected || header != &expected.header() {
            return mismatch("geometry differs from the handshake");
        }
        if layout.total_size() > mapped_len {
            return mismatch("segment is smaller than its header claims");
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_its_repr_c_layout_and_round_trip() {
        let header = SlotLayout::new(3, 1000).unwrap().header();
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..8], &SEGMENT_MAGIC.to_ne_bytes());
        assert_eq!(&bytes[12..16], &3u32.to_ne_bytes());
        assert_eq!(SegmentHeader::from_bytes(&bytes), header);
    }
    use proptest::prelude::*;

    #[test]
    fn slots_are_page_aligned_and_disjoint() {
        let l = SlotLayout::new(3, 1024).unwrap();
        assert_eq!(l.slot_range(0, 1024).unwrap(), 4096..5120);
        assert_eq!(l.slot_range(1, 10).unwrap(), 8192..8202);
        assert_eq!(l.slot_range(2, 1024).unwrap(), 12288..13312);
        assert_eq!(l.total_size(), 4 * 4096);
    }

    #[test]
    fn out_of_range_index_and_length_are_refused() {
        let l = SlotLayout::new(2, 100).unwrap();
        assert_eq!(l.slot_range(2, 1), Err(LayoutError::SlotOutOfRange { index: 2, count: 2 }));
        assert_eq!(l.slot_range(u32::MAX, 1), Err(LayoutError::SlotOutOfRange { index: u32::MAX, count: 2 }));
        assert_eq!(l.slot_range(0, 101), Err(LayoutError::TooLong { len: 101, slot_size: 100 }));
        assert_eq!(l.slot_range(0, u64::MAX), Err(LayoutError::TooLong { len: u64::MAX, slot_size: 100 }));
    }

    #[test]
    fn geometry_limits() {
        assert!(SlotLayout::new(0, 1).is_err());
        assert!(SlotLayout::new(1, 0).is_err());
        assert!(SlotLayout::new(MAX_SLOTS + 1, 1).is_err());
        assert!(SlotLayout::new(1, MAX_SLOT_SIZE + 1).is_err());
        assert!(SlotLayout::new(MAX_SLOTS, MAX_SLOT_SIZE).is_ok());
    }

    #[test]
    fn header_round_trip_and_mismatches() {
        let l = SlotLayout::new(4, 3072).unwrap();
        let h = l.header();
        assert_eq!(SlotLayout::from_header(&h, &l, l.total_size()), Ok(l));
        let mut bad = h;
        bad.magic = 0;
        assert!(SlotLayout::from_header(&bad, &l, l.total_size()).is_err());
        let mut bad = h;
        bad.slot_count = 5;
        assert!(SlotLayout::from_header(&bad, &l, u64::MAX).is_err());
        assert!(SlotLayout::from_header(&h, &l, l.total_size() - 1).is_err());
    }

    proptest! {
        #[test]
        fn every_accepted_range_lies_inside_the_segment(count in 1u32..64, size in 1u64..20_000, index in any::<u32>(), len in any::<u64>()) {
            let l = SlotLayout::new(count, size).unwrap();
            if let Ok(r) = l.slot_range(index, len) {
                prop_assert!(r.start >= SLOT_ALIGN as usize);
                prop_assert!(r.end as u64 <= l.total_size());
                prop_assert!(index < count && len <= size);
            }
        }
    }
}
