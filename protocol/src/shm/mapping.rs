//! A shared-memory mapping and bounds-checked copies in and out of it: the
//! only `unsafe` code of the protocol crate. [`super::segment`] (the
//! host's slots) and [`super::client_region`] (a client's registered
//! object) are safe code built on it.
//!
//! The other side of a mapping may write it at any time, so nothing here
//! hands out a reference into it: bytes are copied with
//! `ptr::copy_nonoverlapping`, and the one word read and written in place
//! (a segment's magic, the init fence) goes through an atomic.
#![deny(unsafe_op_in_unsafe_fn)]

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use shared_memory::{Shmem, ShmemConf, ShmemError};
use thiserror::Error;

/// An access past the mapping's end (or, for a word, misaligned).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bytes {offset}..{offset}+{len} are outside the {mapped}-byte mapping or misaligned")]
pub struct OutOfBounds {
    pub offset: usize,
    pub len: usize,
    pub mapped: usize,
}

/// One mapping of a POSIX shared-memory object.
pub struct Mapping {
    /// The mapping; dropping it unmaps, and unlinks the name if we own it.
    shmem: Shmem,
}

// SAFETY: `Shmem` is neither Send nor Sync only because it holds a raw
// pointer. The pointer is to a MAP_SHARED mapping that stays valid until
// `Shmem` is dropped, whichever thread uses or drops it, and this type only
// touches the memory through copies on checked ranges and one atomic word:
// no reference into the mapping exists that could alias across threads.
unsafe impl Send for Mapping {}
// SAFETY: see `Send` above; `&Mapping` methods copy bytes in or out, or use
// an atomic. Concurrent writers race on byte values (as the other process
// always can), never on memory safety: any byte is a valid u8.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates the object `os_id` of `size` bytes and maps it; we own the name.
    pub fn create(os_id: &str, size: usize) -> Result<Self, ShmemError> {
        ShmemConf::new().os_id(os_id).size(size).create().map(|shmem| Mapping { shmem })
    }

    /// Maps the existing object `os_id`, whole.
    pub fn open(os_id: &str) -> Result<Self, ShmemError> {
        ShmemConf::new().os_id(os_id).open().map(|shmem| Mapping { shmem })
    }

    pub fn len(&self) -> usize {
        self.shmem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether dropping this mapping unlinks the name.
    pub fn is_owner(&self) -> bool {
        self.shmem.is_owner()
    }

    pub fn set_owner(&mut self, owner: bool) {
        self.shmem.set_owner(owner);
    }

    fn check(&self, offset: usize, len: usize, align: usize) -> Result<(), OutOfBounds> {
        let mapped = self.len();
        let fits = offset.checked_add(len).is_some_and(|end| end <= mapped);
        if !fits || !offset.is_multiple_of(align) {
            return Err(OutOfBounds { offset, len, mapped });
        }
        Ok(())
    }

    /// Copies `data` to `offset`.
    pub fn copy_in(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len(), 1)?;
        // SAFETY: `check` put `offset..offset + data.len()` inside the live
        // mapping; `data` is private memory, so the ranges do not overlap.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), self.shmem.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Fills `dst` from `offset`.
    pub fn copy_out(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, dst.len(), 1)?;
        // SAFETY: as in `copy_in`, the source lies inside the mapping and
        // `dst` is private memory. A peer that writes during the copy only
        // changes which byte values we read; no reference to them exists.
        unsafe { ptr::copy_nonoverlapping(self.shmem.as_ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// The u64 at `offset` (8-aligned) as an atomic: what `f` does with it
    /// is ordered against the peer's accesses to the same word.
    fn with_word<T>(&self, offset: usize, f: impl FnOnce(&AtomicU64) -> T) -> Result<T, OutOfBounds> {
        self.check(offset, 8, 8)?;
        // SAFETY: in bounds and 8-aligned (`check`; mmap is page-aligned);
        // AtomicU64 has u64's layout, any 8 bytes are a valid value, and the
        // reference lives only for `f`, used only atomically.
        let word = unsafe { &*self.shmem.as_ptr().add(offset).cast::<AtomicU64>() };
        Ok(f(word))
    }

    /// Stores `value` at `offset` with release ordering: a peer that loads
    /// it with acquire sees every byte copied in before.
    pub fn store_release(&self, offset: usize, value: u64) -> Result<(), OutOfBounds> {
        self.with_word(offset, |w| w.store(value, Ordering::Release))
    }

    /// Loads the u64 at `offset` with acquire ordering (see `store_release`).
    pub fn load_acquire(&self, offset: usize) -> Result<u64, OutOfBounds> {
        self.with_word(offset, |w| w.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("/mapping-test.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    #[test]
    fn what_one_mapping_writes_another_reads() {
        let name = unique();
        let a = Mapping::create(&name, 4096).unwrap();
        let b = Mapping::open(&name).unwrap();
        a.copy_in(100, b"pixels").unwrap();
        a.store_release(8, 42).unwrap();
        assert_eq!(b.load_acquire(8).unwrap(), 42);
        let mut out = [0u8; 6];
        b.copy_out(100, &mut out).unwrap();
        assert_eq!(&out, b"pixels");
        assert!(a.is_owner() && !b.is_owner());
    }

    #[test]
    fn every_access_is_checked() {
        let m = Mapping::create(&unique(), 4096).unwrap();
        let out = |offset, len| OutOfBounds { offset, len, mapped: 4096 };
        assert_eq!(m.copy_in(4090, &[0; 7]), Err(out(4090, 7)));
        assert_eq!(m.copy_out(usize::MAX, &mut [0; 2]), Err(out(usize::MAX, 2)));
        assert_eq!(m.copy_in(4096, &[]), Ok(()), "an empty copy at the end is in range");
        assert_eq!(m.load_acquire(4092), Err(out(4092, 8)), "past the end");
        assert_eq!(m.store_release(4, 1), Err(out(4, 8)), "misaligned");
        assert_eq!(m.load_acquire(4088), Ok(0));
    }
}
