//! A tensor model: named, typed tensors in (see
//! [`crate::model::preprocess::TensorUploader`]), named, typed tensors out, laid
//! out for each request's slot at the output placements of
//! [`protocol::tensor`]. A vision model (detection, segmentation) runs as
//! one, on pixels the preprocessor normalised.
//!
//! forward() takes the inputs in `[[inputs]]` order, each `[batch, dims...]`,
//! and returns either one tensor (when one output is declared), a tuple or
//! list of tensors (in `[[outputs]]` order) or a dict of name -> tensor
//! (the shim puts them in `[[outputs]]` order). It runs on the path every
//! kind takes ([`crate::model::optimized`]: frozen, in model.toml's
//! precision, CUDA graphs); outputs computed in half precision are cast
//! back on the device to the dtype `[[outputs]]` declares, before the
//! read-back. Every output is checked against its `[[outputs]]` entry
//! (dtype and shape) at warm-up and when each batch is launched, so a
//! model.toml that does not match its model fails before any request does.

use std::path::Path;
use std::sync::Arc;

use protocol::vision::MaskKind;
use protocol::{Placement, TensorSignature, TensorSpec};
use tch::{Device, Tensor};

use crate::model::ModelError;
use crate::model::Input;
use crate::model::config::OptimizationConfig;
use crate::model::dtype::{datatype_of, is_floating, kind_of};
use crate::model::optimized::OptimizedModule;
use crate::model::readback::ToHost;
use crate::model::warm_up::OutputCheck;
use crate::torch_shim::{OutputNames, host_bytes};

pub struct TensorModel {
    /// The module, its graphs and its warm-up.
    module: OptimizedModule,
    signature: TensorSignature,
    /// Where each output goes in a slot, in `[[outputs]]` order.
    placements: Vec<Placement>,
    /// Bytes of one item's outputs with their padding.
    row_bytes: usize,
    /// Whether the module runs in half precision: floating outputs are
    /// then cast back to their declared dtype.
    cast: bool,
    /// Per output, the model.toml fields that declared it when they are
    /// not `[[outputs]]` (a vision model's), for the mismatch error.
    declared_by: Arc<Vec<Option<&'static str>>>,
    /// A segmenter's mask kind: its answer form is made 8-bit on the
    /// device (see [`Forms`]).
    mask: Option<MaskKind>,
}

/// Which forms of its outputs a batch's requests want: the raw tensors
/// (`/v2`, and every model but a segmenter), and a segmenter's 8-bit
/// mask (`/v1` predict's answer: [`protocol::Ask::Answer`]). Only those
/// wanted are made and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms {
    pub raw: bool,
    pub small: bool,
}

impl Forms {
    pub const RAW: Forms = Forms { raw: true, small: false };
}

/// A batch whose forward pass has been queued on the device; its outputs
/// are checked and in `[[outputs]]` order.
pub struct Launched {
    /// The raw outputs (when wanted), then the 8-bit mask (when made).
    outputs: ToHost,
    small: bool,
    /// Bytes of one item of each output, and where it goes in the row.
    placements: Vec<Placement>,
    /// Bytes of one item's row: the outputs with their padding.
    row_bytes: usize,
}

impl TensorModel {
    /// Loads `file` as `optimization` says. `declared_by` names, per
    /// output, the model.toml field that declared it when it is not
    /// `[[outputs]]` (a vision model's; empty for a tensor model).
    pub fn load(
        file: &Path,
        signature: &TensorSignature,
        optimization: &OptimizationConfig,
        device: Device,
        declared_by: Vec<Option<&'static str>>,
    ) -> Result<Self, ModelError> {
        Self::load_reporting(file, signature, optimization, device, declared_by, &mut |_, _| {})
    }

    /// [`Self::load`], telling `progress` (bytes read, file size) as the
    /// file is read.
    pub fn load_reporting(
        file: &Path,
        signature: &TensorSignature,
        optimization: &OptimizationConfig,
        device: Device,
        declared_by: Vec<Option<&'static str>>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let cast = optimization.precision.kind() != tch::Kind::Float;
        let declared_by = Arc::new(declared_by);
        let names = OutputNames::named(signature.outputs.iter().map(|o| o.name.as_str())).map_err(|e| ModelError::Load(e.0))?;
        let (specs, fields) = (signature.outputs.clone(), declared_by.clone());
        // At warm-up the outputs are checked as they come from the module:
        // in half precision a floating output may be of another floating
        // dtype, which launch() casts back.
        let check: OutputCheck = Arc::new(move |outs: &[Tensor], batch| check_all(outs, &specs, batch, cast, &fields));
        let module = OptimizedModule::load(file, optimization, device, names, check, progress)?;
        let (placements, row_bytes) = (signature.output_placements(), signature.output_bytes() as usize);
        Ok(Self { module, placements, row_bytes, cast, declared_by, signature: signature.clone(), mask: None })
    }

