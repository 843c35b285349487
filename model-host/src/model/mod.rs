//! The loaded model, whichever kind model.toml declares: an
//! [`ImageClassifier`] (top-k rows out) or a [`TensorModel`] (output bytes
//! laid out for each request's slot; a vision model, detection or
//! segmentation, runs as one, on pixels normalised like a classifier's).
//!
//! Both run the same way: [`preprocess`] uploads a batch (an [`Input`]),
//! [`Model::launch`] queues the forward pass, [`Launched::collect`] waits
//! for it and reads the answers back.
//!
//! The room's files: [`config`] (model.toml), [`device`] (`--device`),
//! [`preprocess`] (slot bytes to the device), [`jpeg_input`] (JPEGs
//! decoded on the GPU into a classifier's input), [`optimized`] (the
//! module as every kind runs it: frozen, cast, CUDA graphs) and
//! [`warm_up`] (its batch shapes warmed and captured), [`classifier`] and
//! [`tensor_model`] (the kinds), [`dtype`] (protocol datatypes as libtorch
//! kinds); [`Input`] and [`ModelError`] are shared by all of them.

use std::path::Path;

use tch::Device;

pub mod classifier;
pub mod config;
pub mod device;
pub mod dtype;
mod error;
pub mod frozen_cache;
mod input;
pub mod jpeg_input;
pub mod optimized;
pub mod preprocess;
pub mod readback;
pub mod tensor_model;
pub mod warm_up;

use classifier::ImageClassifier;
use optimized::OptimizedModule;
use warm_up::{Captured, GraphReport, Late, LateWarmUp, WarmShape};
use config::{ModelConfig, ModelKind};
pub use error::ModelError;
pub use input::Input;
use preprocess::Preprocessor;
pub use tensor_model::Forms;
use tensor_model::TensorModel;

pub enum Model {
    Classifier(ImageClassifier),
    Tensors(TensorModel),
}

/// A batch queued on the device (see [`Model::launch`]).
pub enum Launched {
    Classifier(classifier::Launched),
    Tensors(tensor_model::Launched),
}

/// A batch's answers, one row per batch item.
pub enum Outputs {
    /// (class index, probability), best first.
    TopK(Vec<Vec<(u32, f32)>>),
    /// Each item's outputs, to be written at the output placements of its slot.
    Rows(tensor_model::HostRows),
}

