//! One optimisation path for every kind of model: the module loaded
//! through [`crate::torch_shim`], cast to model.toml's precision, frozen and
//! `optimize_for_inference`d, run under InferenceMode, and on a GPU
//! replayed from one CUDA graph per warmed batch shape. Where model.toml
//! says `freeze_after_ready`, the freeze comes after READY: the model
//! serves as loaded and cast until its frozen copy takes over, its graphs
//! replacing the first ones shape by shape. Each optimisation
//! that fails for a model is skipped with a log line saying why; the model
//! still serves. A classifier and a tensor (or vision) model differ only
//! in what they do with the outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::model::config::OptimizationConfig;
use crate::model::frozen_cache;
use crate::model::warm_up::{Captured, GraphReport, Late, LateWarmUp, OutputCheck, WarmShape, WarmUpTime, warm_and_capture};
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
    /// Loaded unfrozen, to be frozen after READY (see [`freezes_after_ready`]).
    freeze_pending: bool,
    /// Until the frozen copy's graphs have replaced all of them: the module
    /// as loaded, whose weights the first graphs read (a graph holds no
    /// reference to the tensors it reads), and the shapes still replayed
    /// from those graphs.
    loaded: Option<(Arc<Module>, BTreeSet<i64>)>,
    /// Graphs replaced by the frozen copy's, kept until no batch can be
    /// using them (see [`Self::drop_retired`]).
    retired: Vec<CudaGraph>,
}

