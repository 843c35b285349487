//! A client's shared-memory region (Triton's `system_shared_memory`
//! extension): a POSIX shm object that a client process created, mapped
//! here so that tensors can be read from it and written to it.
//!
//! The other side is untrusted and may write the memory while we copy it,
//! so the mapping is only ever touched through [`super::mapping`]'s
//! checked copies, on ranges checked against the registered window first.
//!
//! Known limit, shared with Triton: a client that shrinks its object with
//! `ftruncate` after registering makes a later access to the lost pages
//! fault (SIGBUS). That is why the gateway only offers this extension when
//! its operator turns it on.

use shared_memory::ShmemError;
use thiserror::Error;

use super::mapping::Mapping;
use super::naming::SEGMENT_PREFIX;

/// Longest key accepted (POSIX NAME_MAX, the leading '/' included).
pub const MAX_KEY_LEN: usize = 255;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientRegionError {
    #[error("invalid shared-memory key {key:?}: {problem}")]
    InvalidKey { key: String, problem: &'static str },
    #[error("unable to open shared-memory key {key:?}: {reason}")]
    Open { key: String, reason: String },
    #[error(
        "offset {offset} + byte_size {byte_size} is past the end of shared-memory key {key:?} ({object_size} bytes)"
    )]
    PastObject { key: String, offset: u64, byte_size: u64, object_size: u64 },
    #[error("bytes {offset}..{offset}+{len} are outside the region's {byte_size} bytes")]
    OutOfRange { offset: u64, len: u64, byte_size: u64 },
}

/// A window `[offset, offset + byte_size)` of a client's shm object,
/// mapped read-write.
pub struct ClientRegion {
    /// The whole object's mapping; dropping it unmaps (never unlinks: the
    /// object is the client's).
    mapping: Mapping,
    /// Where the window starts in the object.
    offset: u64,
    /// The window's length; every access is checked against it.
    byte_size: u64,
    /// The POSIX name, for messages.
    key: String,
}

impl ClientRegion {
    /// Opens the existing object `key` and checks that the window
    /// `[offset, offset + byte_size)` lies inside it.
    pub fn open(key: &str, offset: u64, byte_size: u64) -> Result<Self, ClientRegionError> {
        check_key(key)?;
        let mapping = Mapping::open(key).map_err(|e| ClientRegionError::Open {
            key: key.to_string(),
            reason: match e {
                ShmemError::MapOpenFailed(errno) => nix::errno::Errno::from_raw(errno as i32).desc().to_string(),
                other => other.to_string(),
            },
        })?;
        let object_size = mapping.len() as u64;
        let past = || ClientRegionError::PastObject { key: key.to_string(), offset, byte_size, object_size };
        if offset.checked_add(byte_size).is_none_or(|end| end > object_size) {
            return Err(past());
        }
        Ok(ClientRegion { mapping, offset, byte_size, key: key.to_string() })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where the window starts in the object.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The window's length.
    pub fn byte_size(&self) -> u64 {
        self.byte_size
    }

    /// Copies `len` bytes at `offset` (within the window) out.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ClientRegionError> {
        let start = self.range(offset, len)?;
        let mut out = vec![0u8; len as usize];
        self.copy_out(start, &mut out)?;
        Ok(out)
    }

    /// Fills `dst` from `offset` (within the window).
    pub fn read_into(&self, offset: u64, dst: &mut [u8]) -> Result<(), ClientRegionError> {
        let start = self.range(offset, dst.len() as u64)?;
        self.copy_out(start, dst)
    }

    /// Copies `data` to `offset` (within the window).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), ClientRegionError> {
        let start = self.range(offset, data.len() as u64)?;
        self.mapping.copy_in(start, data).map_err(|_| self.out_of_range(offset, data.len() as u64))
    }

    fn copy_out(&self, start: usize, dst: &mut [u8]) -> Result<(), ClientRegionError> {
        let offset = start as u64 - self.offset;
        self.mapping.copy_out(start, dst).map_err(|_| self.out_of_range(offset, dst.len() as u64))
    }

    fn out_of_range(&self, offset: u64, len: u64) -> ClientRegionError {
        ClientRegionError::OutOfRange { offset, len, byte_size: self.byte_size }
    }

    /// The mapping offset of `[offset, offset + len)` of the window, checked.
    fn range(&self, offset: u64, len: u64) -> Result<usize, ClientRegionError> {
        let out = || self.out_of_range(offset, len);
        let end = offset.checked_add(len).ok_or_else(out)?;
        if end > self.byte_size {
            return Err(out());
        }
        // Cannot overflow or truncate: offset + end <= the object's length,
        // which is a usize (checked in `open`).
        Ok((self.offset + offset) as usize)
    }
}

