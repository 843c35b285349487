//! Slot bytes -> the model's input tensors on its device.
//!
//! An image classifier's pixels (uint8 HWC) are copied to the device, laid
//! out NCHW, converted and normalised there. A tensor model's inputs are
//! copied as they are, then cut apart and reinterpreted as the types
//! model.toml declares.
//!
//! Apart from the model so that the feeder thread can prepare the next
//! batch while the model thread runs the current one.

use protocol::{Placement, TensorSignature};
use tch::{Device, Kind, Tensor};

use crate::model::config::{InputConfig, ModelConfig, ModelKind, OptimizationConfig};
use crate::model::Input;
use crate::model::dtype::kind_of;
use crate::torch_shim::HostBuffer;

pub enum Preprocessor {
    Image(ImagePreprocessor),
    Tensors(TensorUploader),
}

impl Preprocessor {
    pub fn new(config: &ModelConfig, device: Device) -> Result<Self, tch::TchError> {
        Ok(match &config.kind {
            ModelKind::Classifier(c) => Preprocessor::Image(ImagePreprocessor::new(&c.input, &config.optimization, device)?),
            // Pixels like a classifier's; the outputs come back like a tensor model's.
            ModelKind::Vision(v) => Preprocessor::Image(ImagePreprocessor::new(&v.input, &config.optimization, device)?),
            ModelKind::Tensors(signature) => Preprocessor::Tensors(TensorUploader::new(signature, device)),
        })
    }

    /// The device batches go to.
    pub fn device(&self) -> Device {
        match self {
            Preprocessor::Image(pre) => pre.device,
            Preprocessor::Tensors(pre) => pre.device,
        }
    }

    /// Host memory for `len` bytes of a batch: pinned when the model is on
    /// a GPU, so that [`Self::upload`] is one asynchronous DMA from it.
    pub fn staging(&self, len: usize) -> Result<HostBuffer, tch::TchError> {
        HostBuffer::new(len, self.device().is_cuda()).map_err(|e| tch::TchError::Torch(e.0))
    }

    /// Queues the copy of `batch` items, back to back at the start of
    /// `staging`, to the device, and their conversion to the model's inputs.
    /// `decoded` are rows already on the device (JPEGs the host decoded, as
    /// [height, width, channels] uint8), which replace those rows of
    /// `staging`; an image classifier's only.
    pub fn upload(&self, staging: HostBuffer, batch: usize, decoded: &[(usize, Tensor)]) -> Result<Input, tch::TchError> {
        tch::no_grad(|| match self {
            Preprocessor::Image(pre) => pre.upload(staging.into_tensor(), batch, decoded),
            Preprocessor::Tensors(_) if !decoded.is_empty() => Err(tch::TchError::Torch("decoded images given to a tensor model".into())),
            Preprocessor::Tensors(pre) => pre.upload(staging.into_tensor(), batch),
        })
    }

    /// [`Self::upload`] of bytes from anywhere (warm-up, benchmarks).
    pub fn upload_bytes(&self, bytes: &[u8], batch: usize) -> Result<Input, tch::TchError> {
        let mut staging = self.staging(bytes.len())?;
        staging.as_mut_slice().copy_from_slice(bytes);
        self.upload(staging, batch, &[])
    }
}

/// The first `len` bytes of a staging tensor, on `device`. From pinned
/// memory the copy is asynchronous: libtorch's caching host allocator
/// hands the block out again only once the copy has read it.
fn to_device(host: Tensor, len: i64, device: Device) -> Result<Tensor, tch::TchError> {
    let host = host.f_narrow(0, 0, len)?;
    match device {
        Device::Cuda(_) => host.f_to_device_(device, Kind::Uint8, true, false),
        _ => Ok(host),
    }
}

pub struct ImagePreprocessor {
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

impl ImagePreprocessor {
    pub fn new(input: &InputConfig, optimization: &OptimizationConfig, device: Device) -> Result<Self, tch::TchError> {
        let dtype = optimization.precision.kind();
        let per_channel = |v: Vec<f64>| -> Result<Tensor, tch::TchError> {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::f_from_slice(&v)?.f_view([1, v.len() as i64, 1, 1])?.f_to_device(device)?.f_to_kind(dtype)
        };
        let scale = input.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift = input.mean.iter().zip(&input.std).map(|(m, s)| m / s).collect();
        Ok(Self {
            device,
            dtype,
            channels_last: optimization.channels_last,
            scale: per_channel(scale)?,
            shift: per_channel(shift)?,
            height: i64::from(input.height),
            width: i64::from(input.width),
            channels: i64::from(input.channels),
        })
    }

    fn upload(&self, staging: Tensor, batch: usize, decoded: &[(usize, Tensor)]) -> Result<Input, tch::TchError> {
        let b = batch as i64;
        let on_device = to_device(staging, b * self.height * self.width * self.channels, self.device)?
            .f_view([b, self.height, self.width, self.channels])?;
        // In stream order after the copy above, so these rows win.
        for (row, image) in decoded {
            on_device.f_narrow(0, *row as i64, 1)?.f_copy_(&image.f_unsqueeze(0)?)?;
        }
        // NHWC uint8 -> NCHW view; its strides are already channels-last.
        let x = on_device.f_permute([0, 3, 1, 2])?.f_to_kind(self.dtype)?;
        let x = if self.channels_last { x } else { x.f_contiguous()? };
        Ok(Input { tensors: vec![x.f_mul(&self.scale)?.f_sub(&self.shift)?], batch: b })
    }
}

/// A tensor model's inputs: the items' bytes go to the device in one copy,
/// then each input's columns are cut out and viewed as its type and shape.
pub struct TensorUploader {
    device: Device,
    /// Per input, in forward() order: where it lies in an item, its kind
    /// and its per-item dims.
    inputs: Vec<(Placement, Kind, Vec<i64>)>,
    /// Bytes per item in the staging buffer (the inputs' span of a slot).
    item_bytes: i64,
}

impl TensorUploader {
    pub fn new(signature: &TensorSignature, device: Device) -> Self {
        let inputs = signature
            .inputs
            .iter()
            .zip(signature.input_placements())
            // Dims were checked to fit a slot, so they fit an i64.
            .map(|(spec, at)| (at, kind_of(spec.datatype), spec.dims.iter().map(|&d| d as i64).collect()))
            .collect();
        Self { device, inputs, item_bytes: signature.input_bytes() as i64 }
    }

    fn upload(&self, staging: Tensor, batch: usize) -> Result<Input, tch::TchError> {
        let b = batch as i64;
        let on_device = to_device(staging, b * self.item_bytes, self.device)?.f_view([b, self.item_bytes])?;
        let tensors = self
            .inputs
            .iter()
            .map(|(at, kind, dims)| {
                let mut shape = Vec::with_capacity(dims.len() + 1);
                shape.push(b);
                shape.extend_from_slice(dims);
                // The copy makes the columns contiguous and aligned, which
                // a view as a wider type needs.
                on_device
                    .f_narrow(1, at.offset as i64, at.len as i64)?
                    .f_contiguous()?
                    .f_view_dtype(*kind)?
                    .f_view(shape.as_slice())
            })
            .collect::<Result<_, _>>()?;
        Ok(Input { tensors, batch: b })
    }
}
