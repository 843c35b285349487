//! The model's own thread: load once, warm up, then run batches forever.
//!
//! Inference runs here and not on tokio's workers: a forward pass blocks
//! for milliseconds (seconds on a large CPU batch), and the connection
//! tasks must keep answering leases and cancels meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use std::time::Duration;

use crate::config::DeviceChoice;
use crate::pipeline::batch::{self, Running};
use crate::pipeline::batcher::Batcher;
use crate::pipeline::feeder::{Fed, Feeder};
use crate::counters::Counters;
use crate::model::device;
use crate::error::HostError;
use crate::pipeline::jobs::Queues;
use crate::pipeline::jpeg_stage;
use crate::pipeline::spin;
use crate::notify::Notifier;
use crate::model::Model;
use crate::model::jpeg_input::{JpegInput, open_decoders};
use crate::model::preprocess::Preprocessor;
use crate::model::classifier::prime_answers;
use crate::model::warm_up::{Late, LatePoll, LateWarmUp};
use crate::model::config::{LoadedConfig, shapes_before_ready};
use crate::pipeline::ready_shapes::ReadyShapes;
use crate::startup::PhaseReporter;

pub struct ModelThread {
    pub model: LoadedConfig,
    pub device: DeviceChoice,
    pub cpu_threads: u32,
    /// On a GPU, how long the feeder and this thread poll for their next
    /// message before sleeping (see [`crate::pipeline::spin`]).
    pub spin: Duration,
    /// Threads of the warm-up after READY (`--warm-up-threads-after-ready`).
    pub warm_up_threads_after_ready: usize,
    /// GPU memory (MiB) to require free beyond the weights before loading.
    pub load_headroom_mb: u64,
    pub reporter: PhaseReporter,
    pub counters: Arc<Counters>,
    /// Taken by the feeder and the decode stage once the model is ready.
    pub queues: Option<Queues>,
    pub notifier: Notifier,
    /// libnvjpeg's path, if given (`--nvjpeg`).
    pub nvjpeg: Option<std::path::PathBuf>,
    /// Told the resolved device once known (for the handshake).
    pub device_ready: tokio::sync::oneshot::Sender<DeviceReady>,
}

/// What the handshake needs from the model thread, before the weights load.
pub struct DeviceReady {
    /// e.g. "cpu" or "cuda:0".
    pub name: String,
    /// Set when the host decodes JPEGs (nvJPEG opened on the device).
    pub host_decode: Option<protocol::HostDecode>,
}

/// The model thread's side of a started host.
struct Started {
    model: Model,
    pre: Preprocessor,
    device: tch::Device,
    /// The decode stage's decoders, when the host decodes JPEGs.
    jpeg: Option<Vec<JpegInput>>,
    /// The batch shapes ready at READY; the rest warm up after it.
    ready: Vec<u32>,
}

