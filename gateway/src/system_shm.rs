//! The registry of the `system_shared_memory` extension: the regions clients
//! registered by name, each a mapped window of a client's shm object.
//!
//! An inference that names a region [`Registry::resolve`]s it into a
//! [`RegionUse`], a guard that holds the mapping and counts as a user of
//! the region until dropped; unregistering a region with users is refused,
//! so a region never disappears under an inference (and the `Arc` keeps the
//! mapping itself alive in any case).
//!
//! The routes are in [`crate::routes::v2::system_shm`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use protocol::shm::{ClientRegion, ClientRegionError};
use serde::Serialize;
use thiserror::Error;

/// Most regions one gateway holds: each keeps a descriptor and a mapping.
pub const MAX_REGIONS: usize = 1024;
/// Longest region name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("invalid shared memory region name {name:?}: {problem}")]
    InvalidName { name: String, problem: &'static str },
    #[error("{MAX_REGIONS} shared memory regions are registered already, the most this gateway holds; unregister some first")]
    TooMany,
    /// Triton answers 400 for a name already registered.
    #[error("a shared memory region named {0:?} is already registered")]
    Duplicate(String),
    #[error("no shared memory region named {0:?} is registered")]
    Unknown(String),
    /// The region is in use by `users` inferences (HTTP 409, see [`crate::error`]).
    #[error("shared memory region {region:?} is in use by {users} inference(s); unregister it after they finish")]
    InUse { region: String, users: usize },
    #[error("shared memory region {region:?}: offset {offset} + byte_size {byte_size} is past its {region_size} bytes")]
    OutOfRegion { region: String, offset: u64, byte_size: u64, region_size: u64 },
    #[error("shared memory region {region:?}: {len} bytes do not fit in the {byte_size} bytes it was given")]
    TooLong { region: String, len: u64, byte_size: u64 },
    /// Opening the client's object, or an access past its window.
    #[error("shared memory region {region:?}: {source}")]
    Region { region: String, source: ClientRegionError },
}

/// One registered region, as Triton's status reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A registered region.
#[derive(Debug)]
struct Region {
    name: String,
    memory: ClientRegion,
    /// Live [`RegionUse`]s: incremented under the registry's lock only, so
    /// `unregister` sees every use begun before it.
    users: AtomicUsize,
}

impl Region {
    fn status(&self) -> RegionStatus {
        RegionStatus {
            name: self.name.clone(),
            key: self.memory.key().to_string(),
            offset: self.memory.offset(),
            byte_size: self.memory.byte_size(),
        }
    }
}

/// The regions of this gateway process, by name.
#[derive(Debug, Default)]
pub struct Registry {
    regions: Mutex<BTreeMap<String, Arc<Region>>>,
}

impl Registry {
    /// Maps the window `[offset, offset + byte_size)` of the client's object
    /// `key` under `name`.
    pub fn register(&self, name: &str, key: &str, offset: u64, byte_size: u64) -> Result<RegionStatus, RegistryError> {
        check_name(name)?;
        self.check_room(name)?;
        // Opened outside the lock: shm_open and mmap are system calls.
        let memory = ClientRegion::open(key, offset, byte_size)
            .map_err(|source| RegistryError::Region { region: name.to_string(), source })?;
        let region = Arc::new(Region { name: name.to_string(), memory, users: AtomicUsize::new(0) });
        let status = region.status();
        let mut regions = self.lock();
        check_room(&regions, name)?;
        regions.insert(name.to_string(), region);
        Ok(status)
    }

    /// Removes `name`; a name not registered is no error (as in Triton).
    /// Refused while inferences use the region.
    pub fn unregister(&self, name: &str) -> Result<(), RegistryError> {
        let mut regions = self.lock();
        if let Some(region) = regions.get(name) {
            check_unused(region)?;
            regions.remove(name);
        }
        Ok(())
    }

    /// Removes every region, or none if any is in use.
    pub fn unregister_all(&self) -> Result<(), RegistryError> {
        let mut regions = self.lock();
        regions.values().try_for_each(|r| check_unused(r))?;
        regions.clear();
        Ok(())
    }

    /// Every region (`None`), or the one named; an unknown name is an error.
    pub fn status(&self, name: Option<&str>) -> Result<Vec<RegionStatus>, RegistryError> {
        let regions = self.lock();
        match name {
            None => Ok(regions.values().map(|r| r.status()).collect()),
            Some(name) => {
                let region = regions.get(name).ok_or_else(|| RegistryError::Unknown(name.to_string()))?;
                Ok(vec![region.status()])
            }
        }
    }

    /// The bytes `[offset, offset + byte_size)` of the region `name`, held
    /// for an inference: the region cannot be unregistered until the guard
    /// is dropped.
    pub fn resolve(&self, name: &str, offset: u64, byte_size: u64) -> Result<RegionUse, RegistryError> {
        let regions = self.lock();
        let region = regions.get(name).ok_or_else(|| RegistryError::Unknown(name.to_string()))?;
        let region_size = region.memory.byte_size();
        if offset.checked_add(byte_size).is_none_or(|end| end > region_size) {
            return Err(RegistryError::OutOfRegion { region: name.to_string(), offset, byte_size, region_size });
        }
        region.users.fetch_add(1, Ordering::Relaxed);
        Ok(RegionUse { region: Arc::clone(region), offset, byte_size })
    }

