//! A mapped segment: the one place in the project with `unsafe` code.
//!
//! The host creates a segment per gateway connection and only ever reads
//! slots; the gateway writes a slot only while it holds the host's lease for
//! it and before it sends the `Infer` that names it. Every access goes
//! through [`SlotLayout::slot_range`], so no index or length a peer sends
//! can reach outside the mapping.

use std::os::unix::fs::PermissionsExt;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use shared_memory::{Shmem, ShmemConf, ShmemError};
use thiserror::Error;

use super::layout::{LayoutError, SegmentHeader, SlotLayout};

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
}

/// A mapping of one segment, in either process.
pub struct Segment {
    /// The mapping. Dropping it unmaps, and unlinks the name if we still own it.
    shmem: Shmem,
    /// Checked geometry; every access goes through it.
    layout: SlotLayout,
    /// The POSIX name, kept for logs after the name is unlinked.
    os_id: String,
}

// SAFETY: `Shmem` is neither Send nor Sync only because it holds a raw
// pointer. The pointer is to a MAP_SHARED mapping that stays valid until
// `Shmem` is dropped, no matter which thread uses or drops it, and this type
// only touches the memory through `ptr::copy_nonoverlapping` on ranges
// checked against the layout: there are no references into the mapping that
// could alias across threads.
unsafe impl Send for Segment {}
// SAFETY: see `Send` above; `&Segment` methods copy bytes in or out of the
// mapping and never hand out references to it.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates and initialises a segment (host side). The file under
    /// /dev/shm gets `mode` (0600 when host and gateways share a user,
    /// 0660 when gateways reach it through a shared group).
    pub fn create(os_id: &str, layout: SlotLayout, mode: u32) -> Result<Self, ShmError> {
        let shmem = ShmemConf::new()
            .os_id(os_id)
            .size(layout.total_size() as usize)
            .create()
            .map_err(|source| ShmError::Os { name: os_id.to_string(), source })?;
        let segment = Segment { shmem, layout, os_id: os_id.to_string() };
        let path = format!("/dev/shm/{}", os_id.trim_start_matches('/'));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|source| ShmError::Mode { name: os_id.to_string(), mode, source })?;
        segment.write_header(layout.header());
        Ok(segment)
    }

    /// Maps a segment the host named in its welcome (gateway side) and
    /// checks its header against the handshake.
    pub fn open(os_id: &str, expected: SlotLayout) -> Result<Self, ShmError> {
        let shmem = ShmemConf::new()
            .os_id(os_id)
            .open()
            .map_err(|source| ShmError::Os { name: os_id.to_string(), source })?;
        let mapped_len = shmem.len() as u64;
        if mapped_len < std::mem::size_of::<SegmentHeader>() as u64 {
            return Err(LayoutError::HeaderMismatch(format!("mapping of {mapped_len} bytes holds no header")).into());
        }
        let segment = Segment { shmem, layout: expected, os_id: os_id.to_string() };
        let header = segment.read_header();
        let layout = SlotLayout::from_header(&header, &expected, mapped_len)?;
        Ok(Segment { layout, ..segment })
    }

    /// Removes the segment's name from /dev/shm; the memory stays mapped
    /// here and in every process that already mapped it.
    pub fn unlink(&mut self) -> Result<(), ShmError> {
        if !self.shmem.is_owner() {
            return Ok(());
        }
        nix::sys::mman::shm_unlink(self.os_id.as_str())
            .map_err(|source| ShmError::Unlink { name: self.os_id.clone(), source })?;
        self.shmem.set_owner(false);
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
        // SAFETY: `range` was checked against the layout, and the layout was
        // checked against the mapping's length when it was created or opened,
        // so the destination lies inside the live mapping. `data` is a Rust
        // slice in private memory, so the ranges cannot overlap.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.shmem.as_ptr().add(range.start), data.len()) };
        Ok(())
    }

    /// Copies the first `dst.len()` bytes of slot `index` into `dst`.
    pub fn read_slot(&self, index: u32, dst: &mut [u8]) -> Result<(), ShmError> {
        let range = self.layout.slot_range(index, dst.len() as u64)?;
        // SAFETY: as in `write_slot`, the source range lies inside the
        // mapping and `dst` is private memory. A misbehaving gateway that
        // writes the slot during the copy can only change which pixel values
        // we read; the copy goes to bytes that no reference observes
        // concurrently, and any byte value is a valid u8.
        unsafe { ptr::copy_nonoverlapping(self.shmem.as_ptr().add(range.start), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Writes the header, magic last with release ordering, so that a
    /// reader that observes the magic observes the whole header.
    fn write_header(&self, header: SegmentHeader) {
        let base = self.shmem.as_ptr();
        let unpublished = SegmentHeader { magic: 0, ..header };
        // SAFETY: the mapping is at least one page (layout.total_size() >=
        // 4096 > size_of::<SegmentHeader>()), page-aligned by mmap, so the
        // header's 8-byte alignment holds; no other process knows the name yet.
        unsafe { ptr::write(base.cast::<SegmentHeader>(), unpublished) };
        // SAFETY: `magic` is the header's first field, 8-byte aligned, inside
        // the mapping; AtomicU64 has the same layout as u64.
        let magic = unsafe { &*base.cast::<AtomicU64>() };
        magic.store(header.magic, Ordering::Release);
    }

    fn read_header(&self) -> SegmentHeader {
        let base = self.shmem.as_ptr();
        // SAFETY: the caller checked that the mapping holds a header; the
        // mapping is page-aligned; the magic is the first field (see write_header).
        let magic = unsafe { &*base.cast::<AtomicU64>() }.load(Ordering::Acquire);
        // SAFETY: in bounds and aligned as above; SegmentHeader is plain
        // integers, so any bytes form a valid value.
        let header = unsafe { ptr::read(base.cast::<SegmentHeader>()) };
        SegmentHeader { magic, ..header }
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
    use std::sync::atomic::AtomicU64;

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
