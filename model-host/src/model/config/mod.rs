//! The model config (`model.toml`): what the host needs to know about a
//! TorchScript model besides its weights. A model is one of two kinds:
//!
//! - an **image classifier** (`[input]` + `[output]`): uint8 pixels in,
//!   normalised on the device, top-k classes out;
//! - a **tensor model** (`[[inputs]]` + `[[outputs]]`): named, typed tensors
//!   in and out, laid out in the slot as `protocol::tensor` says;
//! - a **vision model** (`[input]` + `[detection]` or `[segmentation]`):
//!   pixels in like a classifier, the task's tensors out like a tensor
//!   model (see [`vision`]);
//! - an **iterative model** (`[iterative]`): integer parameters in, an
//!   image out after many steps, run by the host as jobs (see [`iterative`]).
//!
//! An image classifier:
//!
//! ```toml
//! name = "digits"
//! version = "1"
//! file = "model.pt"            # relative to this file
//! [input]
//! width = 32
//! height = 32
//! channels = 1                 # 1 grayscale, 3 RGB
//! mean = [0.5]                 # per channel, on pixels scaled to 0..1
//! std = [0.5]
//! [output]
//! kind = "classification"
//! labels = ["0", "1", ...]
//! softmax = true               # false if the model already outputs probabilities
//! [batching]
//! max_batch_size = 32
//! batch_sizes = [1, 2, 4, 8, 16, 32]  # shapes the model runs at; default powers of two
//! max_queue_delay_us = 0       # how long a partial batch may wait for more requests
//! preferred_batch_sizes = []   # sizes that run at once without waiting
//! [optimization]               # optional
//! precision = "fp32"           # "fp32", "fp16" or "bf16": weights and floating inputs on the device
//! channels_last = false        # feed NHWC-strided input (with channels-last weights)
//! freeze = true                # freeze + optimize_for_inference at load (every kind)
//! freeze_after_ready = false   # freeze beside serving, once READY
//! cuda_graphs = true           # capture each batch shape as a CUDA graph (GPU, every kind)
//! cudnn_benchmark = false      # time cuDNN's kernels per shape at warm-up (slow start)
//! ```
//!
//! and, for JPEGs decoded on the host's GPU, `decode` ([`decode`]).
//!
//! A tensor model (same `[batching]` and `[optimization]`: in half
//! precision its floating inputs are cast on the device and its floating
//! outputs cast back to their declared dtypes; integer and bool inputs
//! keep theirs):
//!
//! ```toml
//! name = "detector"
//! version = "1"
//! file = "model.pt"
//! [[inputs]]                   # forward()'s arguments, in this order
//! name = "image"
//! datatype = "FP32"            # the protocol's names: BOOL, UINT8, ..., FP32, FP64
//! dims = [3, 32, 32]           # per batch item; the model sees [batch, 3, 32, 32]
//! [[outputs]]                  # one tensor, a tuple/list (by position) or a dict (by name)
//! name = "boxes"
//! datatype = "FP32"
//! dims = [8, 4]
//! [batching]
//! max_batch_size = 8
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use protocol::shm::layout::MAX_SLOT_SIZE;
use protocol::tensor::{MAX_DIMS, MAX_TENSORS};
use protocol::{DataType, TensorSignature, TensorSpec};
use serde::Deserialize;
use thiserror::Error;

pub use optimization::{OptimizationConfig, Precision};

/// A checked model.toml: the rest of the host reads this, never the file.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub name: String,
    pub version: String,
    /// The TorchScript file, relative to the config's directory.
    pub file: PathBuf,
    pub description: String,
    /// What goes in and comes out: the part that differs between kinds.
    pub kind: ModelKind,
    pub batching: BatchingConfig,
    pub optimization: OptimizationConfig,
    /// Where an image classifier's JPEGs are decoded.
    pub decode: decode::DecodeConfig,
}

/// The two kinds of model the host runs.
#[derive(Debug, Clone)]
pub enum ModelKind {
    /// uint8 pixels in, normalised on the device; top-k classes out.
    Classifier(ClassifierConfig),
    /// Named, typed tensors in and out through the slot.
    Tensors(TensorSignature),
    /// uint8 pixels in, normalised on the device; detection or
    /// segmentation tensors out through the slot ([`vision`]).
    Vision(VisionConfig),
    /// Integer parameters in, an image out after many steps, run as jobs
    /// ([`iterative`]).
    Iterative(iterative::IterativeConfig),
}

