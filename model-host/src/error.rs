//! Errors that stop the host (startup, socket, model). Errors about one
//! request travel back to its gateway as `protocol::InferError` instead.

use thiserror::Error;

use crate::model::config::ModelConfigError;

#[derive(Debug, Error)]
pub enum HostError {
    #[error(transparent)]
    ModelConfig(#[from] ModelConfigError),
    #[error("--device cuda:{index} asked for, but this machine has {count} CUDA device(s)")]
    NoSuchGpu { index: usize, count: i64 },
    #[error(
        "{device} has {free_mib} MiB free of {total_mib} MiB; loading needs about {} MiB ({weights_mib} MiB of weights + {headroom_mb} MiB headroom, --load-headroom-mb). Another model may still be resident: a swap keeps both until the old host drains",
        weights_mib + headroom_mb
    )]
    NoRoomOnGpu { device: String, free_mib: u64, total_mib: u64, weights_mib: u64, headroom_mb: u64 },
    #[error("model {path}: {source}")]
    ModelLoad { path: String, source: crate::model::ModelError },
    #[error("model check: {0}")]
    ModelCheck(String),
    #[error("model failed during warm-up: {0}")]
    Warmup(#[from] crate::model::ModelError),
    #[error("control socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
    #[error("control socket {path} belongs to a live model-host; refusing to take it over")]
    SocketInUse { path: String },
    #[error("startup failed: {0}")]
    Startup(String),
}
