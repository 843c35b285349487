//! What the host reports of its memory and its GPU ([`protocol::HostMemory`]):
//! its resident memory ([`resident`]), the bytes its model's weights hold
//! on the device (measured at load, kept in the counters), and its GPU's
//! memory, utilisation and power through NVML ([`nvml`]).

pub mod nvml;
pub mod resident;

use std::sync::atomic::Ordering::Relaxed;

use protocol::HostMemory;

use crate::counters::Counters;

/// Opened once at start, read at each Status.
pub struct Resources {
    /// None on the CPU, or where NVML cannot be opened.
    gpu: Option<nvml::Gpu>,
}

impl Resources {
    /// For a model on `device` ("cpu", "cuda:1"): NVML is opened only for
    /// a CUDA device.
    pub fn open(device: &str) -> Resources {
        let cuda_index = device.strip_prefix("cuda:").and_then(|i| i.parse().ok());
        Resources { gpu: cuda_index.and_then(nvml::Gpu::open) }
    }

    /// The figures now. A GPU that NVML fails to read this time is left
    /// out, not an error: the other figures still go out.
    pub fn report(&self, counters: &Counters) -> HostMemory {
        let gpu = self.gpu.as_ref().and_then(|gpu| match gpu.read() {
            Ok(stats) => Some(stats),
            Err(e) => {
                tracing::debug!(error = %e, "NVML read failed");
                None
            }
        });
        HostMemory { resident_bytes: resident::resident_bytes(), model_bytes: counters.model_bytes.load(Relaxed), gpu }
    }
}