impl ModelThread {
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || self.run())
            .expect("spawning a thread only fails when the process is out of resources")
    }

    fn run(mut self) {
        let Started { mut model, pre, device, jpeg, ready: before_ready } = match self.start() {
            Ok(loaded) => loaded,
            Err(e) => return self.reporter.failed(e.to_string()),
        };
        let batching = &self.model.config.batching;
        // The feeder and the decode stage own the job queue from here on.
        let Some(Queues { ready, jpegs, decoded }) = self.queues.take() else {
            return self.reporter.failed("the model thread was started without its job queue".into());
        };
        // Without decoders no JPEG comes (none was offered), and `decoded`
        // must go now: it would hold the batcher's queue open past the last
        // connection, and the thread would never see it close.
        let mut stage = match jpeg {
            Some(decoders) => Some(jpeg_stage::spawn(decoders, jpegs, decoded, self.counters.clone())),
            None => {
                drop((jpegs, decoded));
                None
            }
        };
        let shapes = batching.shapes();
        let late: Vec<u32> = shapes.iter().copied().filter(|n| !before_ready.contains(n)).collect();
        let ready_shapes = Arc::new(ReadyShapes::new(before_ready));
        let mut warming = self.warm_up_later(&model, device, &late);
        let (ask, asks) = std::sync::mpsc::sync_channel(1);
        let (answer, answers) = std::sync::mpsc::sync_channel(1);
        // On the CPU a polling thread would take a core from the forward pass.
        let spin = if device.is_cuda() { self.spin } else { Duration::ZERO };
        Feeder {
            batcher: Batcher::new(batching.policy(), spin),
            jobs: ready,
            pre,
            slot_len: self.model.config.item_input_bytes(),
            shapes: ready_shapes.clone(),
            counters: self.counters.clone(),
            // On a GPU as measured on the H100 (libtorch's default there);
            // on the CPU one, so the forward pass keeps the cores.
            cpu_threads: if device.is_cuda() { 0 } else { 1 },
        }
        .spawn(asks, answer);
        // The watchdog is pinged from this loop and nowhere else: if a
        // forward pass hangs, the pings stop and systemd restarts the host.
        let tick = self.notifier.watchdog_interval().unwrap_or(Duration::from_secs(1));
        // On a GPU the next batch is queued on the device before this one's
        // answers are waited for (its read-back is queued ahead of it), so
        // the GPU goes from one batch straight to the next. On a CPU
        // "launching" is the whole forward pass, which must not hold back
        // the answers of the batch before it.
        let pipelined = device.is_cuda();
        // The batch on the device whose answers are not yet sent.
        let mut running: Option<Running> = None;
        loop {
            if let Some(late) = &mut warming
                && adopt_late_graphs(late, &mut model, &ready_shapes, &self.counters)
            {
                warming = None;
            }
            // The other decoders open once no capture is left to come: an
            // opening's cudaMalloc beside a capture breaks the capture.
            if warming.is_none()
                && let Some(stage) = stage.take()
            {
                self.open_more_decoders(stage, device);
            }
            let Some(current) = running.take() else {
                // Nothing on the device: what the frozen module replaced can
                // go now, not only after the next batch.
                model.drop_retired();
                if ask.send(tick).is_err() {
                    break;
                }
                match spin::recv(&answers, spin) {
                    Some(Fed::Batch(uploaded)) => running = Some(batch::launch(&model, uploaded)),
                    Some(Fed::Idle) => self.notifier.watchdog_ping(),
                    None => break,
                }
                continue;
            };
            // While it runs, the feeder forms the next batch from what is
            // due now (wait zero) and uploads it. Formed only now, one batch
            // ahead, so that as many requests as possible share it.
            let asked = ask.send(Duration::ZERO).is_ok();
            let unanswered = if pipelined {
                Some(current)
            } else {
                batch::finish(current, &self.counters);
                None
            };
            let fed = if asked { spin::recv(&answers, spin) } else { None };
            let closed = fed.is_none();
            running = match fed {
                Some(Fed::Batch(uploaded)) => Some(batch::launch(&model, uploaded)),
                _ => None,
            };
            if let Some(current) = unanswered {
                batch::finish(current, &self.counters);
            }
            // The graphs the frozen module's replaced (and the loaded module,
            // once none of its graphs is left) go once every batch launched
            // before they were replaced is finished: they are replaced only
            // at the top of this loop, and `running` was launched after it.
            model.drop_retired();
            self.notifier.watchdog_ping();
            if closed {
                break;
            }
        }
        tracing::info!("job queue closed; model thread exits");
        if let Some(mut late) = warming {
            late.join();
        }
        // Not dropped: freeing device memory as the process exits races the
        // CUDA allocator's teardown ("invalid device pointer" on an H200).
        std::mem::forget(model);
    }

    /// Device, weights, warm-up: each a reported phase with its timing.
    fn start(&mut self) -> Result<Started, HostError> {
        let device = device::resolve(self.device)?;
        device::set_threads(device, self.cpu_threads);
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(self.model.config.optimization.cudnn_benchmark);
        }
        let optimization = &self.model.config.optimization;
        let frozen_after_ready = crate::model::optimized::freezes_after_ready(optimization, crate::model::frozen_cache::configured().is_some());
        device::check_room(device, &self.model.model_file, frozen_after_ready, self.load_headroom_mb)?;
        let name = device::name(device);
        // nvJPEG's first decoder opens beside the weights' load, not before
        // it (0.4-0.5 s to open and warm one on an H200; the others open
        // after READY). Gateways learn of the decoder in the handshake, so
        // that waits for it; without one it goes at once.
        let opening = self.open_jpeg(device);
        if opening.is_none() {
            self.send_device_ready(&name, false);
        }
        self.reporter.device_ready(&name);

        let kind = self.model.config.optimization.precision.kind();
        let primed = device::prime_libraries(device, kind);
        let answers = self.model.config.classifier().and_then(|c| prime_answers(c, kind, device, self.model.config.batching.shapes()));
        let path = &self.model.model_file;
        let load_error = |source| HostError::ModelLoad { path: path.display().to_string(), source };
        let reporter = &mut self.reporter;
        let mut model = Model::load_reporting(path, &self.model.config, device, &mut |read, total| reporter.loading(read, total)).map_err(load_error)?;
        let pre = Preprocessor::new(&self.model.config, device).map_err(|e| load_error(e.into()))?;
        let loads = self.counters.model_loads.fetch_add(1, Relaxed) + 1;
        self.counters.model_bytes.store(model.weight_bytes(), Relaxed);
        tracing::info!(model = %path.display(), loads, weight_bytes = model.weight_bytes(), "model loaded");
        self.reporter.weights_loaded();
        for primed in [primed, answers].into_iter().flatten() {
            let _ = primed.join();
        }
        // nvJPEG's opening is joined after the warm-up's eager passes (on a
        // segmenter it took 1.27 s, to the weights' 0.57 s: the passes fit
        // beside it) and before the first CUDA graph capture: a capture
        // fails (and may poison the context) if another thread calls
        // cudaMalloc meanwhile, as nvJPEG's opening does.
        let (opening, opened) = (std::sync::Mutex::new(opening), std::sync::Mutex::new(None));
        let join_jpeg = || {
            let handle = opening.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(handle) = handle {
                *opened.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.join().ok().flatten());
            }
        };
        let ready = self.shapes_before_ready(device);
        let warmed = self.warm_up(&mut model, &pre, device, &ready, &join_jpeg);
        join_jpeg();
        let opened = opened.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_opening = opened.is_some();
        let jpeg = opened.flatten();
        if was_opening {
            self.send_device_ready(&name, jpeg.is_some());
        }
        warmed?;
        self.capture_graphs(&mut model, &pre, &ready);
        self.reporter.ready();
        Ok(Started { model, pre, device, jpeg, ready })
    }

    /// Tells the handshake the device, and whether the host decodes JPEGs
    /// (`decoding`: nvJPEG is open); once.
    fn send_device_ready(&mut self, name: &str, decoding: bool) {
        let host_decode = if decoding { self.model.config.decode.offer() } else { None };
        let ready = DeviceReady { name: name.to_string(), host_decode };
        let _ = std::mem::replace(&mut self.device_ready, tokio::sync::oneshot::channel().0).send(ready);
    }

    /// Starts opening nvJPEG on a thread of its own when model.toml asks
    /// the host to decode; where it cannot (no GPU, no library), a log
    /// line says why and gateways decode.
    fn open_jpeg(&self, device: tch::Device) -> Option<std::thread::JoinHandle<Option<Vec<JpegInput>>>> {
        let config = &self.model.config;
        let (input, resize) = config.image_input().map(|(input, resize)| (input.clone(), resize))?;
        let decode = config.decode;
        decode.offer()?;
        if !device.is_cuda() {
            tracing::warn!(decode = ?decode.place, why = "the model runs on the CPU; nvJPEG needs a CUDA device", "host-side JPEG decode off; gateways decode every image");
            return None;
        }
        let library = self.nvjpeg.clone();
        let started = Instant::now();
        let open = move || match open_decoders(&input, resize, &decode.host, 1, device, library.as_deref()) {
            Ok(jpeg) => {
                tracing::info!(decode = ?decode.place, ms = started.elapsed().as_secs_f64() * 1e3, "gateways may send JPEGs to decode here");
                Some(jpeg)
            }
            Err(why) => {
                tracing::warn!(decode = ?decode.place, %why, "host-side JPEG decode off; gateways decode every image");
                None
            }
        };
        std::thread::Builder::new().name("nvjpeg-open".into()).spawn(open).ok()
    }

    /// Opens the decoders model.toml asks for beyond the one open at READY,
    /// on a thread of its own, and adds them to the running stage: READY
    /// waits for one decoder only (four opened side by side took 2.2 s on
    /// an H100, one 0.4-0.5 s on an H200). The stage's hold on the
    /// batcher's queue goes with that thread.
    fn open_more_decoders(&self, mut stage: jpeg_stage::Stage, device: tch::Device) {
        let config = &self.model.config;
        let wanted = config.decode.host.threads;
        let Some((input, resize)) = config.image_input().map(|(input, resize)| (input.clone(), resize)) else { return };
        if wanted <= stage.threads() {
            return;
        }
        let (limits, library) = (config.decode.host, self.nvjpeg.clone());
        let open = move || {
            let started = Instant::now();
            match open_decoders(&input, resize, &limits, wanted - stage.threads(), device, library.as_deref()) {
                Ok(more) => {
                    stage.add(more);
                    tracing::info!(threads = stage.threads(), ms = started.elapsed().as_secs_f64() * 1e3, "more JPEG decoders open");
                }
                Err(why) => tracing::warn!(%why, threads = stage.threads(), "no more JPEG decoders; decoding on those open"),
            }
        };
        if let Err(e) = std::thread::Builder::new().name("nvjpeg-open".into()).spawn(open) {
            tracing::warn!(error = %e, "cannot start opening more JPEG decoders");
        }
    }

    /// On a GPU, one CUDA graph per batch shape of `shapes` (after warm-up,
    /// so the kernels are chosen); the shapes that could not be captured
    /// run eagerly.
    fn capture_graphs(&self, model: &mut Model, pre: &Preprocessor, shapes: &[u32]) {
        let started = Instant::now();
        let item_len = self.model.config.item_input_bytes();
        let report = model.capture_graphs(pre, shapes, item_len);
        if !report.captured.is_empty() || !report.failed.is_empty() {
            let eager: Vec<i64> = report.failed.iter().map(|(n, _)| *n).collect();
            tracing::info!(captured = ?report.captured, eager = ?eager, ms = started.elapsed().as_secs_f64() * 1e3, "CUDA graphs");
        }
        self.counters.add_graphs(&report.captured);
    }

    /// Runs every batch shape the host will use, twice (the first run of a
    /// shape pays for kernel selection and allocation; once when a CUDA
    /// graph capture follows, which runs its own), and checks the
    /// outputs (a classifier's shape; a tensor model's every output's dtype
    /// and shape) against the config before any client sees them.
    /// `before_capture` runs before the first CUDA graph is captured.
    fn warm_up(&self, model: &mut Model, pre: &Preprocessor, device: tch::Device, sizes: &[u32], before_capture: &(dyn Fn() + Sync)) -> Result<(), HostError> {
        // A model bound for CUDA graphs gets one eager pass per shape:
        // the capture runs another itself before it records.
        // Side by side only when each shape is then replayed from a graph:
        // cuDNN's set-up is kept per thread, so a shape run eagerly on the
        // model thread must be warmed there.
        if self.replays_graphs(device) {
            return self.warm_up_side_by_side(model, pre, sizes, before_capture);
        }
        let passes = 2;
        let total = passes * sizes.len() as u32;
        let item_len = self.model.config.item_input_bytes();
        for (step, &n) in sizes.iter().cycle().take(total as usize).enumerate() {
            self.reporter.warming(step as u32, total);
            let started = Instant::now();
            let len = n as usize * item_len;
            let bytes = model.warm_bytes(len);
            model.run(pre, &bytes, n as usize, 1)?;
            tracing::info!(batch = n, ms = started.elapsed().as_secs_f64() * 1e3, "warm-up pass");
        }
        Ok(())
    }
}