/// A single POSIX name: '/', then up to 254 bytes with no '/' or NUL; and
/// never one of the host's own segments.
pub fn check_key(key: &str) -> Result<(), ClientRegionError> {
    let invalid = |problem| Err(ClientRegionError::InvalidKey { key: key.to_string(), problem });
    let Some(rest) = key.strip_prefix('/') else {
        return invalid("must start with '/'");
    };
    if key.len() > MAX_KEY_LEN {
        return invalid("longer than 255 bytes");
    }
    if rest.is_empty() {
        return invalid("names nothing after '/'");
    }
    if rest.contains('/') || rest.contains('\0') {
        return invalid("may not contain '/' after the first byte, or NUL");
    }
    if rest.starts_with(SEGMENT_PREFIX) {
        return invalid("names one of the model host's own segments");
    }
    Ok(())
}

impl std::fmt::Debug for ClientRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegion")
            .field("key", &self.key)
            .field("offset", &self.offset)
            .field("byte_size", &self.byte_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A client's object of `size` bytes, removed when dropped.
    fn client_object(size: usize) -> (Mapping, String) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let key = format!("/client-region-test.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let mapping = Mapping::create(&key, size).expect("creating a test object");
        (mapping, key)
    }

    #[test]
    fn reads_and_writes_go_through_the_window() {
        let (client, key) = client_object(4096);
        let region = ClientRegion::open(&key, 100, 50).unwrap();
        client.copy_in(110, b"hello").unwrap();
        assert_eq!(region.read(10, 5).unwrap(), b"hello");
        region.write(45, b"world").unwrap();
        let mut out = [0u8; 5];
        client.copy_out(145, &mut out).unwrap();
        assert_eq!(&out, b"world");
        let mut again = [0u8; 5];
        region.read_into(45, &mut again).unwrap();
        assert_eq!(&again, b"world");
        assert_eq!(region.read(0, 50).unwrap().len(), 50);
    }

    #[test]
    fn accesses_outside_the_window_are_errors() {
        let (_client, key) = client_object(4096);
        let region = ClientRegion::open(&key, 100, 50).unwrap();
        assert!(matches!(region.read(46, 5), Err(ClientRegionError::OutOfRange { .. })));
        assert!(matches!(region.write(50, b"x"), Err(ClientRegionError::OutOfRange { .. })));
        assert!(matches!(region.read(u64::MAX, 2), Err(ClientRegionError::OutOfRange { .. })));
        assert!(matches!(region.read_into(1, &mut [0; 50]), Err(ClientRegionError::OutOfRange { .. })));
        assert!(region.write(50, b"").is_ok(), "an empty write at the end is in range");
    }

    #[test]
    fn windows_past_the_object_are_refused() {
        let (_client, key) = client_object(4096);
        assert!(ClientRegion::open(&key, 0, 4096).is_ok());
        for (offset, size) in [(0, 4097), (4000, 97), (1, u64::MAX), (u64::MAX, 1)] {
            let err = ClientRegion::open(&key, offset, size).unwrap_err();
            assert!(matches!(err, ClientRegionError::PastObject { object_size: 4096, .. }), "{offset}+{size}: {err}");
        }
    }

    #[test]
    fn missing_objects_and_bad_keys_are_errors() {
        let err = ClientRegion::open("/client-region-test.does-not-exist", 0, 1).unwrap_err();
        assert!(matches!(&err, ClientRegionError::Open { reason, .. } if reason.contains("No such file")), "{err}");
        let long = format!("/{}", "a".repeat(255));
        for key in ["", "noslash", "/", "/a/b", "/a\0b", long.as_str(), "/model-host.1.2"] {
            assert!(matches!(check_key(key), Err(ClientRegionError::InvalidKey { .. })), "{key:?}");
        }
        assert!(check_key("/input_data").is_ok());
        assert!(check_key(&long[..255]).is_ok());
    }
}