impl Outputs {
    pub fn len(&self) -> usize {
        match self {
            Outputs::TopK(rows) => rows.len(),
            Outputs::Rows(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Model {
    pub fn load(file: &Path, config: &ModelConfig, device: Device) -> Result<Self, ModelError> {
        Self::load_reporting(file, config, device, &mut |_, _| {})
    }

    /// [`Self::load`], telling `progress` (bytes read, file size) as the
    /// file is read: the host's "loading weights 43%".
    pub fn load_reporting(file: &Path, config: &ModelConfig, device: Device, progress: &mut dyn FnMut(u64, u64)) -> Result<Self, ModelError> {
        let o = &config.optimization;
        Ok(match &config.kind {
            ModelKind::Classifier(c) => Model::Classifier(ImageClassifier::load_reporting(file, c, o, device, progress)?),
            ModelKind::Tensors(signature) => Model::Tensors(TensorModel::load_reporting(file, signature, o, device, Vec::new(), progress)?),
            // Runs as a tensor model whose input the preprocessor normalised:
            // its outputs are checked against the task's at warm-up.
            // Run by crate::jobs, never as a batch of slots.
            ModelKind::Iterative(_) => return Err(ModelError::Load("an iterative model is run by the job runner".into())),
            ModelKind::Vision(v) => {
                let fields = v.model.signature.outputs.iter().map(|o| config::vision::declared_by(&o.name)).collect();
                let model = TensorModel::load_reporting(file, &v.model.signature, o, device, fields, progress)?;
                Model::Tensors(match &v.model.task {
                    protocol::vision::VisionTask::Segmentation(s) if s.answer_is_8bit() => model.with_mask(s.mask),
                    _ => model,
                })
            }
        })
    }

    /// Queues the forward pass on an uploaded batch, without waiting for it
    /// on a GPU. `k`: the most classes any request of the batch asked for
    /// (ignored by a tensor model).
    pub fn launch(&self, input: Input, k: usize) -> Result<Launched, ModelError> {
        self.launch_forms(input, k, Forms::RAW)
    }

    /// [`Self::launch`] making the output `forms` the batch's requests want
    /// (a segmenter's raw mask, its 8-bit answer, or both).
    pub fn launch_forms(&self, input: Input, k: usize, forms: Forms) -> Result<Launched, ModelError> {
        match self {
            Model::Classifier(model) => model.launch(input, k).map(Launched::Classifier),
            Model::Tensors(model) => model.launch(input, forms).map(Launched::Tensors),
        }
    }

    /// Bytes of the model's weights on its device, as loaded.
    pub fn weight_bytes(&self) -> u64 {
        self.module().weight_bytes
    }

    /// The module as it runs, whichever the kind.
    fn module(&self) -> &OptimizedModule {
        match self {
            Model::Classifier(model) => model.module(),
            Model::Tensors(model) => model.module(),
        }
    }

    fn module_mut(&mut self) -> &mut OptimizedModule {
        match self {
            Model::Classifier(model) => model.module_mut(),
            Model::Tensors(model) => model.module_mut(),
        }
    }

    /// The CUDA graphs, one per batch shape, over inputs laid out as `pre`
    /// uploads `item_len`-byte items (see [`OptimizedModule::capture_graphs`]).
    pub fn capture_graphs(&mut self, pre: &Preprocessor, shapes: &[u32], item_len: usize) -> GraphReport {
        let sample = |n: usize| pre.upload_bytes(&vec![0; n * item_len], n).map_err(ModelError::from);
        self.module_mut().capture_graphs(shapes, sample)
    }

    /// The warm-up on a GPU: one pass per batch shape, on up to `threads`
    /// threads at once, each thread then capturing the CUDA graphs of the
    /// shapes it warmed (see [`OptimizedModule::warm_up_parallel`]).
    pub fn warm_up_parallel(
        &mut self,
        pre: &Preprocessor,
        shapes: &[u32],
        item_len: usize,
        threads: usize,
        before_capture: &(dyn Fn() + Sync),
    ) -> Result<GraphReport, ModelError> {
        let work = warm_shapes(pre, shapes, item_len, self.varied_input())?;
        self.module_mut().warm_up_parallel(work, threads, before_capture)
    }

    /// The warm-up of the `late` shapes after READY, beside serving, and
    /// where the freeze is pending, the freeze and every shape again (see
    /// [`OptimizedModule::warm_up_later`]); its inputs are made by a
    /// preprocessor of its own for `config`.
    pub fn warm_up_later(&self, config: &ModelConfig, device: Device, late: &[u32], threads: usize) -> Result<LateWarmUp, ModelError> {
        let (all, late) = (config.batching.shapes(), late.to_vec());
        let (config, item_len, varied) = (config.clone(), config.item_input_bytes(), self.varied_input());
        let make = move |frozen: bool| {
            let pre = Preprocessor::new(&config, device)?;
            warm_shapes(&pre, if frozen { &all } else { &late }, item_len, varied)
        };
        self.module().warm_up_later(device, make, threads)
    }

    /// Whether the module is still to be frozen after READY.
    pub fn freeze_pending(&self) -> bool {
        self.module().freeze_pending()
    }

    /// Takes a graph captured after READY: its batch size if it replays
    /// from now on.
    pub fn adopt(&mut self, captured: Captured) -> Option<i64> {
        self.module_mut().adopt(captured)
    }

    /// Takes what the warm-up after READY handed over: a frozen module
    /// (None back), or a graph (its batch size if it replays from now on).
    pub fn adopt_late(&mut self, late: Late) -> Option<i64> {
        match late {
            Late::Frozen(module) => {
                self.module_mut().adopt_frozen(module);
                None
            }
            Late::Graph(captured) => self.adopt(captured),
        }
    }

    /// Drops what the frozen module replaced, once no batch launched
    /// before can be using it (see [`OptimizedModule::drop_retired`]).
    pub fn drop_retired(&mut self) {
        self.module_mut().drop_retired();
    }

    /// Whether warm-up may feed varied bytes: pixels may be anything, but
    /// a tensor model's only safe value of every type is zero (arbitrary
    /// bytes make NaNs, or bools that are neither).
    fn varied_input(&self) -> bool {
        matches!(self, Model::Classifier(_))
    }

    /// `len` bytes of warm-up input for this model (see [`warm_bytes`]).
    pub fn warm_bytes(&self, len: usize) -> Vec<u8> {
        warm_bytes(len, self.varied_input())
    }

    /// Uploads, runs and collects `batch` items laid out back to back in
    /// `bytes`, as a request would be: for warm-up and benchmarks.
    pub fn run(&self, pre: &Preprocessor, bytes: &[u8], batch: usize, k: usize) -> Result<Outputs, ModelError> {
        let input = pre.upload_bytes(bytes, batch)?;
        self.launch(input, k)?.collect(batch)
    }
}

/// Warm-up input: varied bytes (the kernels see data, not a constant), or
/// zeros where only zeros are valid (`varied` false).
fn warm_bytes(len: usize, varied: bool) -> Vec<u8> {
    if varied { (0..len).map(|i| (i * 31 % 251) as u8).collect() } else { vec![0; len] }
}

/// Each shape's warm-up input (varied bytes, or zeros) and capture input
/// (zeros), as `pre` uploads `item_len`-byte items.
fn warm_shapes(pre: &Preprocessor, shapes: &[u32], item_len: usize, varied: bool) -> Result<Vec<WarmShape>, ModelError> {
    shapes
        .iter()
        .map(|&n| {
            let warm = pre.upload_bytes(&warm_bytes(n as usize * item_len, varied), n as usize)?;
            let capture = pre.upload_bytes(&vec![0; n as usize * item_len], n as usize)?;
            Ok(WarmShape { warm, capture: Some(capture) })
        })
        .collect()
}

impl Launched {
    /// Waits for the batch and reads back the answers of its first `rows`
    /// items (the rest are padding).
    pub fn collect(self, rows: usize) -> Result<Outputs, ModelError> {
        match self {
            Launched::Classifier(launched) => {
                let mut top = launched.collect()?;
                top.truncate(rows);
                Ok(Outputs::TopK(top))
            }
            Launched::Tensors(launched) => launched.collect(rows).map(Outputs::Rows),
        }
    }
}