    fn check_room(&self, name: &str) -> Result<(), RegistryError> {
        check_room(&self.lock(), name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Region>>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is one insert, remove or clear), so poisoning is ignored.
        self.regions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn check_name(name: &str) -> Result<(), RegistryError> {
    let invalid = |problem| Err(RegistryError::InvalidName { name: name.to_string(), problem });
    match name {
        "" => invalid("empty"),
        _ if name.len() > MAX_NAME_LEN => invalid("longer than 256 bytes"),
        _ => Ok(()),
    }
}

fn check_room(regions: &BTreeMap<String, Arc<Region>>, name: &str) -> Result<(), RegistryError> {
    if regions.contains_key(name) {
        return Err(RegistryError::Duplicate(name.to_string()));
    }
    if regions.len() >= MAX_REGIONS {
        return Err(RegistryError::TooMany);
    }
    Ok(())
}

fn check_unused(region: &Region) -> Result<(), RegistryError> {
    match region.users.load(Ordering::Relaxed) {
        0 => Ok(()),
        users => Err(RegistryError::InUse { region: region.name.clone(), users }),
    }
}

/// Part of a region, held by one inference; dropping it releases the region.
#[derive(Debug)]
pub struct RegionUse {
    region: Arc<Region>,
    /// Where this use starts, relative to the region's window.
    offset: u64,
    /// How many bytes this use covers.
    byte_size: u64,
}

impl RegionUse {
    pub fn region_name(&self) -> &str {
        &self.region.name
    }

    pub fn byte_size(&self) -> u64 {
        self.byte_size
    }

    /// A copy of all `byte_size` bytes.
    pub fn read(&self) -> Result<Vec<u8>, RegistryError> {
        self.region.memory.read(self.offset, self.byte_size).map_err(|e| self.error(e))
    }

    /// Copies `data` to the start of this use; `data` may be shorter than
    /// `byte_size`, never longer.
    pub fn write(&self, data: &[u8]) -> Result<(), RegistryError> {
        let len = data.len() as u64;
        if len > self.byte_size {
            return Err(RegistryError::TooLong { region: self.region.name.clone(), len, byte_size: self.byte_size });
        }
        self.region.memory.write(self.offset, data).map_err(|e| self.error(e))
    }

    fn error(&self, source: ClientRegionError) -> RegistryError {
        RegistryError::Region { region: self.region.name.clone(), source }
    }
}

impl Drop for RegionUse {
    fn drop(&mut self) {
        self.region.users.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_memory::{Shmem, ShmemConf};

    /// A client's object of `size` bytes, removed when dropped.
    fn client_object(size: usize) -> (Shmem, String) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let key = format!("/gateway-registry-test.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        (ShmemConf::new().os_id(&key).size(size).create().expect("creating a test object"), key)
    }

    #[test]
    fn register_status_and_unregister_in_tritons_terms() {
        let (_a, key_a) = client_object(1024);
        let (_b, key_b) = client_object(1024);
        let registry = Registry::default();
        registry.register("b", &key_b, 0, 1024).unwrap();
        registry.register("a", &key_a, 24, 1000).unwrap();
        assert_eq!(registry.register("a", &key_b, 0, 1), Err(RegistryError::Duplicate("a".into())));
        let all = registry.status(None).unwrap();
        assert_eq!(all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(all[0], RegionStatus { name: "a".into(), key: key_a.clone(), offset: 24, byte_size: 1000 });
        assert_eq!(registry.status(Some("b")).unwrap().len(), 1);
        assert_eq!(registry.status(Some("c")), Err(RegistryError::Unknown("c".into())));
        registry.unregister("a").unwrap();
        registry.unregister("a").unwrap();
        assert_eq!(registry.status(None).unwrap().len(), 1);
        registry.unregister_all().unwrap();
        assert!(registry.status(None).unwrap().is_empty());
    }

    #[test]
    fn bad_registrations_are_refused() {
        let (_a, key) = client_object(1024);
        let registry = Registry::default();
        for (key, offset, size) in [(key.as_str(), 1000, 25), (key.as_str(), u64::MAX, 1), ("/no-such-object-here", 0, 1), ("nokey", 0, 1)] {
            let err = registry.register("r", key, offset, size).unwrap_err();
            assert!(matches!(err, RegistryError::Region { .. }), "{key} {offset}+{size}: {err}");
        }
        assert!(registry.status(None).unwrap().is_empty());
        assert!(matches!(registry.register("", &key, 0, 1), Err(RegistryError::InvalidName { .. })));
        assert!(matches!(registry.register(&"n".repeat(257), &key, 0, 1), Err(RegistryError::InvalidName { .. })));
    }

    #[test]
    fn uses_read_write_and_hold_the_region() {
        let (_a, key) = client_object(1024);
        let registry = Registry::default();
        registry.register("r", &key, 512, 512).unwrap();
        assert!(matches!(registry.resolve("r", 500, 13), Err(RegistryError::OutOfRegion { region_size: 512, .. })));
        assert!(matches!(registry.resolve("r", 1, u64::MAX), Err(RegistryError::OutOfRegion { .. })));
        assert_eq!(registry.resolve("x", 0, 1).unwrap_err(), RegistryError::Unknown("x".into()));

        let input = registry.resolve("r", 100, 4).unwrap();
        let output = registry.resolve("r", 104, 8).unwrap();
        output.write(b"abcd").unwrap();
        assert!(matches!(output.write(&[0; 9]), Err(RegistryError::TooLong { len: 9, byte_size: 8, .. })));
        input.write(b"wxyz").unwrap();
        assert_eq!(input.read().unwrap(), b"wxyz");
        assert_eq!(&output.read().unwrap()[..4], b"abcd");

        assert_eq!(registry.unregister("r"), Err(RegistryError::InUse { region: "r".into(), users: 2 }));
        drop(input);
        assert!(matches!(registry.unregister_all(), Err(RegistryError::InUse { users: 1, .. })));
        drop(output);
        registry.unregister("r").unwrap();
    }
}
