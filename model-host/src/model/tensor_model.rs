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
    raw: bool,
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
        Ok(Launched { outputs: ToHost::queue(queued)?, raw, small: has_small, placements: self.placements.clone(), row_bytes: self.row_bytes })
    }
}

impl Launched {
    /// Waits for the batch and keeps the first `rows` items' outputs in
    /// host memory, each item's to be written into its slot from there.
    pub fn collect(self, rows: usize) -> Result<HostRows, ModelError> {
        // Contiguous for host_bytes (a copy only if the model's output was not).
        let mut tensors = self.outputs.wait()?.into_iter().map(|t| t.f_contiguous()).collect::<Result<Vec<_>, _>>()?;
        let small = if self.small { tensors.pop() } else { None };
        if !self.raw {
            tensors.clear();
        }
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
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;
    use crate::model::dtype::{datatype_of, kind_of};
    use protocol::DataType;
    use tch::Kind;
    use crate::model::{Model, Outputs};
    use crate::model::preprocess::{Preprocessor, TensorUploader};

    /// Scripts the test models once per test binary, with the project's
    /// .venv (the one that provides libtorch; it has torch).
    const SCRIPT: &str = r#"
import sys
from typing import Dict, List, Tuple
import torch

class TwoInThreeOut(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Dict[str, torch.Tensor]:
        # Not in model.toml's order: outputs are matched by name.
        return {"doubled": b * 2, "flag": b.sum(1, keepdim=True) > 0, "sum": a + 1.0}

class Tuple3(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return x.double() / 2, (x + 1).to(torch.int16), x.half()

class Single(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

class Listed(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x + 1, x - 1]

class Segment3(torch.nn.Module):
    # A vision model's mask: [B, 3, H, W] class scores from the first channel.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1], x[:, :1] * 0], 1)

class Alpha1(torch.nn.Module):
    # A vision model's alpha mask: [B, 1, H, W] in 0..1 from the first channel.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x[:, :1], 0.0, 1.0)

for name, module in [("dict", TwoInThreeOut()), ("tuple", Tuple3()), ("single", Single()), ("list", Listed()), ("segment3", Segment3()), ("alpha1", Alpha1())]:
    torch.jit.script(module).save(f"{sys.argv[1]}/{name}.pt")
"#;

    /// The path of a scripted test model: dict, tuple, single or list.
    pub(crate) fn scripted(name: &str) -> PathBuf {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
            // TorchScript reads the classes' source, so the script must be a file.
            let script = dir.path().join("make_models.py");
            std::fs::write(&script, SCRIPT).unwrap();
            let status = std::process::Command::new(python).arg(&script).arg(dir.path()).status();
            assert!(status.as_ref().is_ok_and(|s| s.success()), "{python} failed to script the test models: {status:?}");
            dir
        });
        dir.path().join(format!("{name}.pt"))
    }

    fn spec(name: &str, datatype: DataType, dims: &[u64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, dims: dims.to_vec() }
    }

    /// The dict model's signature.
    pub(crate) fn dict_signature() -> TensorSignature {
        TensorSignature {
            inputs: vec![spec("a", DataType::Fp32, &[2, 3]), spec("b", DataType::Int64, &[4])],
            outputs: vec![spec("sum", DataType::Fp32, &[2, 3]), spec("doubled", DataType::Int64, &[4]), spec("flag", DataType::Bool, &[1])],
        }
    }

    fn tuple_signature() -> TensorSignature {
        TensorSignature {
            inputs: vec![spec("x", DataType::Int32, &[3])],
            outputs: vec![spec("half", DataType::Fp64, &[3]), spec("next", DataType::Int16, &[3]), spec("x16", DataType::Fp16, &[3])],
        }
    }

    /// One item's input bytes for the dict model: a = item*10 + 0..6,
    /// b = [item, -1, 2, -3] (so b sums to item - 2).
    pub(crate) fn dict_item(signature: &TensorSignature, item: i64) -> Vec<u8> {
        let at = signature.input_placements();
        let mut bytes = vec![0u8; signature.input_bytes() as usize];
        let a: Vec<u8> = (0..6).flat_map(|j| (item as f32 * 10.0 + j as f32).to_le_bytes()).collect();
        let b: Vec<u8> = [item, -1, 2, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes[at[0].range()].copy_from_slice(&a);
        bytes[at[1].range()].copy_from_slice(&b);
        bytes
    }

    /// Checks one item's output row of the dict model.
    pub(crate) fn check_dict_row(signature: &TensorSignature, row: &[u8], item: i64) {
        assert_eq!(row.len() as u64, signature.output_bytes());
        let at = signature.output_placements();
        let sum: Vec<f32> = row[at[0].range()].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let want: Vec<f32> = (0..6).map(|j| item as f32 * 10.0 + j as f32 + 1.0).collect();
        assert_eq!(sum, want, "item {item}");
        let doubled: Vec<i64> = row[at[1].range()].chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(doubled, [2 * item, -2, 4, -6]);
        assert_eq!(row[at[2].range()], [u8::from(item - 2 > 0)]);
    }

    fn load(file: &str, signature: &TensorSignature) -> (Model, Preprocessor) {
        let optimization = OptimizationConfig::default();
        let model = TensorModel::load(&scripted(file), signature, &optimization, Device::Cpu, Vec::new()).unwrap();
        (Model::Tensors(model), Preprocessor::Tensors(TensorUploader::new(signature, &optimization, Device::Cpu)))
    }

    /// Items' input bytes back to back, each padded to the inputs' span
    /// of a slot, as the host gathers them.
    fn staged(signature: &TensorSignature, items: &[&[u8]]) -> Vec<u8> {
        let span = signature.input_bytes() as usize;
        items.iter().flat_map(|item| item.iter().copied().chain(std::iter::repeat(0)).take(span)).collect()
    }

    fn byte_rows(outputs: Outputs) -> Vec<Vec<u8>> {
        match outputs {
            Outputs::Rows(rows) => rows.to_vecs().unwrap(),
            Outputs::TopK(_) => panic!("a tensor model gave top-k rows"),
        }
    }

    #[test]
    fn kinds_and_datatypes_round_trip() {
        for d in DataType::ALL {
            assert_eq!(datatype_of(kind_of(d)), Some(d));
            assert_eq!(kind_of(d).elt_size_in_bytes() as u64, d.size(), "{}", d.name());
        }
        assert_eq!(datatype_of(Kind::ComplexFloat), None);
    }

    #[test]
    fn a_dict_model_round_trips_by_name() {
        let signature = dict_signature();
        let (model, pre) = load("dict", &signature);
        // Three items padded to a batch of four (the padding row is zeros).
        let mut staging: Vec<u8> = (0..3).flat_map(|i| dict_item(&signature, i + 1)).collect();
        staging.resize(4 * signature.input_bytes() as usize, 0);
        let launched = model.launch(pre.upload_bytes(&staging, 4).unwrap(), 1).unwrap();
        let rows = byte_rows(launched.collect(3).unwrap());
        assert_eq!(rows.len(), 3);
        for (i, row) in rows.iter().enumerate() {
            check_dict_row(&signature, row, i as i64 + 1);
        }
    }

    /// In half precision (bf16: the CPU has its kernels) floating inputs
    /// are cast to it and integer ones are not, and a floating output
    /// comes back in the dtype model.toml declares.
    #[test]
    fn a_half_precision_model_takes_and_gives_its_declared_dtypes() {
        let signature = dict_signature();
        let optimization = OptimizationConfig { precision: crate::model::config::Precision::Bf16, channels_last: true, ..Default::default() };
        let model = TensorModel::load(&scripted("dict"), &signature, &optimization, Device::Cpu, Vec::new()).unwrap();
        let pre = TensorUploader::new(&signature, &optimization, Device::Cpu);
        let staging: Vec<u8> = (0..2).flat_map(|i| dict_item(&signature, i + 1)).collect();
        let input = Preprocessor::Tensors(pre).upload_bytes(&staging, 2).unwrap();
        assert_eq!(input.tensors.iter().map(Tensor::kind).collect::<Vec<_>>(), [Kind::BFloat16, Kind::Int64]);
        let rows = model.launch(input, Forms::RAW).unwrap().collect(2).unwrap().to_vecs().unwrap();
        // item*10 + j + 1 <= 26 is exact in bf16 (8 bits of mantissa).
        for (i, row) in rows.iter().enumerate() {
            check_dict_row(&signature, row, i as i64 + 1);
        }
    }

    #[test]
    fn a_tuple_model_round_trips_by_position() {
        let signature = tuple_signature();
        let (model, pre) = load("tuple", &signature);
        let le = |v: [i32; 3]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let staging = staged(&signature, &[&le([1, 2, 3]), &le([-4, 5, 7])]);
        let rows = byte_rows(model.run(&pre, &staging, 2, 1).unwrap());
        let at = signature.output_placements();
        let f64s = |b: &[u8]| b.chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let i16s = |b: &[u8]| b.chunks(2).map(|c| i16::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        assert_eq!(f64s(&rows[0][at[0].range()]), [0.5, 1.0, 1.5]);
        assert_eq!(f64s(&rows[1][at[0].range()]), [-2.0, 2.5, 3.5]);
        assert_eq!(i16s(&rows[1][at[1].range()]), [-3, 6, 8]);
        // 5.0 and 7.0 as IEEE half: 0x4500, 0x4700.
        assert_eq!(rows[1][at[2].range()], [0x00, 0xc4, 0x00, 0x45, 0x00, 0x47]);
    }

    #[test]
    fn single_tensor_and_list_outputs() {
        let signature = TensorSignature { inputs: vec![spec("x", DataType::Bf16, &[2])], outputs: vec![spec("y", DataType::Bf16, &[2])] };
        let (model, pre) = load("single", &signature);
        // 1.5 and -3.0 as bfloat16: 0x3fc0, 0xc040; doubled 0x4040, 0xc0c0.
        let rows = byte_rows(model.run(&pre, &staged(&signature, &[&[0xc0, 0x3f, 0x40, 0xc0]]), 1, 1).unwrap());
        assert_eq!(rows[0][..4], [0x40, 0x40, 0xc0, 0xc0]);

        let signature = TensorSignature {
            inputs: vec![spec("x", DataType::Uint8, &[2])],
            outputs: vec![spec("up", DataType::Uint8, &[2]), spec("down", DataType::Uint8, &[2])],
        };
        let (model, pre) = load("list", &signature);
        let rows = byte_rows(model.run(&pre, &staged(&signature, &[&[10, 20]]), 1, 1).unwrap());
        assert_eq!((&rows[0][0..2], &rows[0][64..66]), (&[11, 21][..], &[9, 19][..]));
    }

    /// A vision model: pixels normalised by the image preprocessor, its
    /// mask laid out in the slot where the gateway reads it.
    #[test]
    fn a_segmenter_gets_normalised_pixels_and_answers_in_the_slot() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "name = \"seg\"\nversion = \"1\"\nfile = {:?}\n[input]\nwidth = 2\nheight = 1\nchannels = 3\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n\
             [segmentation]\nmask = \"classes\"\nlabels = [\"a\", \"b\", \"c\"]\nresize = \"stretch\"\n[batching]\nmax_batch_size = 2\n",
            scripted("segment3")
        );
        std::fs::write(dir.path().join("model.toml"), toml).unwrap();
        let loaded = crate::model::config::load(dir.path()).unwrap();
        let pre = Preprocessor::new(&loaded.config, Device::Cpu).unwrap();
        let model = Model::load(&loaded.model_file, &loaded.config, Device::Cpu).unwrap();
        // One item: two RGB pixels, red channel 255 then 0.
        let rows = byte_rows(model.run(&pre, &[255, 9, 9, 0, 9, 9], 1, 0).unwrap());
        let mask: Vec<f32> = rows[0][..24].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        // (255 / 255 - 0.5) / 0.25 = 2 and (0 - 0.5) / 0.25 = -2, per plane,
        // to float32's rounding (the normalisation is one multiply-add).
        for (got, want) in mask.iter().zip([2.0f32, -2.0, -2.0, 2.0, 0.0, -0.0]) {
            assert!((got - want).abs() <= 1e-6, "{mask:?}");
        }

        // Declared with two classes, the model's three planes are refused, naming the fields.
        let text = std::fs::read_to_string(dir.path().join("model.toml")).unwrap().replace(", \"c\"]", "]");
        std::fs::write(dir.path().join("model.toml"), text).unwrap();
        let loaded = crate::model::config::load(dir.path()).unwrap();
        let pre = Preprocessor::new(&loaded.config, Device::Cpu).unwrap();
        let model = Model::load(&loaded.model_file, &loaded.config, Device::Cpu).unwrap();
        let err = model.run(&pre, &[0; 6], 1, 0).err().expect("a mismatch").to_string();
        assert!(err.contains("\"mask\"") && err.contains("[1, 3, 1, 2]") && err.contains("segmentation.mask"), "{err}");
    }

    /// A segmenter's answer form: its mask made 8-bit on the device (each
    /// pixel's class, or 255 x alpha), only the forms a batch wants made,
    /// each request's written from its own.
    #[test]
    fn a_segmenters_answer_is_its_mask_made_8_bit() {
        for (file, mask, want) in [("segment3", "classes", [0u8, 1]), ("alpha1", "alpha", [255u8, 0])] {
            let dir = tempfile::tempdir().unwrap();
            let labels = if mask == "classes" { "[\"a\", \"b\", \"c\"]" } else { "[\"bg\", \"fg\"]" };
            let toml = format!(
                "name = \"seg\"\nversion = \"1\"\nfile = {:?}\n[input]\nwidth = 2\nheight = 1\nchannels = 3\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n\
                 [segmentation]\nmask = \"{mask}\"\nlabels = {labels}\nresize = \"stretch\"\n[batching]\nmax_batch_size = 2\n",
                scripted(file)
            );
            std::fs::write(dir.path().join("model.toml"), toml).unwrap();
            let loaded = crate::model::config::load(dir.path()).unwrap();
            let pre = Preprocessor::new(&loaded.config, Device::Cpu).unwrap();
            let model = Model::load(&loaded.model_file, &loaded.config, Device::Cpu).unwrap();
            // Two pixels, red 255 then 0; two items.
            let pixels = [255, 9, 9, 0, 9, 9, 255, 9, 9, 0, 9, 9];
            for forms in [Forms { raw: false, small: true }, Forms { raw: true, small: true }] {
                let launched = model.launch_forms(pre.upload_bytes(&pixels, 2).unwrap(), 0, forms).unwrap();
                let crate::model::Launched::Tensors(launched) = launched else { panic!("a tensor model") };
                let rows = launched.collect(2).unwrap();
                for i in 0..2 {
                    let answer = rows.row(i, true).unwrap();
                    assert_eq!((answer.len(), answer[0].0, answer[0].1), (1, 0, &want[..]), "{file} {forms:?} item {i}");
                    assert_eq!(rows.row(i, false).is_ok(), forms.raw, "{file} {forms:?}: raw rows only when wanted");
                }
            }
        }
    }

    fn launch_error(file: &str, signature: &TensorSignature) -> ModelError {
        let (model, pre) = load(file, signature);
        let zeros = vec![0u8; 2 * signature.input_bytes() as usize];
        match model.launch(pre.upload_bytes(&zeros, 2).unwrap(), 1) {
            Ok(_) => panic!("{file} ran with a signature that does not match it"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_output_of_another_dtype_is_named() {
        let mut signature = tuple_signature();
        signature.outputs[1].datatype = DataType::Int32;
        let err = launch_error("tuple", &signature);
        assert!(matches!(&err, ModelError::OutputMismatch { name, .. } if name == "next"), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("\"next\"") && text.contains("INT16 [2, 3]") && text.contains("model.toml says INT32 [2, 3]"), "{text}");
    }

    #[test]
    fn an_output_of_another_shape_is_named() {
        let mut signature = dict_signature();
        signature.outputs[1].dims = vec![2, 2];
        let text = launch_error("dict", &signature).to_string();
        assert!(text.contains("\"doubled\"") && text.contains("INT64 [2, 4]") && text.contains("INT64 [2, 2, 2]"), "{text}");
    }

    #[test]
    fn missing_or_miscounted_outputs_are_errors() {
        let mut signature = dict_signature();
        signature.outputs[2].name = "flags".into();
        let text = launch_error("dict", &signature).to_string();
        assert!(text.contains("no \"flags\"") && text.contains("\"flag\""), "{text}");

        let mut signature = tuple_signature();
        signature.outputs.pop();
        let text = launch_error("tuple", &signature).to_string();
        assert!(text.contains("tuple of 3") && text.contains("declares 2"), "{text}");

        let mut signature = tuple_signature();
        signature.inputs[0].datatype = DataType::Int32;
        signature.outputs = vec![spec("y", DataType::Int32, &[3]), spec("z", DataType::Int32, &[3])];
        let text = launch_error("single", &signature).to_string();
        assert!(text.contains("one tensor") && text.contains("declares 2"), "{text}");
    }
}