/// A vision model's `[input]` and its task (`[detection]` or `[segmentation]`).
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub input: InputConfig,
    pub model: protocol::VisionModel,
}

/// An image classifier's `[input]` and `[output]` tables.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    pub input: InputConfig,
    pub output: OutputConfig,
}

impl ModelConfig {
    pub fn classifier(&self) -> Option<&ClassifierConfig> {
        match &self.kind {
            ModelKind::Classifier(c) => Some(c),
            ModelKind::Tensors(_) | ModelKind::Vision(_) | ModelKind::Iterative(_) => None,
        }
    }

    /// The `[input]` of a model that takes images (a classifier or a vision
    /// model), and how an image of another size becomes it; None for a
    /// tensor model.
    pub fn image_input(&self) -> Option<(&InputConfig, protocol::vision::Resize)> {
        match &self.kind {
            ModelKind::Classifier(c) => Some((&c.input, protocol::vision::Resize::Stretch)),
            ModelKind::Vision(v) => Some((&v.input, v.model.resize())),
            ModelKind::Tensors(_) | ModelKind::Iterative(_) => None,
        }
    }

    #[cfg(test)]
    pub fn tensors(&self) -> Option<&TensorSignature> {
        match &self.kind {
            ModelKind::Classifier(_) | ModelKind::Vision(_) | ModelKind::Iterative(_) => None,
            ModelKind::Tensors(signature) => Some(signature),
        }
    }

    /// Bytes the gateway writes into a slot for one batch item, which the
    /// host copies out: one image, or a tensor model's inputs with their
    /// alignment padding (the outputs may need more of the slot).
    pub fn item_input_bytes(&self) -> usize {
        match &self.kind {
            ModelKind::Classifier(c) => (c.input.width * c.input.height * c.input.channels) as usize,
            ModelKind::Tensors(signature) => signature.input_bytes() as usize,
            // The pixels only: IMAGE is the signature's one input, at 0.
            ModelKind::Vision(v) => v.model.input.len() as usize,
            // Jobs carry their parameters in messages, not slots.
            ModelKind::Iterative(_) => 0,
        }
    }
}

/// model.toml as written; [`validate`] turns it into a [`ModelConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelToml {
    name: String,
    version: String,
    file: PathBuf,
    #[serde(default)]
    description: String,
    input: Option<InputConfig>,
    output: Option<OutputConfig>,
    /// Options, so that an explicit `inputs = []` is told apart from none.
    inputs: Option<Vec<TensorToml>>,
    outputs: Option<Vec<TensorToml>>,
    detection: Option<vision::DetectionToml>,
    segmentation: Option<vision::SegmentationToml>,
    iterative: Option<iterative::IterativeToml>,
    batching: BatchingConfig,
    #[serde(default)]
    optimization: OptimizationConfig,
    #[serde(default)]
    decode: decode::DecodePlace,
    host_decode: Option<decode::HostDecodeConfig>,
}

/// One `[[inputs]]` or `[[outputs]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorToml {
    name: String,
    /// A protocol name ("FP32"); checked in [`validate`] so that the error
    /// can list the known ones.
    datatype: String,
    dims: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub kind: OutputKind,
    pub labels: Vec<String>,
    #[serde(default = "yes")]
    pub softmax: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// One row of class scores per image.
    Classification,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    pub max_batch_size: u32,
    /// The batch shapes the model is run at: a batch is padded up to the
    /// next ready one, so the model never meets a new shape (and its kernel
    /// selection) under load. Each is warmed up before the host reports
    /// ready, or some of them after it (`[optimization]
    /// warm_up_after_ready`). Empty: the default shapes (see [`Self::shapes`]).
    #[serde(default)]
    pub batch_sizes: Vec<u32>,
    /// How long, in microseconds, the oldest request may wait for others
    /// to fill a batch (Triton's `max_queue_delay_microseconds`). 0: never
    /// wait; take whatever queued while the model was busy.
    #[serde(default)]
    pub max_queue_delay_us: u64,
    /// Batch sizes that run at once, without waiting out the delay
    /// (Triton's `preferred_batch_size`).
    #[serde(default)]
    pub preferred_batch_sizes: Vec<u32>,
}

