//! Inputs and outputs that name a registered system shared-memory region
//! (`parameters.shared_memory_region`, `shared_memory_byte_size`,
//! `shared_memory_offset`), resolved against the gateway's registry
//! ([`crate::system_shm`]), which checks every offset and size.

use serde_json::{Map, Value};

pub use crate::system_shm::RegionUse;
use crate::system_shm::Registry;

use crate::error::{ApiError, invalid};

/// The registry, when the operator turned the extension on.
#[derive(Clone, Copy)]
pub struct SharedMemory<'a>(pub Option<&'a Registry>);

impl SharedMemory<'_> {
    #[cfg(test)]
    pub fn disabled() -> Self {
        Self(None)
    }
}

/// The region an input or output names, held in use; None when it names none.
pub fn region_of(shm: &SharedMemory, field: &'static str, owner: &str, parameters: &Map<String, Value>) -> Result<Option<RegionUse>, ApiError> {
    let Some(region) = parameters.get("shared_memory_region") else {
        return Ok(None);
    };
    let Some(region) = region.as_str() else {
        return Err(invalid(field, format!("{owner}.parameters.shared_memory_region is {region}; expected a region name")));
    };
    let Some(registry) = shm.0 else {
        return Err(invalid(
            field,
            format!("{owner} names shared-memory region {region:?}, but system shared memory is disabled on this gateway (--system-shared-memory)"),
        ));
    };
    let number = |key: &str, default: Option<u64>| match (parameters.get(key), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(invalid(field, format!("{owner}.parameters.{key} is missing; a region needs it"))),
        (Some(v), _) => v.as_u64().ok_or_else(|| invalid(field, format!("{owner}.parameters.{key} is {v}; expected a byte count"))),
    };
    let byte_size = number("shared_memory_byte_size", None)?;
    let offset = number("shared_memory_offset", Some(0))?;
    registry.resolve(region, offset, byte_size).map(Some).map_err(|e| invalid(field, format!("{owner}: {e}")))
}
