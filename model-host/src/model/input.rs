//! A batch as the model takes it.

use tch::Tensor;

/// A batch on the device: the model's forward() arguments, in order, each
/// with the (padded) batch as its first dimension.
pub struct Input {
    pub tensors: Vec<Tensor>,
    pub batch: i64,
}
