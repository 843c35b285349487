//! The loaded TorchScript classifier: an uploaded batch in (see
//! [`crate::preprocess`]), top-k (class, probability) out.
//!
//! Everything model-specific (normalisation, layout, dtype) happens in the
//! host, on the model's device, so gateways only ever produce uint8 pixels.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};
use thiserror::Error;

use crate::model_config::ModelConfig;
use crate::preprocess::{Input, Preprocessor};

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("model output has shape {got:?}, expected [{batch}, {classes}] (batch x labels in model.toml)")]
    OutputShape { got: Vec<i64>, batch: i64, classes: i64 },
}

pub struct ImageClassifier {
    module: CModule,
    classes: i64,
    softmax: bool,
}

/// A batch whose forward pass and top-k have been queued on the device.
/// On a GPU the work runs asynchronously: the feeder thread can prepare the
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
        Ok(Self { module, classes: config.output.labels.len() as i64, softmax: config.output.softmax })
    }

    pub fn classes(&self) -> usize {
        self.classes as usize
    }

    /// Classifies `batch` images laid out back to back in `pixels` (uint8,
    /// height x width x channels each); returns the best `k` per image.
    pub fn classify(&self, pre: &Preprocessor, pixels: &[u8], batch: usize, k: usize) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let input = pre.upload(pixels, batch)?;
        let launched = self.launch(input, k)?;
        self.collect(launched)
    }

    /// Queues the forward pass and top-k on an uploaded batch, without
    /// waiting for them on a GPU.
    pub fn launch(&self, input: Input, k: usize) -> Result<Launched, ModelError> {
        let Input { x, batch: b } = input;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
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
