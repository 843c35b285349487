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
use crate::model::dtype::{is_floating, kind_of};
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
            ModelKind::Tensors(signature) => Preprocessor::Tensors(TensorUploader::new(signature, &config.optimization, device)),
            // Its jobs never go through slots (crate::jobs runs them).
            ModelKind::Iterative(_) => return Err(tch::TchError::Kind("an iterative model takes no slot input".into())),
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
    /// Normalisation folded into one multiply-add: x * scale + offset,
    /// with scale = 1 / (255 std) and offset = -mean / std, as [1, C, 1, 1]
    /// tensors of `dtype` on the device.
    scale: Tensor,
    offset: Tensor,
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
        let offset = input.mean.iter().zip(&input.std).map(|(m, s)| -m / s).collect();
        Ok(Self {
            device,
            dtype,
            channels_last: optimization.channels_last,
            scale: per_channel(scale)?,
            offset: per_channel(offset)?,
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
        let pixels = on_device.f_permute([0, 3, 1, 2])?;
        // One kernel reads the uint8 pixels and writes the model's input:
        // offset + pixels * scale, computed in the model's dtype (libtorch
        // promotes the uint8 operand inside the kernel). Three kernels
        // before (convert, multiply, subtract) moved five times the bytes:
        // at fp32 and batch 128, 0.4 GB of device memory traffic per batch.
        // Channels-last: the result takes the pixels' NHWC strides;
        // otherwise it is written straight into a contiguous NCHW tensor.
        let x = if self.channels_last {
            self.offset.f_addcmul(&pixels, &self.scale)?
        } else {
            let out = Tensor::f_empty([b, self.channels, self.height, self.width], (self.dtype, self.device))?;
            self.offset.f_addcmul_out(&out, &pixels, &self.scale)?
        };
        Ok(Input { tensors: vec![x], batch: b })
    }
}

/// A tensor model's inputs: the items' bytes go to the device in one copy,
/// then each input's columns are cut out and viewed as its type and shape.
/// In half precision, floating inputs are cast to it on the device (the
/// module's weights are); other inputs (ids, masks) keep their dtypes.
pub struct TensorUploader {
    device: Device,
    /// Per input, in forward() order: where it lies in an item, its kind
    /// and its per-item dims.
    inputs: Vec<(Placement, Kind, Vec<i64>)>,
    /// Bytes per item in the staging buffer (the inputs' span of a slot).
    item_bytes: i64,
    /// The dtype floating inputs are cast to; None in fp32 (as declared).
    cast: Option<Kind>,
    /// Lay floating 4-D inputs ([batch, C, H, W]) out channels-last.
    channels_last: bool,
}

impl TensorUploader {
    pub fn new(signature: &TensorSignature, optimization: &OptimizationConfig, device: Device) -> Self {
        let inputs = signature
            .inputs
            .iter()
            .zip(signature.input_placements())
            // Dims were checked to fit a slot, so they fit an i64.
            .map(|(spec, at)| (at, kind_of(spec.datatype), spec.dims.iter().map(|&d| d as i64).collect()))
            .collect();
        let dtype = optimization.precision.kind();
        let cast = (dtype != Kind::Float).then_some(dtype);
        Self { device, inputs, item_bytes: signature.input_bytes() as i64, cast, channels_last: optimization.channels_last }
    }

    /// A floating input as the module runs: in its precision, and
    /// channels-last when asked (an NCHW view of NHWC memory, the layout
    /// tensor cores want for half-precision convolutions).
    fn as_module_runs(&self, x: Tensor) -> Result<Tensor, tch::TchError> {
        if !is_floating(x.kind()) {
            return Ok(x);
        }
        let x = match self.cast {
            Some(dtype) if x.kind() != dtype => x.f_to_kind(dtype)?,
            _ => x,
        };
        if self.channels_last && x.dim() == 4 {
            return x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2]);
        }
        Ok(x)
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
                let x = on_device.f_narrow(1, at.offset as i64, at.len as i64)?.f_contiguous()?.f_view_dtype(*kind)?.f_view(shape.as_slice())?;
                self.as_module_runs(x)
            })
            .collect::<Result<_, _>>()?;
        Ok(Input { tensors, batch: b })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preprocessor(channels_last: bool, precision: crate::model::config::Precision) -> ImagePreprocessor {
        let input = InputConfig { width: 3, height: 2, channels: 3, mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
        let optimization = OptimizationConfig { channels_last, precision, ..OptimizationConfig::default() };
        ImagePreprocessor::new(&input, &optimization, Device::Cpu).unwrap()
    }

    /// (pixel / 255 - mean) / std per channel, in NCHW order, in f64.
    fn expected(bytes: &[u8], batch: usize) -> Vec<f64> {
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let mut out = Vec::new();
        for n in 0..batch {
            for c in 0..3 {
                for hw in 0..6 {
                    let v = f64::from(bytes[n * 18 + hw * 3 + c]);
                    out.push((v / 255.0 - mean[c]) / std[c]);
                }
            }
        }
        out
    }

    #[test]
    fn pixels_are_normalised_per_channel_in_either_layout_and_dtype() {
        use crate::model::config::Precision;
        let bytes: Vec<u8> = (0..36).map(|i| (i * 37 % 256) as u8).collect();
        for (channels_last, precision, tolerance) in [(false, Precision::Fp32, 1e-5), (true, Precision::Fp32, 1e-5), (true, Precision::Fp16, 2e-2), (false, Precision::Bf16, 5e-2)] {
            let pre = preprocessor(channels_last, precision);
            let mut staging = HostBuffer::new(bytes.len(), false).unwrap();
            staging.as_mut_slice().copy_from_slice(&bytes);
            let input = pre.upload(staging.into_tensor(), 2, &[]).unwrap();
            let x = &input.tensors[0];
            assert_eq!((x.size(), x.kind()), (vec![2, 3, 2, 3], precision.kind()));
            assert_eq!(x.is_contiguous(), !channels_last, "channels_last {channels_last}");
            let got = Vec::<f64>::try_from(x.to_kind(Kind::Double).contiguous().flatten(0, -1)).unwrap();
            for (i, (g, e)) in got.iter().zip(expected(&bytes, 2)).enumerate() {
                assert!((g - e).abs() <= tolerance, "{channels_last} {precision:?} [{i}]: {g} against {e}");
            }
        }
    }
}
