//! The image classifier: an uploaded batch of normalised images in (see
//! [`crate::model::preprocess`]), top-k (class, probability) out.
//!
//! Everything model-specific (normalisation, layout, dtype) happens in the
//! host, on the model's device, so gateways only ever produce uint8 pixels.
//!
//! The module runs through [`crate::torch_shim`]: frozen and
//! `optimize_for_inference`d at load, under InferenceMode, and on a GPU
//! replayed from one CUDA graph per warmed batch shape (see
//! [`ImageClassifier::capture_graphs`]). Each optimisation that fails for a
//! model is skipped with a log line saying why; the model still serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::model::ModelError;
use crate::model::config::{ClassifierConfig, OptimizationConfig};
use crate::model::Input;
use crate::model::readback::ToHost;
use crate::torch_shim::stream::{CudaEvent, Priority, use_own_stream};
use crate::torch_shim::{self, CudaGraph, Module};

pub struct ImageClassifier {
    /// Shared with the warm-up after READY, which runs beside serving.
    module: Arc<Module>,
    /// Captured forward passes by batch size; a size not here runs eagerly.
    graphs: BTreeMap<i64, CudaGraph>,
    classes: i64,
    softmax: bool,
    /// Whether model.toml allows CUDA graphs, and the device has them.
    graphs_wanted: bool,
}

/// A batch whose forward pass and top-k have been queued on the device.
/// On a GPU the work runs asynchronously: the feeder thread can prepare the
/// next batch while this one computes, and only [`Launched::collect`]
/// waits for it.
pub struct Launched {
    /// The top-k values and indices.
    top: ToHost,
    k: i64,
}

/// What [`ImageClassifier::capture_graphs`] did, for the log and status.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GraphReport {
    pub captured: Vec<i64>,
    /// (batch size, why not) for each shape that runs eagerly.
    pub failed: Vec<(i64, String)>,
}

impl ImageClassifier {
    pub fn load(file: &Path, config: &ClassifierConfig, optimization: &OptimizationConfig, device: Device) -> Result<Self, ModelError> {
        let dtype = optimization.precision.kind();
        let cast = (dtype != Kind::Float).then_some(dtype);
        let mut module = Module::load(file, device, cast).map_err(|e| ModelError::Load(e.0))?;
        if optimization.freeze {
            match module.freeze(true) {
                Ok(()) => tracing::info!("module frozen and optimized for inference"),
                Err(e) => tracing::warn!(error = %e.0, "cannot freeze the module; it runs as saved"),
            }
        }
        let graphs_wanted = optimization.cuda_graphs && device.is_cuda();
        if graphs_wanted && !torch_shim::has_cuda_graphs() {
            tracing::warn!("this model-host was built without CUDA graph support; batches run eagerly");
        }
        Ok(Self {
            module: Arc::new(module),
            graphs: BTreeMap::new(),
            classes: config.output.labels.len() as i64,
            softmax: config.output.softmax,
            graphs_wanted: graphs_wanted && torch_shim::has_cuda_graphs(),
        })
    }

