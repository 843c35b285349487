//! The host's GPU through NVML: memory used and installed, utilisation and
//! power, as Triton exports them.
//!
//! NVML (`libnvidia-ml.so.1`, from the driver) is opened at run time, as
//! nvJPEG is: a host without it, or on the CPU, reports no GPU and logs
//! why once, at start.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use protocol::GpuStats;

/// NVML opened, and which of its devices is the host's.
pub struct Gpu {
    nvml: Nvml,
    /// The device as NVML names it: its UUID when CUDA_VISIBLE_DEVICES
    /// named it so, else NVML's index.
    device: NvmlDevice,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NvmlDevice {
    Index(u32),
    Uuid(String),
}

impl Gpu {
    /// NVML for CUDA device `cuda_index`; None (with the reason in the log)
    /// when NVML cannot be opened or does not know the device.
    pub fn open(cuda_index: u32) -> Option<Gpu> {
        let device = nvml_device(cuda_index, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref());
        let opened = Nvml::builder().lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1")).init();
        let gpu = match opened {
            Ok(nvml) => Gpu { nvml, device },
            Err(e) => {
                tracing::warn!(error = %e, "NVML cannot be opened; no nv_gpu_* metrics");
                return None;
            }
        };
        match gpu.read() {
            Ok(stats) => {
                tracing::info!(gpu = stats.index, uuid = %stats.uuid, "NVML opened for the GPU metrics");
                Some(gpu)
            }
            Err(e) => {
                tracing::warn!(error = %e, device = ?gpu.device, "NVML cannot read the host's GPU; no nv_gpu_* metrics");
                None
            }
        }
    }

    /// The device's figures now.
    pub fn read(&self) -> Result<GpuStats, NvmlError> {
        let device = match &self.device {
            NvmlDevice::Index(i) => self.nvml.device_by_index(*i)?,
            NvmlDevice::Uuid(uuid) => self.nvml.device_by_uuid(uuid.as_str())?,
        };
        let memory = device.memory_info()?;
        Ok(GpuStats {
            index: device.index()?,
            uuid: device.uuid()?,
            memory_used_bytes: memory.used,
            memory_total_bytes: memory.total,
            utilization: f64::from(device.utilization_rates()?.gpu) / 100.0,
            // NVML reports milliwatts.
            power_watts: f64::from(device.power_usage()?) / 1000.0,
        })
    }
}

/// Which NVML device is CUDA's `cuda_index`: CUDA numbers only the devices
/// CUDA_VISIBLE_DEVICES lists, in its order (indices or UUIDs); NVML
/// numbers every device. Without the variable (or one that names neither),
/// the two agree on a machine of like GPUs.
fn nvml_device(cuda_index: u32, visible: Option<&str>) -> NvmlDevice {
    let named = visible.and_then(|v| v.split(',').map(str::trim).nth(cuda_index as usize));
    match named {
        Some(n) if n.starts_with("GPU-") || n.starts_with("MIG-") => NvmlDevice::Uuid(n.to_string()),
        Some(n) => n.parse().map_or(NvmlDevice::Index(cuda_index), NvmlDevice::Index),
        None => NvmlDevice::Index(cuda_index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_maps_cuda_indices_to_nvml_devices() {
        assert_eq!(nvml_device(0, None), NvmlDevice::Index(0));
        assert_eq!(nvml_device(1, Some("3,2")), NvmlDevice::Index(2));
        assert_eq!(nvml_device(0, Some("GPU-5fb3c9a2")), NvmlDevice::Uuid("GPU-5fb3c9a2".into()));
        assert_eq!(nvml_device(2, Some("0,1")), NvmlDevice::Index(2), "past the list: CUDA's own index");
    }

    #[test]
    fn a_host_without_nvml_reports_no_gpu_without_failing() {
        // This machine has no NVIDIA driver (CI, a CPU host): opening is None.
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return;
        }
        assert!(Gpu::open(0).is_none());
    }
}