/// Whether the module is loaded unfrozen and frozen after READY: asked
/// for (`freeze` and `freeze_after_ready`), and not through the
/// frozen-module cache (its entry is frozen already).
pub fn freezes_after_ready(optimization: &OptimizationConfig, cache_configured: bool) -> bool {
    optimization.freeze && optimization.freeze_after_ready && !cache_configured
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
        let cache = frozen_cache::configured();
        let freeze_pending = freezes_after_ready(optimization, cache.is_some());
        let loaded = match (optimization.freeze, cache) {
            _ if freeze_pending => frozen_cache::load_cast(file, device, cast, progress).map(|(mut m, bytes)| {
                // Served only until its frozen copy is ready: planned as that
                // will be, without re-optimising a graph about to be frozen.
                m.plan_plainly();
                tracing::info!("the module is frozen after READY; until then it serves as loaded");
                (m, bytes)
            }),
            (true, Some(cache)) => cache.load(file, device, cast, progress),
            (true, None) => frozen_cache::load_and_freeze(file, device, cast, progress, None),
            (false, _) => frozen_cache::load_cast(file, device, cast, progress),
        };
        let (module, weight_bytes) = loaded.map_err(|e| ModelError::Load(e.0))?;
        let module = module.with_outputs(outputs);
        let graphs_wanted = optimization.cuda_graphs && device.is_cuda();
        if graphs_wanted && !torch_shim::has_cuda_graphs() {
            tracing::warn!("this model-host was built without CUDA graph support; batches run eagerly");
        }
        let graphs_wanted = graphs_wanted && torch_shim::has_cuda_graphs();
        let module = Arc::new(module);
        Ok(Self { module, graphs: BTreeMap::new(), graphs_wanted, check, weight_bytes, freeze_pending, loaded: None, retired: Vec::new() })
    }

    /// Whether the module is still to be frozen after READY.
    pub fn freeze_pending(&self) -> bool {
        self.freeze_pending
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
    /// that then starts `threads` workers (see [`warm_and_capture`]). Where
    /// the freeze is pending, that thread first freezes a copy of the
    /// module and hands it over, then `make(true)` builds every shape's
    /// input, to be captured again with the frozen module; else (or if the
    /// freeze fails) `make(false)` builds those left for after READY. Take
    /// what [`LateWarmUp::poll`](crate::model::warm_up::LateWarmUp::poll)
    /// hands over with [`Self::adopt`] and [`Self::adopt_frozen`].
    pub fn warm_up_later(
        &self,
        device: Device,
        make: impl FnOnce(bool) -> Result<Vec<WarmShape>, ModelError> + Send + 'static,
        threads: usize,
    ) -> Result<LateWarmUp, ModelError> {
        let (module, check, graphs_wanted, freeze) = (self.module.clone(), self.check.clone(), self.graphs_wanted, self.freeze_pending);
        let (send, captured) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        let warm = move || -> Result<(), ModelError> {
            // Freezing's own work on the device (fingerprints of constants)
            // goes on this stream too, beside the batches being served.
            use_own_stream(device, Priority::Low).map_err(|e| ModelError::Stream(e.0))?;
            let frozen = freeze.then(|| frozen_cache::frozen_copy(&module)).flatten().map(Arc::new);
            // The constants freezing made (folded, transposed weights) were
            // written on this stream: done before the model thread may run
            // the module on its own. If that wait fails the copy is not
            // handed over: the loaded module serves on, and the shapes left
            // for after READY still warm up.
            let frozen = frozen.filter(|_| match CudaEvent::wait_for_current_stream(device) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e.0, "cannot wait for the frozen module's constants; the module goes on serving as loaded");
                    false
                }
            });
            if let Some(frozen) = &frozen {
                drop(send.send(Late::Frozen(frozen.clone())));
            }
            let shapes = make(frozen.is_some())?;
            let module = frozen.unwrap_or(module);
            // The inputs were made on this thread's stream; the warm-up
            // threads read them on theirs.
            CudaEvent::wait_for_current_stream(device).map_err(|e| ModelError::Stream(e.0))?;
            // If the model thread has gone, nobody takes the graphs: they
            // are dropped, and the warm-up ends with its shapes.
            let hand_over = |graph| drop(send.send(Late::Graph(graph)));
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

    /// Serves the module frozen after READY from now on: batch shapes
    /// without a graph run it eagerly, and its graphs replace the loaded
    /// module's as [`Self::adopt`] takes them. The loaded module is kept
    /// while any of its graphs is left.
    pub fn adopt_frozen(&mut self, frozen: Arc<Module>) {
        let loaded = std::mem::replace(&mut self.module, frozen);
        self.freeze_pending = false;
        self.loaded = Some((loaded, self.graphs.keys().copied().collect()));
    }

    /// Drops the graphs the frozen module's replaced, and the loaded module
    /// once none of its graphs is left: call only once every batch
    /// launched before they were replaced is finished (one may still be
    /// reading a replaced graph's memory, or the loaded module's weights).
    pub fn drop_retired(&mut self) {
        self.retired.clear();
        if self.loaded.as_ref().is_some_and(|(_, shapes)| shapes.is_empty()) {
            self.loaded = None;
        }
    }

    fn record(&mut self, n: i64, captured: Result<CudaGraph, ModelError>, report: &mut GraphReport) {
        match captured {
            Ok(graph) => {
                if let Some(replaced) = self.graphs.insert(n, graph) {
                    self.retired.push(replaced);
                }
                if let Some((_, shapes)) = &mut self.loaded {
                    shapes.remove(&n);
                }
                report.captured.push(n);
            }
            Err(e) if self.graphs.contains_key(&n) => {
                tracing::warn!(batch = n, error = %e, "cannot capture a CUDA graph of the frozen module; this batch size keeps the graph it had");
                report.failed.push((n, e.to_string()));
            }
            Err(e) => {
                tracing::warn!(batch = n, error = %e, "cannot capture a CUDA graph; this batch size runs eagerly");
                report.failed.push((n, e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::*;
    use crate::model::warm_up::LatePoll;

    fn digits_file() -> PathBuf {
        let file = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits/model.pt"));
        assert!(file.exists(), "models/digits is missing: run scripts/setup first");
        file
    }

    fn batch(n: i64) -> Input {
        tch::manual_seed(n);
        Input { tensors: vec![Tensor::rand([n, 1, 32, 32], (Kind::Float, Device::Cpu))], batch: n }
    }

    #[test]
    fn the_freeze_comes_after_ready_when_asked_and_never_through_the_cache() {
        assert!(!freezes_after_ready(&OptimizationConfig::default(), false), "off by default");
        let on = OptimizationConfig { freeze_after_ready: true, ..OptimizationConfig::default() };
        assert!(freezes_after_ready(&on, false));
        assert!(!freezes_after_ready(&on, true), "the cache holds a frozen module");
        assert!(!freezes_after_ready(&OptimizationConfig { freeze: false, ..on }, false), "nothing to freeze");
    }

    /// The freeze after READY as a GPU runs it, on the CPU (where no graph
    /// is captured: the freeze, the hand-over and the swap): the frozen
    /// copy comes first, then every shape is warmed again with it; the
    /// loaded module serves meanwhile, and once adopted the frozen one
    /// answers as it did.
    #[test]
    fn a_module_frozen_after_ready_is_handed_over_and_answers_alike() {
        let later = OptimizationConfig { freeze_after_ready: true, ..OptimizationConfig::default() };
        let check: OutputCheck = Arc::new(|_, _| Ok(()));
        let mut module = OptimizedModule::load(&digits_file(), &later, Device::Cpu, OutputNames::One, check, &mut |_, _| {}).unwrap();
        assert!(module.freeze_pending());
        assert!(module.module.weight_bytes().unwrap() > 0);
        let before = module.forward(batch(4)).unwrap().remove(0);

        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = asked.clone();
        let make = move |all: bool| {
            record.lock().unwrap().push(all);
            Ok(vec![WarmShape { warm: batch(2), capture: None }, WarmShape { warm: batch(8), capture: None }])
        };
        let mut late = module.warm_up_later(Device::Cpu, make, 2).unwrap();
        let mut handed = Vec::new();
        loop {
            match late.poll() {
                LatePoll::Captured(more) => handed.extend(more),
                LatePoll::Done(_) => break,
            }
            // Serving goes on beside the freeze.
            assert_eq!(module.forward(batch(3)).unwrap()[0].size(), [3, 10]);
            std::thread::yield_now();
        }
        assert_eq!(*asked.lock().unwrap(), [true], "every shape is warmed again with the frozen module");
        assert_eq!(handed.len(), 1, "a frozen module, and no graph off the GPU");
        let Some(Late::Frozen(frozen)) = handed.pop() else { panic!("no frozen module handed over") };
        assert_eq!(frozen.weight_bytes().unwrap(), 0, "a frozen module's weights are constants, not parameters");

        module.adopt_frozen(frozen);
        assert!(!module.freeze_pending());
        let after = module.forward(batch(4)).unwrap().remove(0);
        let worst = (&after - &before).abs().max().double_value(&[]);
        assert!(worst < 1e-4, "the frozen module answers {worst} away from the loaded one");
        assert!(module.loaded.is_some(), "kept until no graph of it is left");
        module.drop_retired();
        assert!(module.loaded.is_none(), "no graph of the loaded module is left");
    }
}
