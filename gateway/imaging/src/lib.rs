//! The gateway's pixels, a crate of its own under gateway/ (so a change to
//! the gateway's routes recompiles none of it, and `scripts/dev`'s rebuild
//! after a save stays short):
//!
//! - [`decode`]: an uploaded image to the model's input pixels, or for a
//!   host that decodes JPEGs on its GPU, the file's header read and checked;
//! - [`postprocess`]: a vision model's boxes and masks brought back onto
//!   the client's image (the inverse of the stretch or letterbox), and the
//!   PNGs and cut-outs made from a mask;
//! - [`threads`]: small resizes on the request's thread, a big mask over
//!   the idle cores.
#![forbid(unsafe_code)]

pub mod decode;
pub mod postprocess;
pub mod threads;
