//! Warming up an [`OptimizedModule`](crate::model::optimized::OptimizedModule)'s
//! batch shapes and capturing their CUDA graphs: side by side on threads
//! before READY, and on threads and streams of their own beside serving
//! after it. The same for every kind of model: what a kind adds is its
//! [`OutputCheck`].

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::model::{Input, ModelError};
use crate::torch_shim::stream::{Priority, use_own_stream};
use crate::torch_shim::{CudaGraph, Module};

/// Checks a forward pass's outputs (in the declared order) for a batch of
/// the given size, before any client sees them: a classifier's logits
/// shape, a tensor model's every dtype and shape.
pub type OutputCheck = Arc<dyn Fn(&[Tensor], i64) -> Result<(), ModelError> + Send + Sync>;

/// What capturing did, for the log and status.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GraphReport {
    pub captured: Vec<i64>,
    /// (batch size, why not) for each shape that runs eagerly.
    pub failed: Vec<(i64, String)>,
}

/// A batch size and what capturing its graph gave.
pub type Captured = (i64, Result<CudaGraph, ModelError>);

/// What the warm-up after READY hands over to the model thread.
pub enum Late {
    /// The module frozen after READY, to serve from now on.
    Frozen(Arc<Module>),
    /// A batch shape's graph (of the frozen module, once one was handed over).
    Graph(Captured),
}

/// One batch shape to warm up.
pub struct WarmShape {
    /// A batch for the eager warm-up pass.
    pub warm: Input,
    /// The graph's static input, laid out as the preprocessor lays out a
    /// batch of this shape; None: no graph for this shape.
    pub capture: Option<Input>,
}

/// When a warm-up runs, and what that asks of it (see [`warm_and_capture`]).
pub(crate) enum WarmUpTime<'a> {
    /// Nothing else runs on the device but what `before_capture` joins,
    /// once, before the first capture.
    BeforeReady { before_capture: &'a (dyn Fn() + Sync) },
    /// The model serves on `Device` beside the warm-up.
    AfterReady(Device),
}

/// The warm-up of the shapes left for after READY (see
/// [`OptimizedModule::warm_up_later`](crate::model::optimized::OptimizedModule::warm_up_later)).
pub struct LateWarmUp {
    pub(crate) captured: std::sync::mpsc::Receiver<Late>,
    /// Gives how long the warm-up took.
    pub(crate) handle: Option<std::thread::JoinHandle<std::time::Duration>>,
}

/// What [`LateWarmUp::poll`] found.
pub enum LatePoll {
    /// A frozen module and captured graphs to adopt, in the order they
    /// came; more may come.
    Captured(Vec<Late>),
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
/// Before READY ([`WarmUpTime::BeforeReady`]) the threads stay on
/// the default stream, every warm-up pass ends before the first capture,
/// `before_capture` runs once (on one thread, the others waiting for it),
/// and the captures follow one at a time. After READY the model serves
/// beside them: each thread takes a stream of its own
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
pub(crate) fn warm_and_capture(
    module: &Module,
    check: &OutputCheck,
    capture: bool,
    shapes: Vec<WarmShape>,
    threads: usize,
    when: WarmUpTime,
    hand_over: &(dyn Fn(Captured) + Sync),
) -> Result<(), ModelError> {
    let threads = threads.clamp(1, shapes.len().max(1));
    let mut shares: Vec<Vec<WarmShape>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, shape) in shapes.into_iter().enumerate() {
        shares[i % threads].push(shape);
    }
    let all_warm = std::sync::Barrier::new(threads);
    let gate = std::sync::Once::new();
    let one_capture_at_a_time = std::sync::Mutex::new(());
    let capture_one_at_a_time = |shape: WarmShape| {
        if let (true, Some(input)) = (capture, shape.capture) {
            let _one_at_a_time = one_capture_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            hand_over((shape.warm.batch, capture_one(module, input, check)));
        }
    };
    let worker = |share: Vec<WarmShape>| -> Result<(), ModelError> {
        let before_capture = match when {
            WarmUpTime::BeforeReady { before_capture } => before_capture,
            WarmUpTime::AfterReady(device) => {
                use_own_stream(device, Priority::Low).map_err(|e| ModelError::Stream(e.0))?;
                for shape in share {
                    warm_one(module, &shape.warm, check)?;
                    capture_one_at_a_time(shape);
                }
                return Ok(());
            }
        };
        let warmed = share.iter().try_for_each(|s| warm_one(module, &s.warm, check));
        // Every thread reaches the barrier, failed or not.
        all_warm.wait();
        warmed?;
        gate.call_once(before_capture);
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

/// One eager pass: forward, check the outputs, wait for the device.
fn warm_one(module: &Module, input: &Input, check: &OutputCheck) -> Result<(), ModelError> {
    let started = std::time::Instant::now();
    let borrowed: Vec<&Tensor> = input.tensors.iter().collect();
    let outs = module.forward_all(&borrowed).map_err(|e| ModelError::Forward(e.0))?;
    check(&outs, input.batch)?;
    // Reading one value back waits for the pass (queued before it on the
    // same stream) to finish on the device.
    if let Some(first) = outs.first() {
        first.f_sum(Kind::Float)?.f_double_value(&[])?;
    }
    tracing::info!(batch = input.batch, ms = started.elapsed().as_secs_f64() * 1e3, "warm-up pass");
    Ok(())
}

/// Captures one batch shape's forward pass over `input` as its static
/// input, and checks what a replay gives.
fn capture_one(module: &Module, input: Input, check: &OutputCheck) -> Result<CudaGraph, ModelError> {
    let n = input.batch;
    let graph = CudaGraph::capture(module, input.tensors, 1).map_err(|e| ModelError::Graph(e.0))?;
    check(graph.replay().map_err(|e| ModelError::Graph(e.0))?, n)?;
    Ok(graph)
}
