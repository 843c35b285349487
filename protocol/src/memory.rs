//! What a host reports of its memory and its GPU in [`crate::HostStatus`],
//! for the gateways' metrics (Triton's `nv_gpu_*` and the host's own).

use serde::{Deserialize, Serialize};

/// The host process's memory and its device's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMemory {
    /// The host process's resident memory (its RSS), in bytes.
    pub resident_bytes: u64,
    /// Bytes the model's weights (parameters and buffers) hold on its
    /// device, as loaded; 0 until the model is loaded.
    pub model_bytes: u64,
    /// The host's GPU, read through NVML; None on a CPU host, or where
    /// NVML (libnvidia-ml.so.1) cannot be opened.
    pub gpu: Option<GpuStats>,
}

/// One GPU as NVML sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuStats {
    /// NVML's index of the device (nvidia-smi's, which may differ from
    /// CUDA's under CUDA_VISIBLE_DEVICES).
    pub index: u32,
    /// The device's UUID, e.g. "GPU-5fb3c9...".
    pub uuid: String,
    /// Device memory in use, by every process, in bytes.
    pub memory_used_bytes: u64,
    /// Device memory installed, in bytes.
    pub memory_total_bytes: u64,
    /// Share of the last sample period (1/6 s to 1 s, by the device) in
    /// which a kernel ran, 0 to 1.
    pub utilization: f64,
    /// Power drawn now, in watts.
    pub power_watts: f64,
}
