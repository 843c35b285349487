//! One optimisation path for every kind of model: the module loaded
//! through [`crate::torch_shim`], cast to model.toml's precision, frozen and
//! `optimize_for_inference`d, run under InferenceMode, and on a GPU
//! replayed from one CUDA graph per warmed batch shape. Each optimisation
//! that fails for a model is skipped with a log line saying why; the model
//! still serves. A classifier and a tensor (or vision) model differ only
//! in what they do with the outputs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::model::config::OptimizationConfig;
use crate::model::frozen_cache;
use crate::model::warm_up::{Captured, GraphReport, LateWarmUp, OutputCheck, WarmShape, WarmUpTime, warm_and_capture};
use crate::model::{Input, ModelError};
use crate::torch_shim::stream::{CudaEvent, Priority, use_own_stream};
use crate::torch_shim::{self, CudaGraph, Module, OutputNames};

pub struct OptimizedModule {
    /// Shared with the warm-up after READY, which runs beside serving.
    module: Arc<Module>,
    /// Captured forward passes by batch size; a size not here runs eagerly.
    graphs: BTreeMap<i64, CudaGraph>,
    /// Whether model.toml allows CUDA graphs, and the device has them.
    graphs_wanted: bool,
    /// What every warm-up pass and capture is checked against.
    check: OutputCheck,
    /// Bytes of the weights on the device, counted at load (0 if the
    /// shim could not count them).
    pub weight_bytes: u64,
}

impl OptimizedModule {
    /// Loads `file` onto `device` as `optimization` says: cast to its
    /// precision, then frozen (through the frozen-module cache when the
    /// host has one). `progress` hears (bytes read, file size)
    /// as the file is read.
    pub fn load(
        file: &Path,
        optimization: &OptimizationConfig,
        device: Device,
        outputs: OutputNames,
        check: OutputCheck,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, ModelError> {
        let dtype = optimization.precision.kind();
        let cast = (dtype != Kind::Float).then_some(dtype);
        // Weights are counted before freezing, which folds them into the
        // graph (a cached frozen module's count was kept with it).
        let loaded = match (optimization.freeze, frozen_cache::configured()) {
            (true, Some(cache)) => cache.load(file, device, cast, progress),
            (true, None) => frozen_cache::load_and_freeze(file, device, cast, progress, None),
            (false, _) => Module::load_reporting(file, device, cast, progress).map(|m| {
                let bytes = frozen_cache::weight_bytes(&m);
                (m, bytes)
            }),
        };
        let (module, weight_bytes) = loaded.map_err(|e| ModelError::Load(e.0))?;
        let module = module.with_outputs(outputs);
        let graphs_wanted = optimization.cuda_graphs && device.is_cuda();
        if graphs_wanted && !torch_shim::has_cuda_graphs() {
            tracing::warn!("this model-host was built without CUDA graph support; batches run eagerly");
        }
        Ok(Self { module: Arc::new(module), graphs: BTreeMap::new(), graphs_wanted: graphs_wanted && torch_shim::has_cuda_graphs(), check, weight_bytes })
    }

    /// Queues the forward pass on an uploaded batch: a replay of its
    /// shape's graph, else eagerly. The outputs, in the declared order; a
    /// replay's are the graph's own, overwritten by the next replay, so
    /// read them (or copy them) in stream order before the next batch.
    pub fn forward(&self, input: Input) -> Result<Vec<Tensor>, ModelError> {
        let Input { tensors, batch } = input;
        match self.graphs.get(&batch) {
            Some(graph) => {
                // Same stream as the replay: the copy waits for the last
                // replay's reads of the static input, the replay for it.
                for (fixed, new) in graph.inputs().iter().zip(&tensors) {
                    fixed.shallow_clone().f_copy_(new)?;
                }
                let outs = graph.replay().map_err(|e| ModelError::Graph(e.0))?;
                Ok(outs.iter().map(Tensor::shallow_clone).collect())
            }
            None => {
                let borrowed: Vec<&Tensor> = tensors.iter().collect();
                self.module.forward_all(&borrowed).map_err(|e| ModelError::Forward(e.0))
            }
        }
    }

    /// Checks a forward pass's outputs as warm-up does.
    pub fn check(&self, outputs: &[Tensor], batch: i64) -> Result<(), ModelError> {
        (self.check)(outputs, batch)
    }

    /// Captures one CUDA graph per batch shape, each over a static input
    /// laid out as the preprocessor lays out a batch (`sample(n)` makes
    /// one). Call after warm-up: the kernels are chosen by then. A no-op
    /// off the GPU or when model.toml says `cuda_graphs = false`.
    pub fn capture_graphs(&mut self, shapes: &[u32], sample: impl Fn(usize) -> Result<Input, ModelError>) -> GraphReport {
        let mut report = GraphReport::default();
        if !self.graphs_wanted {
            return report;
        }
        for &n in shapes {
            let n = i64::from(n);
            if self.graphs.contains_key(&n) {
                // Captured already, by the warm-up's threads.
                report.captured.push(n);
                continue;
            }
            let captured = sample(n as usize).and_then(|input| {
                let graph = CudaGraph::capture(&self.module, input.tensors, 1).map_err(|e| ModelError::Graph(e.0))?;
                (self.check)(graph.replay().map_err(|e| ModelError::Graph(e.0))?, n)?;
                Ok(graph)
            });
            self.record(n, captured, &mut report);
        }
        report
    }

    /// Warms up every batch shape of `shapes` side by side on up to
    /// `threads` threads, then runs `before_capture` once and captures each
    /// one's CUDA graph (see [`warm_and_capture`]); returns what was
    /// captured.
    pub fn warm_up_parallel(&mut self, shapes: Vec<WarmShape>, threads: usize, before_capture: &(dyn Fn() + Sync)) -> Result<GraphReport, ModelError> {
        let captured = std::sync::Mutex::new(Vec::new());
        let keep = |graph| captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(graph);
        warm_and_capture(&self.module, &self.check, self.graphs_wanted, shapes, threads, WarmUpTime::BeforeReady { before_capture }, &keep)?;
        let mut report = GraphReport::default();
        for (n, graph) in captured.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            self.record(n, graph, &mut report);
        }
        report.captured.sort_unstable();
        Ok(report)
    }