    pub fn classes(&self) -> usize {
        self.classes as usize
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
            let captured = sample(n as usize).and_then(|input| capture_one(&self.module, input, self.classes));
            self.record(n, captured, &mut report);
        }
        report
    }

    /// Warms up every batch shape of `shapes` side by side on up to
    /// `threads` threads, then captures each one's CUDA graph (see
    /// [`warm_and_capture`]); returns what was captured.
    pub fn warm_up_parallel(&mut self, shapes: Vec<WarmShape>, threads: usize) -> Result<GraphReport, ModelError> {
        let captured = std::sync::Mutex::new(Vec::new());
        let keep = |graph| captured.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(graph);
        warm_and_capture(&self.module, self.classes, self.graphs_wanted, shapes, threads, None, &keep)?;
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
    /// each captured graph with [`Self::adopt`] as [`LateWarmUp::poll`]
    /// hands it over.
    pub fn warm_up_later(
        &self,
        device: Device,
        make: impl FnOnce() -> Result<Vec<WarmShape>, ModelError> + Send + 'static,
        threads: usize,
    ) -> Result<LateWarmUp, ModelError> {
        let (module, classes, graphs_wanted) = (self.module.clone(), self.classes, self.graphs_wanted);
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
            warm_and_capture(&module, classes, graphs_wanted, shapes, threads, Some(device), &hand_over)
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

    /// Queues the forward pass and top-k on an uploaded batch, without
    /// waiting for them on a GPU.
    pub fn launch(&self, input: Input, k: usize) -> Result<Launched, ModelError> {
        let Input { tensors, batch: b } = input;
        let k = k.clamp(1, self.classes()) as i64;
        tch::no_grad(|| {
            let out = match self.graphs.get(&b) {
                Some(graph) => {
                    // Same stream as the replay: the copy waits for the last
                    // replay's reads of the static input, the replay for it.
                    for (fixed, new) in graph.inputs().iter().zip(&tensors) {
                        fixed.shallow_clone().f_copy_(new)?;
                    }
                    graph.replay().map_err(|e| ModelError::Graph(e.0))?.shallow_clone()
                }
                None => {
                    let borrowed: Vec<&Tensor> = tensors.iter().collect();
                    self.module.forward(&borrowed).map_err(|e| ModelError::Forward(e.0))?
                }
            };
            check_output(&out, b, self.classes)?;
            queue_answers(&out, self.softmax, k)
        })
    }
}

/// Queues the softmax (if the model wants one), the top-k and their copy
/// back to host memory, after the forward pass that makes `out`.
fn queue_answers(out: &Tensor, softmax: bool, k: i64) -> Result<Launched, ModelError> {
    // Softmax and top-k make new tensors: the graph's output may be
    // overwritten by the next replay as soon as they are queued.
    let scores = if softmax { out.f_softmax(1, Kind::Float)? } else { out.f_to_kind(Kind::Float)? };
    let (values, indices) = scores.f_topk(k, 1, true, true)?;
    Ok(Launched { top: ToHost::queue(vec![values, indices])?, k })
}

/// On a GPU, starts a thread that queues and collects the answers of a
/// made-up output of each batch shape, with k = 1 and the gateways'
/// default of 5, so that what comes after the forward pass is ready before
/// READY: CUDA loads the softmax, top-k and sort kernels on their first
/// launch, and the read-back takes page-locked blocks of each size from
/// libtorch's caching allocator. Both are process-wide, so a thread beside
/// the model file's load does it for the model thread. The warm-up passes
/// run the forward pass alone; without this the first batch after READY
/// took 47 ms on an H200, and at 256 clients the requests queued behind it
/// made p99 in the first second 3x the steady p99 (docs/benchmarks.md).
/// Join it before the warm-up captures graphs; an error only means the
/// first batches pay for it. None off the GPU.
pub fn prime_answers(config: &ClassifierConfig, dtype: Kind, device: Device, shapes: Vec<u32>) -> Option<std::thread::JoinHandle<()>> {
    if !device.is_cuda() {
        return None;
    }
    let (classes, softmax) = (config.output.labels.len() as i64, config.output.softmax);
    let prime = move || -> Result<(), ModelError> {
        let started = std::time::Instant::now();
        tch::no_grad(|| {
            for &n in &shapes {
                let out = Tensor::f_zeros([i64::from(n), classes], (dtype, device))?;
                for k in [1, 5] {
                    queue_answers(&out, softmax, k.min(classes))?.collect()?;
                }
            }
            Ok::<_, ModelError>(())
        })?;
        tracing::info!(shapes = shapes.len(), ms = started.elapsed().as_secs_f64() * 1e3, "softmax, top-k and read-back loaded");
        Ok(())
    };
    std::thread::Builder::new()
        .name("prime-answers".into())
        .spawn(move || {
            if let Err(e) = prime() {
                tracing::debug!(error = %e, "priming the answers' kernels failed; the first batches will load them");
            }
        })
        .ok()
}

/// A batch size and what capturing its graph gave.
pub type Captured = (i64, Result<CudaGraph, ModelError>);

/// The warm-up of the shapes left for after READY (see
/// [`ImageClassifier::warm_up_later`]).
pub struct LateWarmUp {
    captured: std::sync::mpsc::Receiver<Captured>,
    /// Gives how long the warm-up took.
    handle: Option<std::thread::JoinHandle<std::time::Duration>>,
}

/// What [`LateWarmUp::poll`] found.
pub enum LatePoll {
    /// Captured graphs to adopt; more may come.
    Captured(Vec<Captured>),
    /// The warm-up is over (after how long), all it captured handed over.
    Done(std::time::Duration),
}

impl LateWarmUp {
    /// The graphs captured since the last poll, without waiting.
    pub fn poll(&mut self) -> LatePoll {
        use std::sync::mpsc::TryRecvError;
        let mut captured = Vec::new();
        loop {
            match self.captured.try_recv() {
                Ok(one) => captured.push(one),
                Err(TryRecvError::Disconnected) if captured.is_empty() => return LatePoll::Done(self.join()),
                Err(_) => return LatePoll::Captured(captured),
            }
        }
    }

    /// Waits for the warm-up to end (on shutdown: its threads use the
    /// device, which must not be torn down under them).
    pub fn join(&mut self) -> std::time::Duration {
        self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

/// Warms up every batch shape of `shapes` side by side on up to `threads`
/// threads, and captures each one's CUDA graph (when `shapes` carries a
/// capture input and `capture` is set) on the same thread that warmed it,
/// handing each capture over as it is made.
///
/// Before READY (`after_ready` None) nothing else runs: the threads stay on
/// the default stream, every warm-up pass ends before the first capture,
/// and the captures follow one at a time. After READY (`after_ready` the
/// device) the model serves beside them: each thread takes a stream of its own
/// (libtorch's low-priority pool: the default priority, as the model
/// thread's) and captures each shape right after warming it, one
/// capture at a time across the threads, so that each shape is ready as
/// soon as it can be.
///
/// Why threads: on a GPU the first pass of a batch shape costs 0.15-0.25
/// s of CPU (cuDNN's per-shape set-up for every convolution:
/// docs/benchmarks.md, "Ready in 1.5 s"), and those costs run side by
/// side: 12 ResNet-50 shapes took 2.8 s one after another and 0.8 s on
/// 4 threads on an H200. Why capture on the warming thread: libtorch
/// keeps cuDNN's execution plans per thread, so a capture on any other
/// thread would pay the set-up again (measured: 1.0 s for 12 shapes).
fn warm_and_capture(
    module: &Module,
    classes: i64,
    capture: bool,
    shapes: Vec<WarmShape>,
    threads: usize,
    after_ready: Option<Device>,
    hand_over: &(dyn Fn(Captured) + Sync),
) -> Result<(), ModelError> {
    let threads = threads.clamp(1, shapes.len().max(1));
    let mut shares: Vec<Vec<WarmShape>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, shape) in shapes.into_iter().enumerate() {
        shares[i % threads].push(shape);
    }
    let all_warm = std::sync::Barrier::new(threads);
    let one_capture_at_a_time = std::sync::Mutex::new(());
    let capture_one_at_a_time = |shape: WarmShape| {
        if let (true, Some(input)) = (capture, shape.capture) {
            let _one_at_a_time = one_capture_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            hand_over((shape.warm.batch, capture_one(module, input, classes)));
        }
    };
    let worker = |share: Vec<WarmShape>| -> Result<(), ModelError> {
        if let Some(device) = after_ready {
            use_own_stream(device, Priority::Low).map_err(|e| ModelError::Stream(e.0))?;
            for shape in share {
                warm_one(module, &shape.warm, classes)?;
                capture_one_at_a_time(shape);
            }
            return Ok(());
        }
        let warmed = share.iter().try_for_each(|s| warm_one(module, &s.warm, classes));
        // Every thread reaches the barrier, failed or not.
        all_warm.wait();
        warmed?;
        share.into_iter().for_each(capture_one_at_a_time);
        Ok(())
    };
    let results: Vec<Result<(), ModelError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(i, share)| std::thread::Builder::new().name(format!("warm-up-{i}")).spawn_scoped(scope, || worker(share)))
            .collect();
        workers
            .into_iter()
            .map(|w| match w {
                Ok(handle) => handle.join().unwrap_or_else(|_| Err(ModelError::Forward("a warm-up thread panicked".into()))),
                Err(e) => Err(ModelError::Forward(format!("spawning a warm-up thread: {e}"))),
            })
            .collect()
    });
    results.into_iter().collect()
}