impl BatchingConfig {
    /// The sorted batch shapes, always ending with max_batch_size.
    pub fn shapes(&self) -> Vec<u32> {
        let mut shapes: Vec<u32> = if self.batch_sizes.is_empty() {
            // 1, 2, 4, 8, 12, 16, then every 16: a batch of 71 runs at 80,
            // not 128 (on an H200, ResNet-50 at 256 clients averaged 71 and
            // padding to 128 left 45% of each batch's GPU time unused), and
            // one of 10 at 12, not 16 (32 clients average 9-11; what that
            // buys was within the H200's run-to-run spread). Each shape
            // costs a warm-up pass, so 24 is not one by default.
            let small = [1u32, 2, 4, 8, 12, 16].into_iter();
            let large = (2..).map(|i| 16 * i);
            small.chain(large).take_while(|&n| n < self.max_batch_size).collect()
        } else {
            self.batch_sizes.clone()
        };
        shapes.push(self.max_batch_size);
        shapes.sort_unstable();
        shapes.dedup();
        shapes
    }

    pub fn policy(&self) -> crate::pipeline::batch_policy::BatchPolicy {
        let preferred: Vec<usize> = self.preferred_batch_sizes.iter().map(|&n| n as usize).collect();
        crate::pipeline::batch_policy::BatchPolicy::new(
            self.max_batch_size as usize,
            std::time::Duration::from_micros(self.max_queue_delay_us),
            &preferred,
        )
    }
}

/// The smallest shape that holds `n` images (`shapes` as from `shapes()`).
pub fn padded_batch(shapes: &[u32], n: usize) -> usize {
    shapes.iter().map(|&s| s as usize).find(|&s| s >= n).unwrap_or(n)
}

/// The shapes to warm up before READY when the rest may follow after it:
/// the smallest, the largest, and the two nearest a third and two thirds
/// of the way between them on a log scale (of the default shapes up to
/// 128: 1, 4, 32, 128). Until the rest are ready a batch is padded to the
/// next of these. On an H200, ResNet-50 fp16 was READY in 0.89-1.02 s with
/// 4 shapes against 1.43-1.71 s with all 13: each thread's first pass and
/// each capture cost more the more of them run (docs/benchmarks.md).
pub fn shapes_before_ready(shapes: &[u32]) -> Vec<u32> {
    let (Some(&first), Some(&last)) = (shapes.first(), shapes.last()) else { return Vec::new() };
    if shapes.len() <= 4 {
        return shapes.to_vec();
    }
    let (lo, hi) = (f64::from(first).ln(), f64::from(last).ln());
    let interior = &shapes[1..shapes.len() - 1];
    let nearest = |at: f64| {
        let target = lo + (hi - lo) * at;
        let distance = |s: &&u32| ((f64::from(**s).ln() - target).abs() * 1e6) as u64;
        *interior.iter().min_by_key(distance).expect("more than 4 shapes")
    };
    let mut chosen = vec![first, nearest(1.0 / 3.0), nearest(2.0 / 3.0), last];
    chosen.dedup();
    chosen
}

fn yes() -> bool {
    true
}

#[derive(Debug, Error)]
pub enum ModelConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {field}: {problem}")]
    Invalid { path: PathBuf, field: &'static str, problem: String },
}

/// A config that passed validation, with its model file resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ModelConfig,
    pub model_file: PathBuf,
}

/// Reads `path` (a model directory or a model.toml) and validates it.
pub fn load(path: &Path) -> Result<LoadedConfig, ModelConfigError> {
    let toml_path = if path.is_dir() { path.join("model.toml") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&toml_path)
        .map_err(|source| ModelConfigError::Read { path: toml_path.clone(), source })?;
    let raw: ModelToml = toml::from_str(&text)
        .map_err(|source| ModelConfigError::Parse { path: toml_path.clone(), source: Box::new(source) })?;
    let config = validate(raw).map_err(|(field, problem)| ModelConfigError::Invalid { path: toml_path.clone(), field, problem })?;
    let dir = toml_path.parent().unwrap_or(Path::new("."));
    Ok(LoadedConfig { model_file: dir.join(&config.file), config })
}

