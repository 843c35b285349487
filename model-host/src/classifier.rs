//! The image classifier: an uploaded batch of normalised images in (see
//! [`crate::preprocess`]), top-k (class, probability) out.
//!
//! Everything model-specific (normalisation, layout, dtype) happens in the
//! host, on the model's device, so gateways only ever produce uint8 pixels.

use std::path::Path;

use tch::{CModule, Device, Kind, Tensor};

use crate::model::ModelError;
use crate::model_config::{ClassifierConfig, OptimizationConfig};
use crate::preprocess::Input;

pub struct ImageClassifier {
    module: CModule,
    classes: i64,
    softmax: bool,
}

/// A batch whose forward pass and top-k have been queued on the device.
/// On a GPU the work runs asynchronously: the feeder thread can prepare the
/// next batch while this one computes, and only [`Launched::collect`]
/// waits for it.
pub struct Launched {
    values: Tensor,
    indices: Tensor,
    k: i64,
}

impl ImageClassifier {
    pub fn load(file: &Path, config: &ClassifierConfig, optimization: &OptimizationConfig, device: Device) -> Result<Self, tch::TchError> {
        let dtype = optimization.precision.kind();
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

    /// Queues the forward pass and top-k on an uploaded batch, without
    /// waiting for them on a GPU.
    pub fn launch(&self, input: Input, k: usize) -> Result<Launched, ModelError> {
        let Input { tensors, batch: b } = input;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
            let out = self.module.forward_ts(&tensors)?;
            let size = out.size();
            if size != [b, self.classes] {
                return Err(ModelError::OutputShape { got: size, batch: b, classes: self.classes });
            }
            let scores = if self.softmax { out.f_softmax(1, Kind::Float)? } else { out.f_to_kind(Kind::Float)? };
            let (values, indices) = scores.f_topk(k, 1, true, true)?;
            Ok(Launched { values, indices, k })
        })
    }
}

impl Launched {
    /// Waits for the batch and reads its top-k back: one row per image,
    /// padding rows included.
    pub fn collect(self) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let Launched { values, indices, k } = self;
        let values = Vec::<f32>::try_from(values.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        let indices = Vec::<i64>::try_from(indices.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        Ok(values
            .chunks(k as usize)
            .zip(indices.chunks(k as usize))
            .map(|(v, i)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
            .collect())
    }
}
