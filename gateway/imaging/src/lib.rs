//! The gateway's pixels, a crate of its own under gateway/ (so a change to
//! the gateway's routes recompiles none of it, and `scripts/dev`'s rebuild
//! after a save stays short):
//!
//! - [`decode`]: an uploaded image to the model's input pixels, or for a
//!   host that decodes JPEGs on its GPU, the file's header read and checked;
//! - [`postprocess`]: a vision model's boxes and masks brought back onto
//!   the client's image (the inverse of the stretch or letterbox), and the
//!   PNGs and cut-outs made from a mask.
#![forbid(unsafe_code)]

pub mod decode;
pub mod postprocess;
