//! The loaded TorchScript classifier, and the device-side pre-processing
//! it needs: uint8 HWC pixels in, top-k (class, probability) out.
//!
//! Everything model-specific (normalisation, layout, dtype) happens here,
//! on the model's device, so gateways only ever produce uint8 pixels.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};
use thiserror::Error;

use crate::model_config::ModelConfig;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("model output has shape {got:?}, expected [{batch}, {classes}] (batch x labels in model.toml)")]
    OutputShape { got: Vec<i64>, batch: i64, classes: i64 },
}

pub struct ImageClassifier {
    module: CModule,
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
    classes: i64,
    softmax: bool,
}

/// A batch whose forward pass and top-k have been queued on the device.
/// On a GPU the work runs asynchronously: the model thread can gather the
/// next batch while this one computes, and only [`ImageClassifier::collect`]
/// waits for it.
pub struct Launched {
    values: Tensor,
    indices: Tensor,
    k: i64,
}

impl ImageClassifier {
    pub fn load(file: &Path, config: &ModelConfig, device: Device) -> Result<Self, tch::TchError> {
        let dtype = config.optimization.precision.kind();
        let mut module = CModule::load_on_device(file, device)?;
        module.f_set_eval()?;
        if dtype != Kind::Float {
            module.to(device, dtype, false);
        }
        let input = &config.input;
        let per_channel = |v: Vec<f64>| -> Result<Tensor, tch::TchError> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::f_from_slice(&v)?.f_view([1, v.len() as i64, 1, 1])?.f_to_device(device)?.f_to_kind(dtype)
        };
        let scale = input.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift = input.mean.iter().zip(&input.std).map(|(m, s)| m / s).collect();
        Ok(Self {
            module,
            device,
            dtype,
            channels_last: config.optimization.channels_last,
            scale: per_channel(scale)?,
            shift: per_channel(shift)?,
            height: i64::from(input.height),
            width: i64::from(input.width),
            channels: i64::from(input.channels),
            classes: config.output.labels.len() as i64,
            softmax: config.output.softmax,
        })
    }

    pub fn classes(&self) -> usize {
        self.classes as usize
    }

    /// Classifies `batch` images laid out back to back in `pixels` (uint8,
    /// height x width x channels each); returns the best `k` per image.
    pub fn classify(&self, pixels: &[u8], batch: usize, k: usize) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let launched = self.launch(pixels, batch, k)?;
        self.collect(launched)
    }

    /// Copies the batch to the device and queues pre-processing, the
    /// forward pass and top-k there, without waiting for them on a GPU.
    pub fn launch(&self, pixels: &[u8], batch: usize, k: usize) -> Result<Launched, ModelError> {
        let b = batch as i64;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
            let host = Tensor::f_from_slice(pixels)?.f_view([b, self.height, self.width, self.channels])?;
            let on_device = match self.device {
                // Page-locked staging makes the copy an asynchronous DMA:
                // the thread returns at once and the copy runs in the
                // stream's order, ahead of the kernels that read it.
                // (The pinned block comes from libtorch's caching host
                // allocator, which reuses it once the copy has finished.)
                Device::Cuda(_) => host.f_internal_pin_memory(self.device)?.f_to_device_(self.device, Kind::Uint8, true, false)?,
                _ => host,
            };
            // NHWC uint8 -> NCHW view; its strides are already channels-last.
            let x = on_device.f_permute([0, 3, 1, 2])?.f_to_kind(self.dtype)?;
            let x = if self.channels_last { x } else { x.f_contiguous()? };
            let x = x.f_mul(&self.scale)?.f_sub(&self.shift)?;
            let out = self.module.forward_ts(&[x])?;
            let size = out.size();
            if size != [b, self.classes] {
                return Err(ModelError::OutputShape { got: size, batch: b, classes: self.classes });
            }
            let scores = if self.softmax { out.f_softmax(1, Kind::Float)? } else { out.f_to_kind(Kind::Float)? };
            let (values, indices) = scores.f_topk(k, 1, true, true)?;
            Ok(Launched { values, indices, k })
        })
    }

    /// Waits for a launched batch and reads its top-k back.
    pub fn collect(&self, launched: Launched) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let Launched { values, indices, k } = launched;
        let values = Vec::<f32>::try_from(values.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        let indices = Vec::<i64>::try_from(indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        Ok(values
            .chunks(k as usize)
            .zip(indices.chunks(k as usize))
            .map(|(v, i)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
            .collect())
    }
}