impl ModelThread {
    /// Whether each batch shape is warmed up on a thread of its own and
    /// then replayed from a CUDA graph: any kind on a GPU, unless
    /// model.toml says `cuda_graphs = false`.
    fn replays_graphs(&self, device: tch::Device) -> bool {
        device.is_cuda() && self.model.config.optimization.cuda_graphs && crate::torch_shim::has_cuda_graphs()
    }

    /// The batch shapes to warm up before READY: all of them, or where
    /// shapes replay from graphs and model.toml allows it, four (see
    /// [`crate::model::config::shapes_before_ready`]).
    fn shapes_before_ready(&self, device: tch::Device) -> Vec<u32> {
        let shapes = self.model.config.batching.shapes();
        if self.replays_graphs(device) && self.model.config.optimization.warm_up_after_ready {
            shapes_before_ready(&shapes)
        } else {
            shapes
        }
    }

    /// Starts the warm-up of the `late` shapes beside serving, if any.
    fn warm_up_later(&self, model: &Model, device: tch::Device, late: &[u32]) -> Option<LateWarmUp> {
        let freeze = model.freeze_pending();
        if late.is_empty() && !freeze {
            return None;
        }
        let threads = self.warm_up_threads_after_ready;
        tracing::info!(shapes = ?late, threads, freeze, "warming up after READY; until a shape is ready, its batches pad to the next ready one");
        match model.warm_up_later(&self.model.config, device, late, threads) {
            Ok(late) => Some(late),
            Err(e) => {
                tracing::warn!(error = %e, "cannot warm up after READY; batches pad to the shapes ready before it");
                None
            }
        }
    }

