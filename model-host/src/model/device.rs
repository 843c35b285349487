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

/// Refuses to load onto a GPU that has too little free memory for the
/// model: its weights file (loaded before any cast) plus `headroom_mb`
/// (CUDA context, cuDNN workspaces, the largest batch's activations). A
/// swap keeps two models resident until the old host drains; this makes a
/// GPU that cannot hold both a clear refusal at start, naming the figures,
/// instead of an out-of-memory error in the middle of the load. Where the
/// figures cannot be read, the load goes ahead (and says so).
///
/// `frozen_after_ready`: the weights may be resident twice, since the
/// frozen copy remakes those freezing changes (batch norms folded into
/// convolutions, linear weights transposed) while the loaded module still
/// serves.
pub fn check_room(device: tch::Device, model_file: &std::path::Path, frozen_after_ready: bool, headroom_mb: u64) -> Result<(), HostError> {
    let tch::Device::Cuda(index) = device else { return Ok(()) };
    let (free, total) = match crate::torch_shim::cuda_memory(index) {
        Ok(figures) => figures,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the GPU's free memory; loading without the check");
            return Ok(());
        }
    };
    let weights = weights_resident(std::fs::metadata(model_file).map(|m| m.len()).unwrap_or(0), frozen_after_ready);
    let needed = weights + headroom_mb * MIB;
    tracing::info!(free_mib = free / MIB, total_mib = total / MIB, needed_mib = needed / MIB, "GPU memory before the load");
    if free < needed {
        return Err(HostError::NoRoomOnGpu {
            device: name(device),
            free_mib: free / MIB,
            total_mib: total / MIB,
            weights_mib: weights.div_ceil(MIB),
            headroom_mb,
        });
    }
    Ok(())
}

const MIB: u64 = 1 << 20;

/// The most bytes of weights resident at once, for a file of `file_bytes`.
fn weights_resident(file_bytes: u64, frozen_after_ready: bool) -> u64 {
    if frozen_after_ready { 2 * file_bytes } else { file_bytes }
}

pub fn name(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        tch::Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// On a GPU, starts a thread that runs one tiny convolution and one matrix
/// product in `kind`, so that cuDNN's and cuBLAS's libraries are loaded and
/// initialised while the model file loads, rather than on the first
/// warm-up pass (they are process-wide; about a third of the first pass's
/// 0.85 s on an H200). Join it before the warm-up; any error only means
/// the warm-up pays for the loading itself. None off the GPU.
pub fn prime_libraries(device: tch::Device, kind: tch::Kind) -> Option<std::thread::JoinHandle<()>> {
    if !device.is_cuda() {
        return None;
    }
    let prime = move || -> Result<(), tch::TchError> {
        let started = std::time::Instant::now();
        let x = tch::Tensor::f_zeros([1, 8, 16, 16], (kind, device))?;
        let w = tch::Tensor::f_zeros([8, 8, 3, 3], (kind, device))?;
        let y = x.f_conv2d(&w, None::<tch::Tensor>, [1, 1], [1, 1], [1, 1], 1)?;
        let m = y.f_view([128, 16])?.f_matmul(&tch::Tensor::f_zeros([16, 16], (kind, device))?)?;
        m.f_sum(tch::Kind::Float)?.f_double_value(&[])?;
        tracing::info!(ms = started.elapsed().as_secs_f64() * 1e3, "cuDNN and cuBLAS loaded");
        Ok(())
    };
    std::thread::Builder::new()
        .name("prime-libraries".into())
        .spawn(move || {
            if let Err(e) = prime() {
                tracing::debug!(error = %e, "priming cuDNN/cuBLAS failed; the warm-up will load them");
            }
        })
        .ok()
}

/// libtorch's threads for a model on `device`: `cpu_threads` (0: one on a
/// GPU, libtorch's default on a CPU), and TorchScript's profiling executor
/// off. On a GPU the CPU side of a batch is two copies and kernel launches:
/// more intra-op threads only spin-wait between them, and on an H100
/// machine the default (one per core) kept all 16 cores busy and slowed
/// every forward pass by half (docs/benchmarks.md). The profiling executor
/// re-specialises the graph for each new input shape, costing seconds on
/// the first requests of a shape (seen on an H100 with ResNet-50); batches
/// are padded to a few warmed shapes instead.
pub fn set_threads(device: tch::Device, cpu_threads: u32) {
    let threads = match cpu_threads {
        0 if device.is_cuda() => 1,
        n => n as i32,
    };
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    tch::jit::set_profiling_mode(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frozen copy made after READY may remake every weight while the
    /// loaded module serves: the check budgets the file twice then.
    #[test]
    fn a_freeze_after_ready_budgets_the_weights_twice() {
        assert_eq!(weights_resident(98 * MIB, false), 98 * MIB);
        assert_eq!(weights_resident(98 * MIB, true), 196 * MIB);
    }

    /// Off the GPU there is nothing to check, whatever the settings.
    #[test]
    fn the_cpu_is_not_checked() {
        assert!(check_room(tch::Device::Cpu, std::path::Path::new("/nonexistent"), true, u64::MAX / MIB).is_ok());
    }
}