    /// Makes this a segmenter whose answer form is its mask made 8-bit on
    /// the device (its one output is the mask).
    pub fn with_mask(mut self, mask: MaskKind) -> Self {
        self.mask = Some(mask);
        self
    }

    /// The module, for warm-up and graphs.
    pub fn module(&self) -> &OptimizedModule {
        &self.module
    }

    pub fn module_mut(&mut self) -> &mut OptimizedModule {
        &mut self.module
    }

    /// Queues the forward pass on an uploaded batch, casts floating
    /// outputs back to their declared dtypes, and checks what it returned
    /// (dtype and shape are known before the values are).
    pub fn launch(&self, input: Input, forms: Forms) -> Result<Launched, ModelError> {
        let batch = input.batch;
        let outputs = tch::no_grad(|| self.module.forward(input))?;
        let outputs = if self.cast { cast_back(outputs, &self.signature.outputs)? } else { outputs };
        check_all(&outputs, &self.signature.outputs, batch, false, &self.declared_by)?;
        let small = match (self.mask, forms.small) {
            (Some(kind), true) => Some(tch::no_grad(|| small_mask(&outputs[0], kind))?),
            _ => None,
        };
        // Without a small form every request takes the raw one.
        let raw = forms.raw || small.is_none();
        let mut queued = if raw { outputs } else { Vec::new() };
        let has_small = small.is_some();
        queued.extend(small);
        Ok(Launched { outputs: ToHost::queue(queued)?, small: has_small, placements: self.placements.clone(), row_bytes: self.row_bytes })
    }
}

impl Launched {
    /// Waits for the batch and keeps the first `rows` items' outputs in
    /// host memory, each item's to be written into its slot from there.
    pub fn collect(self, rows: usize) -> Result<HostRows, ModelError> {
        // Contiguous for host_bytes (a copy only if the model's output was not).
        let mut tensors = self.outputs.wait()?.into_iter().map(|t| t.f_contiguous()).collect::<Result<Vec<_>, _>>()?;
        // What is left are the raw outputs: none when no request wanted them.
        let small = if self.small { tensors.pop() } else { None };
        for (t, at) in tensors.iter().zip(&self.placements) {
            let have = t.numel() * t.f_kind()?.elt_size_in_bytes();
            if have < rows * at.len as usize {
                return Err(ModelError::Outputs(format!("an output of {have} bytes for {rows} items of {} bytes", at.len)));
            }
        }
        Ok(HostRows { tensors, small, placements: self.placements, rows, row_bytes: self.row_bytes })
    }
}

/// A batch's outputs back in host memory (see [`Launched::collect`]).
pub struct HostRows {
    /// In `[[outputs]]` order, contiguous, `[batch, ...]` (padding rows
    /// last); empty when no request of the batch wanted them raw.
    tensors: Vec<Tensor>,
    /// A segmenter's 8-bit mask, `[batch, h, w]` uint8, when made.
    small: Option<Tensor>,
    placements: Vec<Placement>,
    rows: usize,
    row_bytes: usize,
}

impl HostRows {
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Item `i`'s outputs: (offset in its slot, bytes), one per output, read
    /// in place from the read-back tensors: a segmenter's 8-bit mask at the
    /// mask's offset for an `answer`, else the raw outputs.
    pub fn row(&self, i: usize, answer: bool) -> Result<Vec<(u64, &[u8])>, ModelError> {
        if let (true, Some(small), Some(at)) = (answer, &self.small, self.placements.first()) {
            let bytes = host_bytes(small).map_err(|e| ModelError::Outputs(e.0))?;
            let item = bytes.len() / small.size().first().copied().unwrap_or(1).max(1) as usize;
            let part = bytes.get(i * item..(i + 1) * item).ok_or_else(|| ModelError::Outputs(format!("no item {i} in the mask")))?;
            return Ok(vec![(at.offset, part)]);
        }
        if self.tensors.is_empty() {
            return Err(ModelError::Outputs("the raw outputs were not read back for this batch".into()));
        }
        self.tensors
            .iter()
            .zip(&self.placements)
            .map(|(t, at)| {
                let item = at.len as usize;
                let bytes = host_bytes(t).map_err(|e| ModelError::Outputs(e.0))?;
                let part = bytes.get(i * item..(i + 1) * item).ok_or_else(|| ModelError::Outputs(format!("no item {i} in an output")))?;
                Ok((at.offset, part))
            })
            .collect()
    }

