//! Shared memory: where a request's pixels travel from gateway to host.
//!
//! - [`layout`]: the `#[repr(C)]` segment header and the slot arithmetic,
//!   all safe code, every offset checked.
//! - [`naming`]: segment names, and which process owns a name (for the
//!   host's sweep of segments left by a killed host).
//! - [`segment`]: the mapping itself; with [`client_region`], the only
//!   `unsafe` code of the project.
//! - [`client_region`]: a window of a client's own shm object (the
//!   protocol's `system_shared_memory` extension), opened by key.
//!
//! One segment per gateway connection: the host creates it, the gateway maps
//! it, and the host unlinks the name as soon as the gateway has mapped it.
//! From then on the memory lives exactly as long as the two mappings, so a
//! SIGKILL of either side leaves nothing in /dev/shm.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client_region;
pub mod layout;
pub mod naming;
pub mod segment;

pub use client_region::{ClientRegion, ClientRegionError};
pub use layout::{LayoutError, SEGMENT_MAGIC, SEGMENT_VERSION, SegmentHeader, SlotLayout};
pub use segment::{Segment, ShmError};
