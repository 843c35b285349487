//! Shared memory: where a request's pixels travel from gateway to host.
//!
//! - [`layout`]: the `#[repr(C)]` segment header and the slot arithmetic,
//!   all safe code, every offset checked.
//! - [`naming`]: segment names, and which process owns a name (for the
//!   host's sweep of segments left by a killed host).
//! - [`mapping`]: a mapping and its bounds-checked copies: the crate's only
//!   `unsafe` code.
//! - [`segment`]: the host's slots, on a mapping, in safe code.
//! - [`client_region`]: a window of a client's own shm object (the
//!   protocol's `system_shared_memory` extension), opened by key; safe
//!   code on a mapping too.
//!
//! One segment per gateway connection: the host creates it, the gateway maps
//! it, and the host unlinks the name as soon as the gateway has mapped it.
//! From then on the memory lives exactly as long as the two mappings, so a
//! SIGKILL of either side leaves nothing in /dev/shm.

pub mod client_region;
pub mod layout;
#[allow(unsafe_code)]
pub mod mapping;
pub mod naming;
pub mod segment;

pub use client_region::{ClientRegion, ClientRegionError};
pub use layout::{LayoutError, SEGMENT_MAGIC, SEGMENT_VERSION, SegmentHeader, SlotLayout};
pub use segment::{Segment, ShmError};