/// One batch shape for [`ImageClassifier::warm_up_parallel`] and
/// [`ImageClassifier::warm_up_later`].
pub struct WarmShape {
    /// A batch for the eager warm-up pass.
    pub warm: Input,
    /// The graph's static input, laid out as the preprocessor lays out a
    /// batch of this shape; None: no graph for this shape.
    pub capture: Option<Input>,
}

/// One eager pass: forward, check the output's shape, wait for the device.
fn warm_one(module: &Module, input: &Input, classes: i64) -> Result<(), ModelError> {
    let started = std::time::Instant::now();
    let borrowed: Vec<&Tensor> = input.tensors.iter().collect();
    let out = module.forward(&borrowed).map_err(|e| ModelError::Forward(e.0))?;
    check_output(&out, input.batch, classes)?;
    // Reading one value back waits for the pass to finish on the device.
    out.f_sum(Kind::Float)?.f_double_value(&[])?;
    tracing::info!(batch = input.batch, ms = started.elapsed().as_secs_f64() * 1e3, "warm-up pass");
    Ok(())
}

/// Captures one batch shape's forward pass over `input` as its static
/// input, and checks what a replay gives.
fn capture_one(module: &Module, input: Input, classes: i64) -> Result<CudaGraph, ModelError> {
    let n = input.batch;
    let graph = CudaGraph::capture(module, input.tensors, 1).map_err(|e| ModelError::Graph(e.0))?;
    check_output(graph.replay().map_err(|e| ModelError::Graph(e.0))?, n, classes)?;
    Ok(graph)
}