type Invalid = (&'static str, String);

fn validate(raw: ModelToml) -> Result<ModelConfig, Invalid> {
    if !is_name(&raw.name) {
        return Err(("name", format!("{:?} must be non-empty ASCII letters, digits, '-', '_' or '.'", raw.name)));
    }
    let kind = match (raw.input, raw.output, raw.inputs, raw.outputs, raw.detection, raw.segmentation, raw.iterative) {
        (None, None, None, None, None, None, Some(t)) => iterative::kind(t)?,
        (_, _, _, _, _, _, Some(_)) => {
            return Err(("iterative", "[iterative] goes alone, without [input], [output], [[inputs]], [[outputs]], [detection] or [segmentation]".into()));
        }
        (Some(input), None, None, None, Some(d), None, None) => vision::kind(input, |i| vision::detection(i, d))?,
        (Some(input), None, None, None, None, Some(s), None) => vision::kind(input, |i| vision::segmentation(i, s))?,
        (_, _, _, _, Some(_), _, None) | (_, _, _, _, _, Some(_), None) => {
            return Err(("detection", "[detection] or [segmentation] (one of them) goes with [input] alone, without [output], [[inputs]] or [[outputs]]".into()));
        }
        (input, output, inputs, outputs, None, None, None) => classic_kind(input, output, inputs, outputs)?,
    };
    validate_batching(&raw.batching)?;
    let decode = decode::validate(raw.decode, raw.host_decode, matches!(kind, ModelKind::Classifier(_) | ModelKind::Vision(_)))?;
    Ok(ModelConfig {
        name: raw.name,
        version: raw.version,
        file: raw.file,
        description: raw.description,
        kind,
        batching: raw.batching,
        optimization: raw.optimization,
        decode,
    })
}

/// The two original kinds: `[input]` + `[output]`, or `[[inputs]]` + `[[outputs]]`.
fn classic_kind(
    input: Option<InputConfig>,
    output: Option<OutputConfig>,
    inputs: Option<Vec<TensorToml>>,
    outputs: Option<Vec<TensorToml>>,
) -> Result<ModelKind, Invalid> {
    Ok(match (input, output, inputs, outputs) {
        (None, None, None, None) => {
            return Err(("input", "a model needs [input] and [output] (an image classifier) or [[inputs]] and [[outputs]] (a tensor model)".into()));
        }
        (Some(input), Some(output), None, None) => ModelKind::Classifier(validate_classifier(input, output)?),
        (None, None, inputs, outputs) => {
            let (inputs, outputs) = (inputs.unwrap_or_default(), outputs.unwrap_or_default());
            let signature = TensorSignature { inputs: validate_tensors(inputs, &INPUTS)?, outputs: validate_tensors(outputs, &OUTPUTS)? };
            if signature.slot_bytes() > MAX_SLOT_SIZE {
                return Err(("inputs/outputs", format!("a batch item needs {} bytes, over the {MAX_SLOT_SIZE}-byte slot limit", signature.slot_bytes())));
            }
            ModelKind::Tensors(signature)
        }
        (None, Some(_), None, None) => return Err(("input", "an image classifier needs an [input] table beside [output]".into())),
        (Some(_), None, None, None) => return Err(("output", "an image classifier needs an [output] table beside [input]".into())),
        _ => {
            return Err(("inputs", "[input]/[output] (an image classifier) and [[inputs]]/[[outputs]] (a tensor model) cannot be mixed".into()));
        }
    })
}

/// Model and tensor names: they appear in URLs and JSON.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
}

fn validate_classifier(input: InputConfig, output: OutputConfig) -> Result<ClassifierConfig, Invalid> {
    check_input(&input)?;
    if output.labels.is_empty() {
        return Err(("output.labels", "at least one label is needed".into()));
    }
    Ok(ClassifierConfig { input, output })
}

