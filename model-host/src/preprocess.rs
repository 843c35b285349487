//! uint8 HWC pixels -> the model's input tensor on its device: the copy to
//! the device, the layout change, the dtype and the normalisation.
//!
//! Apart from the model so that the feeder thread can prepare the next
//! batch while the model thread runs the current one.

use tch::{Device, Kind, Tensor};

use crate::model_config::ModelConfig;

pub struct Preprocessor {
    device: Device,
    /// The dtype the model runs in (fp32, fp16 or bf16).
    dtype: Kind,
    /// Keep the input NHWC-strided instead of making it contiguous NCHW.
    channels_last: bool,
    /// Normalisation folded into one multiply-add: x * scale - shift, with
    /// scale = 1 / (255 std) and shift = mean / std, as [1, C, 1, 1]
    /// tensors of `dtype` on the device.
    scale: Tensor,
    shift: Tensor,
    height: i64,
    width: i64,
    channels: i64,
}

/// A batch on the device, converted and normalised: the model's input.
pub struct Input {
    pub x: Tensor,
    pub batch: i64,
}

impl Preprocessor {
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self, tch::TchError> {
        let dtype = config.optimization.precision.kind();
        let input = &config.input;
        let per_channel = |v: Vec<f64>| -> Result<Tensor, tch::TchError> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::f_from_slice(&v)?.f_view([1, v.len() as i64, 1, 1])?.f_to_device(device)?.f_to_kind(dtype)
        };
        let scale = input.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift = input.mean.iter().zip(&input.std).map(|(m, s)| m / s).collect();
        Ok(Self {
            device,
            dtype,
            channels_last: config.optimization.channels_last,
            scale: per_channel(scale)?,
            shift: per_channel(shift)?,
            height: i64::from(input.height),
            width: i64::from(input.width),
            channels: i64::from(input.channels),
        })
    }

    /// Copies `batch` images (back to back in `pixels`) to the device and
    /// queues their conversion there. On a GPU nothing waits: the copy is a
    /// DMA from page-locked memory in the stream's order.
    pub fn upload(&self, pixels: &[u8], batch: usize) -> Result<Input, tch::TchError> {
        let b = batch as i64;
        tch::no_grad(|| {
            let host = Tensor::f_from_slice(pixels)?.f_view([b, self.height, self.width, self.channels])?;
            let on_device = match self.device {
                // The pinned block comes from libtorch's caching host
                // allocator, which reuses it only once the copy has finished.
                Device::Cuda(_) => host.f_internal_pin_memory(self.device)?.f_to_device_(self.device, Kind::Uint8, true, false)?,
                _ => host,
            };
            // NHWC uint8 -> NCHW view; its strides are already channels-last.
            let x = on_device.f_permute([0, 3, 1, 2])?.f_to_kind(self.dtype)?;
            let x = if self.channels_last { x } else { x.f_contiguous()? };
            Ok(Input { x: x.f_mul(&self.scale)?.f_sub(&self.shift)?, batch: b })
        })
    }
}
