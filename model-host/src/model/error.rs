//! What can go wrong running a model, whichever kind.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("model output has shape {got:?}, expected [{batch}, {classes}] (batch x labels in model.toml)")]
    OutputShape { got: Vec<i64>, batch: i64, classes: i64 },
    /// A tensor model's output differs from its `[[outputs]]` entry.
    #[error("model output {name:?}: the model gave {got}, model.toml says {expected}")]
    OutputMismatch { name: String, got: String, expected: String },
    /// A tensor model returned something other than the outputs declared.
    #[error("model outputs: {0}")]
    Outputs(String),
    /// The libtorch shim could not load the module.
    #[error("loading the module: {0}")]
    Load(String),
    /// The module's forward pass failed (a C++ exception, as a message).
    #[error("forward pass: {0}")]
    Forward(String),
    /// Capturing or replaying a CUDA graph failed.
    #[error("CUDA graph: {0}")]
    Graph(String),
    /// Ordering work between CUDA streams (an event) failed.
    #[error("CUDA stream: {0}")]
    Stream(String),
}
