//! The tensor model on the CPU: outputs by name and position, dtypes,
//! half precision, a segmenter's forms, and the mismatches named.

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

class Twins(torch.nn.Module):
    # Four same-shaped layers, two of them equal copies (separate storage)
    # and two sharing one weight: freezing compares every pair of
    # same-typed constants; loading keeps the tie.
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])
        self.layers[3].load_state_dict(self.layers[1].state_dict())
        self.layers[2].weight = self.layers[0].weight  # tied: one tensor in two slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x

class Held(torch.nn.Module):
    # Tensors in a list attribute: left to torch::jit::load by the
    # streaming loader, which remakes only the slots' own tensors.
    def __init__(self):
        super().__init__()
        self.ws: List[torch.Tensor] = [torch.ones(3), torch.full((3,), 2.0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.ws[0] + self.ws[1]

class Stateful(torch.nn.Module):
    # Its __setstate__ computes from the saved tensor while the file loads:
    # the streaming loader must not run it on unwritten bytes.
    def __init__(self):
        super().__init__()
        self.w = torch.ones(3)

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]):
        self.w = state[0] + 1
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w

for name, module in [("twins", Twins()), ("held", Held()), ("stateful", Stateful()), ("dict", TwoInThreeOut()), ("tuple", Tuple3()), ("single", Single()), ("list", Listed()), ("segment3", Segment3()), ("alpha1", Alpha1())]:
    torch.jit.script(module).save(f"{sys.argv[1]}/{name}.pt")
"#;

/// The path of a scripted test model: dict, tuple, single, list,
/// segment3, alpha1, twins, held or stateful.
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