/// `[input]`, for a classifier or a vision model.
pub(super) fn check_input(i: &InputConfig) -> Result<(), Invalid> {
    if !(1..=8192).contains(&i.width) || !(1..=8192).contains(&i.height) {
        return Err(("input.width/height", format!("{}x{} is outside 1..=8192", i.width, i.height)));
    }
    if i.channels != 1 && i.channels != 3 {
        return Err(("input.channels", format!("{} must be 1 (grayscale) or 3 (RGB)", i.channels)));
    }
    if i.mean.len() != i.channels as usize || i.std.len() != i.channels as usize {
        return Err(("input.mean/std", format!("need {} values each (one per channel)", i.channels)));
    }
    if i.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || i.mean.iter().any(|m| !m.is_finite()) {
        return Err(("input.std", "every std must be finite and > 0, every mean finite".into()));
    }
    Ok(())
}

/// The field names one side's errors carry (they must be `'static`).
struct Side {
    list: &'static str,
    name: &'static str,
    datatype: &'static str,
    dims: &'static str,
}

const INPUTS: Side = Side { list: "inputs", name: "inputs.name", datatype: "inputs.datatype", dims: "inputs.dims" };
const OUTPUTS: Side = Side { list: "outputs", name: "outputs.name", datatype: "outputs.datatype", dims: "outputs.dims" };

fn validate_tensors(entries: Vec<TensorToml>, side: &Side) -> Result<Vec<TensorSpec>, Invalid> {
    if entries.is_empty() {
        return Err((side.list, format!("at least one [[{}]] entry is needed", side.list)));
    }
    if entries.len() > MAX_TENSORS {
        return Err((side.list, format!("{} entries, over the limit of {MAX_TENSORS}", entries.len())));
    }
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .map(|t| {
            if !is_name(&t.name) {
                return Err((side.name, format!("{:?} must be non-empty ASCII letters, digits, '-', '_' or '.'", t.name)));
            }
            if !seen.insert(t.name.clone()) {
                return Err((side.name, format!("{:?} appears twice", t.name)));
            }
            let Some(datatype) = DataType::from_name(&t.datatype) else {
                let known: Vec<&str> = DataType::ALL.iter().map(|d| d.name()).collect();
                return Err((side.datatype, format!("{}: {:?} is not one of {}", t.name, t.datatype, known.join(", "))));
            };
            if t.dims.len() > MAX_DIMS {
                return Err((side.dims, format!("{}: {} dims, over the limit of {MAX_DIMS}", t.name, t.dims.len())));
            }
            if t.dims.contains(&0) {
                return Err((side.dims, format!("{}: {:?}: every dim must be >= 1", t.name, t.dims)));
            }
            let bytes = t.dims.iter().try_fold(datatype.size(), |n, &d| n.checked_mul(d));
            if bytes.is_none_or(|b| b > MAX_SLOT_SIZE) {
                return Err((side.dims, format!("{}: {:?} of {} is over the {MAX_SLOT_SIZE}-byte slot limit", t.name, t.dims, t.datatype)));
            }
            Ok(TensorSpec { name: t.name, datatype, dims: t.dims })
        })
        .collect()
}

fn validate_batching(b: &BatchingConfig) -> Result<(), Invalid> {
    if !(1..=4096).contains(&b.max_batch_size) {
        return Err(("batching.max_batch_size", format!("{} is outside 1..=4096", b.max_batch_size)));
    }
    if let Some(bad) = b.batch_sizes.iter().find(|&&n| n == 0 || n > b.max_batch_size) {
        return Err(("batching.batch_sizes", format!("{bad} is outside 1..=max_batch_size")));
    }
    if let Some(bad) = b.preferred_batch_sizes.iter().find(|&&n| n == 0 || n > b.max_batch_size) {
        return Err(("batching.preferred_batch_sizes", format!("{bad} is outside 1..=max_batch_size")));
    }
    if b.max_queue_delay_us > 10_000_000 {
        return Err(("batching.max_queue_delay_us", format!("{} is over 10 s", b.max_queue_delay_us)));
    }
    Ok(())
}

pub mod decode;
pub mod iterative;
mod optimization;
#[cfg(test)]
mod tests;
pub mod vision;
