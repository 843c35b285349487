//! A batch's outputs on their way back to host memory.
//!
//! On a GPU the copy is queued behind the forward pass into page-locked
//! memory and an event marks its end, so the model thread can queue the
//! next batch before it waits for this one's answers: the GPU then goes
//! from one batch straight to the next instead of idling while the thread
//! reads back, answers and launches (docs/benchmarks.md, "Two streams").
//! The copy is queued on the GPU before the next batch, so the GPU does
//! not make the answers wait for it; the model thread does send them only
//! after it has launched the next batch (docs/architecture.md).

use tch::{Device, Tensor};

use crate::model::ModelError;
use crate::torch_shim::stream::{CudaEvent, has_streams};

/// Output tensors being copied to host memory.
pub struct ToHost {
    /// On the CPU: the copies (or, off the GPU, the outputs themselves).
    tensors: Vec<Tensor>,
    /// Completes when the copies have landed; None off the GPU.
    landed: Option<CudaEvent>,
}

impl ToHost {
    /// Queues the copy of each tensor to page-locked host memory on the
    /// current stream and records an event after them. Off the GPU the
    /// tensors are already in host memory and are kept as they are.
    pub fn queue(tensors: Vec<Tensor>) -> Result<Self, ModelError> {
        let device = tensors.first().map_or(Device::Cpu, Tensor::device);
        if !device.is_cuda() {
            return Ok(ToHost { tensors, landed: None });
        }
        // non_blocking to the CPU: libtorch allocates the destination
        // page-locked and queues the copy without waiting for it. Without
        // events to wait on (a shim built without streams) the copy must
        // wait itself.
        let non_blocking = has_streams();
        let tensors = tensors.iter().map(|t| t.f_to_device_(Device::Cpu, t.kind(), non_blocking, false)).collect::<Result<_, _>>()?;
        let landed = CudaEvent::record(device).map_err(|e| ModelError::Stream(e.0))?;
        Ok(ToHost { tensors, landed })
    }

    /// Waits for the copies, then gives the host tensors, in order.
    pub fn wait(self) -> Result<Vec<Tensor>, ModelError> {
        if let Some(landed) = &self.landed {
            landed.synchronize().map_err(|e| ModelError::Stream(e.0))?;
        }
        Ok(self.tensors)
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    #[test]
    fn on_the_cpu_the_outputs_come_back_as_they_are() {
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[7i64, 8]);
        let back = ToHost::queue(vec![a.shallow_clone(), b.shallow_clone()]).unwrap().wait().unwrap();
        assert_eq!(back.len(), 2);
        assert!(back[0].equal(&a) && back[1].equal(&b));
    }

    #[test]
    fn on_a_gpu_the_copies_land_in_host_memory() {
        if !tch::Cuda::is_available() {
            return;
        }
        let on_gpu = Tensor::arange(1000, (Kind::Float, Device::Cuda(0))).view([10, 100]);
        let back = ToHost::queue(vec![on_gpu.shallow_clone()]).unwrap().wait().unwrap();
        assert_eq!(back[0].device(), Device::Cpu);
        assert!(back[0].equal(&on_gpu.to_device(Device::Cpu)));
    }
}
