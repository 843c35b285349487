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
    /// Per-channel mean and std as [1, C, 1, 1] float tensors on the device.
    mean: Tensor,
    std: Tensor,
    height: i64,
    width: i64,
    channels: i64,
    classes: i64,
    softmax: bool,
}

impl ImageClassifier {
    pub fn load(file: &Path, config: &ModelConfig, device: Device) -> Result<Self, tch::TchError> {
        let mut module = CModule::load_on_device(file, device)?;
        module.f_set_eval()?;
        let input = &config.input;
        let per_channel = |v: &[f64]| -> Result<Tensor, tch::TchError> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::f_from_slice(&v)?.f_view([1, v.len() as i64, 1, 1])?.f_to_device(device)
        };
        Ok(Self {
            module,
            device,
            mean: per_channel(&input.mean)?,
            std: per_channel(&input.std)?,
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
        let b = batch as i64;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
            let x = Tensor::f_from_slice(pixels)?
                .f_view([b, self.height, self.width, self.channels])?
                .f_to_device(self.device)?
                .f_permute([0, 3, 1, 2])?
                .f_to_kind(Kind::Float)?
                .f_div_scalar(255.0)?
                .f_sub(&self.mean)?
                .f_div(&self.std)?;
            let out = self.module.forward_ts(&[x])?;
            let size = out.size();
            if size != [b, self.classes] {
                return Err(ModelError::OutputShape { got: size, batch: b, classes: self.classes });
            }
            let scores = if self.softmax { out.f_softmax(1, Kind::Float)? } else { out.f_to_kind(Kind::Float)? };
            let (values, indices) = scores.f_topk(k, 1, true, true)?;
            let values = Vec::<f32>::try_from(values.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            let indices = Vec::<i64>::try_from(indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
            Ok(values
                .chunks(k as usize)
                .zip(indices.chunks(k as usize))
                .map(|(v, i)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
                .collect())
        })
    }
}
