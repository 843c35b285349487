//! Resolves `--device` against the hardware, and names the result.

use crate::config::DeviceChoice;
use crate::error::HostError;

/// Picks the tch device. The first CUDA query initialises the driver, so
/// this is where "process start to device ready" is spent on a GPU.
pub fn resolve(choice: DeviceChoice) -> Result<tch::Device, HostError> {
    match choice {
        DeviceChoice::Cpu => Ok(tch::Device::Cpu),
        DeviceChoice::Auto => Ok(if tch::Cuda::is_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }),
        DeviceChoice::Cuda(index) => {
            let count = tch::Cuda::device_count();
            if (index as i64) < count {
                Ok(tch::Device::Cuda(index))
            } else {
                Err(HostError::NoSuchGpu { index, count })
            }
        }
    }
}

pub fn name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}