    /// Starts warming up and capturing more batch shapes on threads of
    /// their own, each on a CUDA stream of its own on `device`, while
    /// the model serves: `make` builds the shapes' inputs, on the thread
    /// that then starts `threads` workers (see [`warm_and_capture`]). Take
    /// each captured graph with [`Self::adopt`] as
    /// [`LateWarmUp::poll`](crate::model::warm_up::LateWarmUp::poll) hands it over.
    pub fn warm_up_later(
        &self,
        device: Device,
        make: impl FnOnce() -> Result<Vec<WarmShape>, ModelError> + Send + 'static,
        threads: usize,
    ) -> Result<LateWarmUp, ModelError> {
        let (module, check, graphs_wanted) = (self.module.clone(), self.check.clone(), self.graphs_wanted);
        let (send, captured) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        let warm = move || -> Result<(), ModelError> {
            use_own_stream(device, Priority::Low).map_err(|e| ModelError::Stream(e.0))?;
            let shapes = make()?;
            // The inputs were made on this thread's stream; the warm-up
            // threads read them on theirs. Waiting for this stream alone,
            // not the device, leaves the batches being served alone.
            if let Some(made) = CudaEvent::record(device).map_err(|e| ModelError::Stream(e.0))? {
                made.synchronize().map_err(|e| ModelError::Stream(e.0))?;
            }
            // If the model thread has gone, nobody takes the graphs: they
            // are dropped, and the warm-up ends with its shapes.
            let hand_over = |graph| drop(send.send(graph));
            warm_and_capture(&module, &check, graphs_wanted, shapes, threads, WarmUpTime::AfterReady(device), &hand_over)
        };
        let handle = std::thread::Builder::new()
            .name("warm-up-late".into())
            .spawn(move || {
                if let Err(e) = warm() {
                    tracing::warn!(error = %e, "warming up after READY failed; batches go on padding to the shapes ready before it");
                }
                started.elapsed()
            })
            .map_err(|e| ModelError::Forward(format!("spawning the warm-up thread: {e}")))?;
        Ok(LateWarmUp { captured, handle: Some(handle) })
    }

    /// Takes a graph captured after READY; its batch size if it replays
    /// from now on (else it runs eagerly, with a log line saying why).
    pub fn adopt(&mut self, (n, captured): Captured) -> Option<i64> {
        let mut report = GraphReport::default();
        self.record(n, captured, &mut report);
        report.captured.first().copied()
    }

    fn record(&mut self, n: i64, captured: Result<CudaGraph, ModelError>, report: &mut GraphReport) {
        match captured {
            Ok(graph) => {
                self.graphs.insert(n, graph);
                report.captured.push(n);
            }
            Err(e) => {
                tracing::warn!(batch = n, error = %e, "cannot capture a CUDA graph; this batch size runs eagerly");
                report.failed.push((n, e.to_string()));
            }
        }
    }
}
