//! The model config (`model.toml`): what the host needs to know about a
//! TorchScript image classifier besides its weights.
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
//! precision = "fp32"           # "fp32", "fp16" or "bf16": weights and inputs on the device
//! channels_last = false        # feed NHWC-strided input (with channels-last weights)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub version: String,
    /// The TorchScript file, relative to the config's directory.
    pub file: PathBuf,
    #[serde(default)]
    pub description: String,
    pub input: InputConfig,
    pub output: OutputConfig,
    pub batching: BatchingConfig,
    #[serde(default)]
    pub optimization: OptimizationConfig,
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
    /// next one, and each is warmed up before the host reports ready, so the
    /// model never meets a new shape (and its kernel selection) under load.
    /// Empty: powers of two up to max_batch_size, and max_batch_size itself.
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

/// How the model runs on its device; measured in docs/BENCHMARKS.md.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizationConfig {
    /// The dtype the weights are cast to and the input normalised into.
    #[serde(default)]
    pub precision: Precision,
    /// Keep the input NHWC-strided (channels last) instead of making it
    /// contiguous NCHW: the layout tensor cores want for fp16/bf16
    /// convolutions, and free, because the pixels arrive as HWC.
    #[serde(default)]
    pub channels_last: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Fp16 => tch::Kind::Half,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }
}

impl BatchingConfig {
    /// The sorted batch shapes, always ending with max_batch_size.
    pub fn shapes(&self) -> Vec<u32> {
        let mut shapes: Vec<u32> = if self.batch_sizes.is_empty() {
            (0..32).map(|i| 1u32 << i).take_while(|&n| n < self.max_batch_size).collect()
        } else {
            self.batch_sizes.clone()
        };
        shapes.push(self.max_batch_size);
        shapes.sort_unstable();
        shapes.dedup();
        shapes
    }
}

impl BatchingConfig {
    pub fn policy(&self) -> crate::batch_policy::BatchPolicy {
        let preferred: Vec<usize> = self.preferred_batch_sizes.iter().map(|&n| n as usize).collect();
        crate::batch_policy::BatchPolicy::new(
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
    let config: ModelConfig = toml::from_str(&text)
        .map_err(|source| ModelConfigError::Parse { path: toml_path.clone(), source: Box::new(source) })?;
    validate(&config).map_err(|(field, problem)| ModelConfigError::Invalid { path: toml_path.clone(), field, problem })?;
    let dir = toml_path.parent().unwrap_or(Path::new("."));
    Ok(LoadedConfig { model_file: dir.join(&config.file), config })
}

fn validate(c: &ModelConfig) -> Result<(), (&'static str, String)> {
    let i = &c.input;
    if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
        return Err(("name", format!("{:?} must be non-empty ASCII letters, digits, '-', '_' or '.'", c.name)));
    }
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
    if c.output.labels.is_empty() {
        return Err(("output.labels", "at least one label is needed".into()));
    }
    let b = &c.batching;
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "digits"
version = "1"
file = "model.pt"
[input]
width = 32
height = 32
channels = 1
mean = [0.5]
std = [0.5]
[output]
kind = "classification"
labels = ["0", "1"]
[batching]
max_batch_size = 8
batch_sizes = [1, 8]
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), text).unwrap();
        let path = dir.path().to_path_buf();
        (dir, path)
    }

    #[test]
    fn loads_a_directory_and_resolves_the_model_file() {
        let (_dir, path) = write(GOOD);
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.model_file, path.join("model.pt"));
        assert!(loaded.config.output.softmax);
        assert_eq!(loaded.config.output.kind, OutputKind::Classification);
        assert_eq!(loaded.config.optimization.precision, Precision::Fp32, "optional section defaults");
        assert_eq!(loaded.config.batching.max_queue_delay_us, 0);
    }

    #[test]
    fn names_the_field_that_is_wrong() {
        for (from, to, field) in [
            ("channels = 1", "channels = 2", "input.channels"),
            ("std = [0.5]", "std = [0.0]", "input.std"),
            ("mean = [0.5]", "mean = [0.5, 0.5]", "input.mean/std"),
            ("max_batch_size = 8", "max_batch_size = 0", "batching.max_batch_size"),
            ("[1, 8]", "[1, 9]", "batching.batch_sizes"),
            ("batch_sizes = [1, 8]", "batch_sizes = [1, 8]\npreferred_batch_sizes = [0]", "batching.preferred_batch_sizes"),
            ("labels = [\"0\", \"1\"]", "labels = []", "output.labels"),
        ] {
            let (_dir, path) = write(&GOOD.replace(from, to));
            let err = load(&path).unwrap_err();
            assert!(matches!(err, ModelConfigError::Invalid { field: f, .. } if f == field), "{to}: {err}");
        }
    }

    #[test]
    fn batch_shapes_and_padding() {
        let b = BatchingConfig { max_batch_size: 24, batch_sizes: vec![], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
        assert_eq!(b.shapes(), vec![1, 2, 4, 8, 16, 24]);
        let b = BatchingConfig { max_batch_size: 32, batch_sizes: vec![8, 1], max_queue_delay_us: 0, preferred_batch_sizes: vec![] };
        assert_eq!(b.shapes(), vec![1, 8, 32]);
        let shapes = b.shapes();
        assert_eq!(padded_batch(&shapes, 1), 1);
        assert_eq!(padded_batch(&shapes, 2), 8);
        assert_eq!(padded_batch(&shapes, 9), 32);
        assert_eq!(padded_batch(&shapes, 32), 32);
    }

    #[test]
    fn optimization_and_batching_policy_parse() {
        let text = GOOD.replace("batch_sizes = [1, 8]", "batch_sizes = [1, 8]\nmax_queue_delay_us = 500\npreferred_batch_sizes = [4]")
            + "[optimization]\nprecision = \"fp16\"\nchannels_last = true\n";
        let (_dir, path) = write(&text);
        let c = load(&path).unwrap().config;
        assert_eq!(c.optimization.precision, Precision::Fp16);
        assert!(c.optimization.channels_last);
        let p = c.batching.policy();
        assert_eq!((p.max_batch_size, p.max_queue_delay, p.preferred), (8, std::time::Duration::from_micros(500), vec![4]));
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        let (_dir, path) = write(&GOOD.replace("version = \"1\"", "version = \"1\"\ncolour = 3"));
        assert!(matches!(load(&path), Err(ModelConfigError::Parse { .. })));
        assert!(matches!(load(Path::new("/nonexistent/model.toml")), Err(ModelConfigError::Read { .. })));
    }
}