    /// Every item's outputs laid out as in a slot, padding zeroed: for
    /// tests and benchmarks.
    pub fn to_vecs(&self) -> Result<Vec<Vec<u8>>, ModelError> {
        (0..self.rows)
            .map(|i| {
                let mut row = vec![0u8; self.row_bytes];
                for (offset, bytes) in self.row(i, false)? {
                    row[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
                }
                Ok(row)
            })
            .collect()
    }
}

/// A segmenter's mask made 8-bit on the device: an alpha ([B, 1, h, w] in
/// 0..1) as round(255 x alpha), class scores ([B, classes, h, w]) as each
/// pixel's best class; [B, h, w] uint8. A new tensor (a graph's own
/// output is overwritten by the next replay).
fn small_mask(mask: &Tensor, kind: MaskKind) -> Result<Tensor, ModelError> {
    Ok(match kind {
        MaskKind::Alpha => mask.f_select(1, 0)?.f_clamp(0.0, 1.0)?.f_mul_scalar(255.0)?.f_round()?.f_to_kind(tch::Kind::Uint8)?,
        MaskKind::Classes => mask.f_argmax(1, false)?.f_to_kind(tch::Kind::Uint8)?,
    })
}

/// Floating outputs the module computed in another floating dtype (its
/// half precision), cast on the device to the dtype `[[outputs]]` declares.
/// A new tensor: a graph's own output may be overwritten by the next replay.
fn cast_back(outputs: Vec<Tensor>, specs: &[TensorSpec]) -> Result<Vec<Tensor>, ModelError> {
    outputs
        .into_iter()
        .zip(specs)
        .map(|(t, spec)| {
            let want = kind_of(spec.datatype);
            let kind = t.f_kind()?;
            Ok(if kind != want && is_floating(kind) && is_floating(want) { t.f_to_kind(want)? } else { t })
        })
        .collect()
}

/// Checks every output against its `[[outputs]]` entry (`any_float`: a
/// floating output may be of any floating dtype), naming the model.toml
/// field that declared it.
fn check_all(outs: &[Tensor], specs: &[TensorSpec], batch: i64, any_float: bool, declared_by: &[Option<&'static str>]) -> Result<(), ModelError> {
    for (i, (tensor, spec)) in outs.iter().zip(specs).enumerate() {
        check(tensor, spec, batch, any_float).map_err(|e| match (e, declared_by.get(i).copied().flatten()) {
            (ModelError::OutputMismatch { name, got, expected }, Some(field)) => {
                ModelError::OutputMismatch { name, got, expected: format!("{expected}, from {field}") }
            }
            (e, _) => e,
        })?;
    }
    Ok(())
}

/// Checks one output's dtype and shape against its `[[outputs]]` entry.
fn check(tensor: &Tensor, spec: &TensorSpec, batch: i64, any_float: bool) -> Result<(), ModelError> {
    let mut shape = vec![batch];
    shape.extend(spec.dims.iter().map(|&d| d as i64));
    let kind = tensor.f_kind()?;
    let size = tensor.size();
    let want = kind_of(spec.datatype);
    if (kind == want || (any_float && is_floating(kind) && is_floating(want))) && size == shape {
        return Ok(());
    }
    let kind_name = datatype_of(kind).map_or_else(|| format!("{kind:?}"), |d| d.name().to_string());
    Err(ModelError::OutputMismatch {
        name: spec.name.clone(),
        got: format!("{kind_name} {size:?}"),
        expected: format!("{} {shape:?} (batch {batch} x dims {:?})", spec.datatype.name(), spec.dims),
    })
}

#[cfg(test)]
pub(crate) mod tests;
