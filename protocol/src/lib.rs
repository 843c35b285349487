//! The contract between a gateway and the model-host.
//!
//! A request travels gateway -> host in three layers, each in its own module:
//!
//! - [`shm`]: the pixels. The host creates one shared-memory segment per
//!   gateway connection, cut into fixed-size slots; a gateway writes a
//!   request's uint8 pixels into a slot the host leased to it. Pixels never
//!   cross the socket.
//! - [`codec`]: the bytes. Each control message is one frame: a big-endian
//!   u32 length, then a bincode body, decoded with an explicit size limit.
//! - [`message`]: the meaning. [`GatewayMessage`] and [`HostMessage`] are the
//!   only things either side may say; [`handshake`] is the first exchange.
//! - [`jobs`]: the messages' types for iterative models, whose requests
//!   run for many steps as jobs the host keeps.
//! - [`memory`]: the host's memory and GPU figures, for metrics.
//! - [`trace`]: a request's W3C trace context, so that the host's spans
//!   join the gateway's trace.
//!
//! This crate never links libtorch or CUDA: the gateway depends on it.
#![deny(unsafe_code)]

pub mod codec;
pub mod handshake;
pub mod jobs;
pub mod memory;
pub mod message;
pub mod shm;
pub mod tag;
pub mod tensor;
pub mod trace;
pub mod vision;

pub use codec::{CodecError, ControlCodec, GatewayCodec, HostCodec, MAX_FRAME_LEN};
pub use memory::{GpuStats, HostMemory};
pub use jobs::{IterativeModel, JobError, JobOutput, JobState, JobSubmit, JobView};
pub use handshake::{HandshakeError, PROTOCOL_VERSION, check_hello};
pub use message::*;
pub use tag::{item_tag, request_tag};
pub use tensor::{DataType, Placement, TensorSignature, TensorSpec};
pub use trace::TraceParent;
pub use vision::{VisionModel, VisionTask};
