//! A mapped segment of slots, in safe code over [`super::mapping`].
//!
//! The host creates a segment per gateway connection and only ever reads
//! slots; the gateway writes a slot only while it holds the host's lease for
//! it and before it sends the `Infer` that names it. Every access goes
//! through [`SlotLayout::slot_range`], so no index or length a peer sends
//! can reach outside the mapping.

use std::os::unix::fs::PermissionsExt;

use shared_memory::ShmemError;
use thiserror::Error;

use super::layout::{LayoutError, SegmentHeader, SlotLayout};
use super::mapping::{Mapping, OutOfBounds};

#[derive(Debug, Error)]
pub enum ShmError {
    #[error("shared memory {name}: {source}")]
    Os { name: String, source: ShmemError },
    #[error("shared memory {name}: setting mode {mode:o}: {source}")]
    Mode { name: String, mode: u32, source: std::io::Error },
    #[error("shared memory {name}: unlink: {source}")]
    Unlink { name: String, source: nix::Error },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Cannot happen once the layout is checked against the mapping; kept
    /// as an error, not a panic, because the mapping is the last word.
    #[error(transparent)]
    Bounds(#[from] OutOfBounds),
}

/// A mapping of one segment, in either process.
pub struct Segment {
    /// The mapping. Dropping it unmaps, and unlinks the name if we still own it.
    mapping: Mapping,
    /// Checked geometry; every access goes through it.
    layout: SlotLayout,
    /// The POSIX name, kept for logs after the name is unlinked.
    os_id: String,
}

impl Segment {
    /// Creates and initialises a segment (host side). The file under
    /// /dev/shm gets `mode` (0600 when host and gateways share a user,
    /// 0660 when gateways reach it through a shared group).
    pub fn create(os_id: &str, layout: SlotLayout, mode: u32) -> Result<Self, ShmError> {
        let mapping = Mapping::create(os_id, layout.total_size() as usize)
            .map_err(|source| ShmError::Os { name: os_id.to_string(), source })?;
        let segment = Segment { mapping, layout, os_id: os_id.to_string() };
        let path = format!("/dev/shm/{}", os_id.trim_start_matches('/'));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|source| ShmError::Mode { name: os_id.to_string(), mode, source })?;
        segment.write_header(layout.header())?;
        Ok(segment)
    }

    /// Maps a segment the host named in its welcome (gateway side) and
    /// checks its header against the handshake.
    pub fn open(os_id: &str, expected: SlotLayout) -> Result<Self, ShmError> {
        let mapping = Mapping::open(os_id).map_err(|source| ShmError::Os { name: os_id.to_string(), source })?;
        let mapped_len = mapping.len() as u64;
        if mapped_len < std::mem::size_of::<SegmentHeader>() as u64 {
            return Err(LayoutError::HeaderMismatch(format!("mapping of {mapped_len} bytes holds no header")).into());
        }
        let segment = Segment { mapping, layout: expected, os_id: os_id.to_string() };
        let header = segment.read_header()?;
        let layout = SlotLayout::from_header(&header, &expected, mapped_len)?;
        Ok(Segment { layout, ..segment })
    }

    /// Removes the segment's name from /dev/shm; the memory stays mapped
    /// here and in every process that already mapped it.
    pub fn unlink(&mut self) -> Result<(), ShmError> {
        if !self.mapping.is_owner() {
            return Ok(());
        }
        nix::sys::mman::shm_unlink(self.os_id.as_str())
            .map_err(|source| ShmError::Unlink { name: self.os_id.clone(), source })?;
        self.mapping.set_owner(false);
        Ok(())
    }

    pub fn os_id(&self) -> &str {
        &self.os_id
    }

    pub fn layout(&self) -> SlotLayout {
        self.layout
    }

    /// Copies `data` into the start of slot `index`.
    pub fn write_slot(&self, index: u32, data: &[u8]) -> Result<(), ShmError> {
        let range = self.layout.slot_range(index, data.len() as u64)?;
        Ok(self.mapping.copy_in(range.start, data)?)
    }

    /// Copies `data` into slot `index`, `offset` bytes from its start.
    pub fn write_slot_at(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), ShmError> {
        let range = self.layout.slot_range(index, offset.saturating_add(data.len() as u64))?;
        Ok(self.mapping.copy_in(range.start + offset as usize, data)?)
    }

    /// Copies the first `dst.len()` bytes of slot `index` into `dst`. A
    /// misbehaving gateway that writes the slot meanwhile can only change
    /// which pixel values we read.
    pub fn read_slot(&self, index: u32, dst: &mut [u8]) -> Result<(), ShmError> {
        let range = self.layout.slot_range(index, dst.len() as u64)?;
        Ok(self.mapping.copy_out(range.start, dst)?)
    }

    /// Writes the header, magic last with release ordering, so that a
    /// reader that observes the magic observes the whole header (the init
    /// fence: no other process knows the name yet, but the order is what
    /// a reader relies on).
    fn write_header(&self, header: SegmentHeader) -> Result<(), ShmError> {
        let unpublished = SegmentHeader { magic: 0, ..header };
        self.mapping.copy_in(0, &unpublished.to_bytes())?;
        Ok(self.mapping.store_release(0, header.magic)?)
    }

    fn read_header(&self) -> Result<SegmentHeader, ShmError> {
        let magic = self.mapping.load_acquire(0)?;
        let mut bytes = [0u8; SegmentHeader::SIZE];
        self.mapping.copy_out(0, &mut bytes)?;
        Ok(SegmentHeader { magic, ..SegmentHeader::from_bytes(&bytes) })
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("os_id", &self.os_id).field("layout", &self.layout).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::naming::segment_name;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn unique_name() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
        segment_name(std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn dev_shm_path(name: &str) -> String {
        format!("/dev/shm/{}", &name[1..])
    }

    #[test]
    fn gateway_writes_what_host_reads_after_unlink() {
        let name = unique_name();
        let layout = SlotLayout::new(4, 3000).unwrap();
        let mut host = Segment::create(&name, layout, 0o600).unwrap();
        let mode = std::fs::metadata(dev_shm_path(&name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let gateway = Segment::open(&name, layout).unwrap();
        host.unlink().unwrap();
        assert!(!std::path::Path::new(&dev_shm_path(&name)).exists(), "name must be gone after unlink");

        let pixels: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
        gateway.write_slot(3, &pixels).unwrap();
        let mut out = vec![0u8; 3000];
        host.read_slot(3, &mut out).unwrap();
        assert_eq!(out, pixels);
    }

    #[test]
    fn out_of_bounds_access_is_an_error() {
        let name = unique_name();
        let layout = SlotLayout::new(2, 100).unwrap();
        let host = Segment::create(&name, layout, 0o600).unwrap();
        assert!(matches!(host.write_slot(2, &[0; 10]), Err(ShmError::Layout(LayoutError::SlotOutOfRange { .. }))));
        assert!(matches!(host.read_slot(0, &mut [0; 101]), Err(ShmError::Layout(LayoutError::TooLong { .. }))));
        drop(host);
        assert!(!std::path::Path::new(&dev_shm_path(&name)).exists(), "owner's drop unlinks");
    }

    #[test]
    fn opening_with_other_geometry_fails() {
        let name = unique_name();
        let _host = Segment::create(&name, SlotLayout::new(2, 100).unwrap(), 0o600).unwrap();
        let err = Segment::open(&name, SlotLayout::new(3, 100).unwrap()).unwrap_err();
        assert!(matches!(err, ShmError::Layout(LayoutError::HeaderMismatch(_))), "{err}");
    }
}
