//! A vision model's outputs back onto the client's image: [`transform`]
//! (the stretch or letterbox, and its inverse), [`boxes`] (detections) and
//! [`masks`] (segmentation masks and the PNGs made from them), [`areas`]
//! (a mask's per-class counts and boxes).

pub mod areas;
pub mod boxes;
pub mod masks;
pub mod transform;

pub use transform::Transform;