    /// A model on a GPU with graphs: one pass per shape, the shapes side by side on
    /// several threads (their first passes are CPU-bound set-up that runs
    /// in parallel), so that start-up costs about the slowest shape's, not
    /// the sum of all.
    fn warm_up_side_by_side(&self, model: &mut Model, pre: &Preprocessor, sizes: &[u32], before_capture: &(dyn Fn() + Sync)) -> Result<(), HostError> {
        let total = sizes.len() as u32;
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get()).min(WARM_UP_THREADS);
        self.reporter.warming(0, total);
        let started = Instant::now();
        let item_len = self.model.config.item_input_bytes();
        let report = model.warm_up_parallel(pre, sizes, item_len, threads, before_capture)?;
        tracing::info!(shapes = total, threads, captured = ?report.captured, ms = started.elapsed().as_secs_f64() * 1e3, "warm-up and capture done");
        self.reporter.warming(total, total);
        Ok(())
    }
}

/// The most warm-up threads: one per shape up to this (an H200 machine
/// has 16 cores; 12 shapes took 0.80 s on 4 threads, 0.67 s on 12).
const WARM_UP_THREADS: usize = 16;

/// Adopts the graphs the warm-up after READY has captured so far: each
/// shape becomes one the feeder may pad to once the model thread holds
/// its graph (never before: a first eager pass would stall its batch).
/// True once that warm-up is over.
fn adopt_late_graphs(late: &mut LateWarmUp, model: &mut Model, ready: &ReadyShapes, counters: &Counters) -> bool {
    match late.poll() {
        LatePoll::Captured(handed) => {
            for late in handed {
                let frozen = matches!(late, Late::Frozen(_));
                if let Some(n) = model.adopt_late(late) {
                    ready.add(n as u32);
                    counters.add_graphs(&[n]);
                    tracing::info!(batch = n, "batch shape warmed up and captured after READY");
                }
                if frozen {
                    tracing::info!("serving the module frozen after READY; its graphs replace the first ones as they are captured");
                }
            }
            false
        }
        LatePoll::Done(took) => {
            tracing::info!(ready = ?ready.now(), ms = took.as_secs_f64() * 1e3, "warm-up after READY done");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config as model_config;
    use crate::model::tensor_model::tests::scripted;

    /// The test dict model's model.toml, with `doubled_type` as the
    /// datatype of its "doubled" output (the model gives INT64).
    fn dict_toml(doubled_type: &str) -> String {
        let file = scripted("dict");
        format!(
            r#"
name = "dict"
version = "1"
file = {file:?}
[[inputs]]
name = "a"
datatype = "FP32"
dims = [2, 3]
[[inputs]]
name = "b"
datatype = "INT64"
dims = [4]
[[outputs]]
name = "sum"
datatype = "FP32"
dims = [2, 3]
[[outputs]]
name = "doubled"
datatype = "{doubled_type}"
dims = [4]
[[outputs]]
name = "flag"
datatype = "BOOL"
dims = [1]
[batching]
max_batch_size = 4
"#
        )
    }

    fn start(toml: &str) -> (Result<(), HostError>, tokio::sync::watch::Receiver<protocol::Phase>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), toml).unwrap();
        let notifier = Notifier::from_env(Duration::from_secs(1));
        let (reporter, phase) = PhaseReporter::new(Instant::now(), notifier.clone());
        let mut thread = ModelThread {
            model: model_config::load(dir.path()).unwrap(),
            device: DeviceChoice::Cpu,
            cpu_threads: 1,
            spin: Duration::ZERO,
            warm_up_threads_after_ready: 1,
            load_headroom_mb: 0,
            reporter,
            counters: Arc::new(Counters::new(&[1, 2, 4])),
            queues: None,
            notifier,
            nvjpeg: None,
            device_ready: tokio::sync::oneshot::channel().0,
        };
        (thread.start().map(|_| ()), phase)
    }

    #[test]
    fn a_tensor_model_warms_up_every_shape() {
        let (result, phase) = start(&dict_toml("INT64"));
        result.unwrap();
        assert!(phase.borrow().is_ready());
    }

    #[test]
    fn a_tensor_model_that_does_not_match_its_config_fails_warm_up() {
        let (result, phase) = start(&dict_toml("INT32"));
        let err = result.unwrap_err();
        assert!(matches!(err, HostError::Warmup(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("\"doubled\"") && text.contains("gave INT64 [1, 4]") && text.contains("says INT32 [1, 4]"), "{text}");
        assert!(!phase.borrow().is_ready());
    }
}