fn check_output(out: &Tensor, batch: i64, classes: i64) -> Result<(), ModelError> {
    let size = out.size();
    if size != [batch, classes] {
        return Err(ModelError::OutputShape { got: size, batch, classes });
    }
    Ok(())
}

impl Launched {
    /// Waits for the batch and reads its top-k back: one row per image,
    /// padding rows included.
    pub fn collect(self) -> Result<Vec<Vec<(u32, f32)>>, ModelError> {
        let Launched { top, k } = self;
        let [values, indices] = <[Tensor; 2]>::try_from(top.wait()?).expect("queued as two tensors");
        let values = Vec::<f32>::try_from(values.f_flatten(0, -1)?)?;
        let indices = Vec::<i64>::try_from(indices.f_flatten(0, -1)?)?;
        Ok(values
            .chunks(k as usize)
            .zip(indices.chunks(k as usize))
            .map(|(v, i)| i.iter().zip(v).map(|(&i, &v)| (i as u32, v)).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::model::config as model_config;

    fn digits() -> (PathBuf, model_config::LoadedConfig) {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/digits"));
        assert!(dir.join("model.pt").exists(), "models/digits is missing: run scripts/setup first");
        let loaded = model_config::load(&dir).unwrap();
        (dir.join("model.pt"), loaded)
    }

    fn inputs(shapes: &[i64]) -> Vec<WarmShape> {
        let input = |n| Input { tensors: vec![Tensor::rand([n, 1, 32, 32], (Kind::Float, Device::Cpu))], batch: n };
        // A capture input too: off the GPU no graph is wanted, so it is unused.
        shapes.iter().map(|&n| WarmShape { warm: input(n), capture: Some(input(n)) }).collect()
    }

    #[test]
    fn warm_up_runs_every_shape_on_several_threads() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let mut model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        let report = model.warm_up_parallel(inputs(&[1, 2, 4, 8, 16, 32]), 3).unwrap();
        assert_eq!(report, GraphReport::default(), "no graphs off the GPU");
        // More threads than shapes, and no shapes at all, are fine too.
        model.warm_up_parallel(inputs(&[1, 2]), 8).unwrap();
        model.warm_up_parallel(Vec::new(), 4).unwrap();
    }

    /// The answers' priming runs on a GPU only (where it is checked to end
    /// and leave the answers' path working); a CPU loads nothing lazily.
    #[test]
    fn the_answers_path_is_primed_on_a_gpu_and_left_working() {
        let (_, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        assert!(prime_answers(config, Kind::Float, Device::Cpu, vec![1, 8]).is_none());
        if !tch::Cuda::is_available() {
            return;
        }
        prime_answers(config, Kind::Half, Device::Cuda(0), vec![1, 8]).expect("a thread on a GPU").join().unwrap();
        let out = Tensor::rand([8, 10], (Kind::Half, Device::Cuda(0)));
        let rows = queue_answers(&out, true, 5).unwrap().collect().unwrap();
        assert_eq!((rows.len(), rows[0].len()), (8, 5));
    }

    /// Why two answers to the same pixels agree only to rounding (the
    /// Triton client checks compare them with a tolerance of 1e-6): the
    /// batcher puts a request in whatever batch is forming, at whatever row,
    /// and libtorch's CPU forward pass rounds a row by its place.
    #[test]
    fn an_images_answer_depends_on_its_batch_only_by_rounding() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        tch::manual_seed(7);
        let batch = Tensor::rand([8, 1, 32, 32], (Kind::Float, Device::Cpu));
        let answers = |x: Tensor| {
            let b = x.size()[0];
            let rows = model.launch(Input { tensors: vec![x], batch: b }, 10).unwrap().collect().unwrap();
            rows.into_iter().map(|mut row| {
                row.sort_by_key(|&(class, _)| class);
                row.into_iter().map(|(_, p)| p).collect::<Vec<f32>>()
            }).collect::<Vec<_>>()
        };
        let alone = answers(batch.narrow(0, 3, 1));
        let in_order = answers(batch.shallow_clone());
        let reversed = answers(batch.flip([0]));
        for other in [&in_order[3], &reversed[4]] {
            let worst = alone[0].iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-6, "row 3 alone and in a batch differ by {worst}");
        }
    }

    #[test]
    fn warm_up_on_threads_still_checks_each_output() {
        let (file, loaded) = digits();
        let mut config = loaded.config.classifier().unwrap().clone();
        config.output.labels.pop();
        let mut model = ImageClassifier::load(&file, &config, &loaded.config.optimization, Device::Cpu).unwrap();
        let err = model.warm_up_parallel(inputs(&[1, 4, 8]), 2).unwrap_err();
        assert!(matches!(err, ModelError::OutputShape { classes: 9, .. }), "{err:?}");
    }

    /// Polls until the warm-up after READY is over; what it handed over.
    fn poll_to_the_end(late: &mut LateWarmUp) -> Vec<Captured> {
        let mut all = Vec::new();
        loop {
            match late.poll() {
                LatePoll::Captured(graphs) => all.extend(graphs),
                LatePoll::Done(_) => return all,
            }
            std::thread::yield_now();
        }
    }

    /// The warm-up after READY runs beside the model (on the CPU it warms
    /// and captures nothing: the mechanism, not the graphs), and ends
    /// whether its inputs could be made or not; the model serves
    /// meanwhile from its own thread.
    #[test]
    fn the_warm_up_after_ready_runs_beside_serving_and_ends() {
        let (file, loaded) = digits();
        let config = loaded.config.classifier().unwrap();
        let model = ImageClassifier::load(&file, config, &loaded.config.optimization, Device::Cpu).unwrap();
        let (warming, finish) = (std::sync::Arc::new(std::sync::Barrier::new(2)), std::sync::Arc::new(std::sync::Barrier::new(2)));
        let (w, f) = (warming.clone(), finish.clone());
        let mut late = model
            .warm_up_later(Device::Cpu, move || {
                w.wait();
                f.wait();
                Ok(inputs(&[2, 8, 16]))
            }, 2)
            .unwrap();
        // Its thread is in `make`: a batch runs and nothing is handed over.
        warming.wait();
        let rows = model.launch(Input { tensors: vec![Tensor::rand([3, 1, 32, 32], (Kind::Float, Device::Cpu))], batch: 3 }, 2).unwrap().collect().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(matches!(late.poll(), LatePoll::Captured(graphs) if graphs.is_empty()));
        finish.wait();
        assert!(poll_to_the_end(&mut late).is_empty(), "no graphs off the GPU");

        let mut failing = model.warm_up_later(Device::Cpu, || Err(ModelError::Forward("no inputs".into())), 2).unwrap();
        assert!(poll_to_the_end(&mut failing).is_empty());
    }
}
