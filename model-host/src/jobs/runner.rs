//! The iterative model's own thread: load, warm up, then run the steps of
//! every running job together, forever.
//!
//! Continuous batching: the state of each running job is one row of one
//! tensor. Before each call of `step`, queued jobs join (their `start`
//! rows appended, up to `max_batch_size`); after it, finished rows leave
//! through `finish` and canceled ones are dropped. A job's rows never wait
//! for another job to finish, and a cancel takes effect before the next step.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use protocol::jobs::JobOutput;
use tch::{Device, Kind, Tensor};

use crate::model::ModelError;
use crate::torch_shim::{Module, ShimError};

use super::table::{Admitted, JobTable, now_ms};
use crate::config::DeviceChoice;
use crate::counters::Counters;
use crate::error::HostError;
use crate::model::config::LoadedConfig;
use crate::model::config::iterative::IterativeConfig;
use crate::model::device;
use crate::pipeline::model_thread::DeviceReady;
use crate::startup::PhaseReporter;
use crate::torch_shim::stream::CudaEvent;

/// How long the idle loop sleeps before it sweeps expired results again.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub struct Runner {
    pub model: LoadedConfig,
    pub config: IterativeConfig,
    pub device: DeviceChoice,
    pub cpu_threads: u32,
    pub reporter: PhaseReporter,
    pub counters: Arc<Counters>,
    pub table: Arc<JobTable>,
    /// Jobs whose steps run in one call (model.toml's `max_batch_size`).
    pub max_batch: usize,
    /// The least time between two steps (`--job-step-interval-ms`).
    pub step_interval: Duration,
    /// Told the resolved device once known (for the handshake).
    pub device_ready: tokio::sync::oneshot::Sender<DeviceReady>,
}

/// The jobs running now: row i of `state` is `jobs[i]`'s.
struct Batch {
    jobs: Vec<Row>,
    state: Option<Tensor>,
    /// The rows' steps done and steps in all, on the device, made again only
    /// when jobs join or leave (`None` then): a copy from host memory at
    /// every step waits for the step before it, and the GPU then idles
    /// while the next is launched (64 jobs ran at 0.69x of the same
    /// model's steps in a loop on an H100).
    counters: Option<(Tensor, Tensor)>,
}

struct Row {
    id: String,
    /// Steps done.
    index: u32,
    steps: u32,
}

/// The loaded module and the names of its three methods.
struct Iterative<'a> {
    module: Module,
    config: &'a IterativeConfig,
    device: Device,
}

impl Runner {
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("jobs".into())
            .spawn(move || self.run())
            .expect("spawning a thread only fails when the process is out of resources")
    }

    fn run(mut self) {
        let device = match self.start() {
            Ok(device) => device,
            Err(e) => return self.reporter.failed(e.to_string()),
        };
        let config = self.config.clone();
        let model = match self.load(&config, device) {
            Ok(model) => model,
            Err(e) => return self.reporter.failed(e.to_string()),
        };
        self.reporter.ready();
        let _no_grad = tch::no_grad_guard();
        let mut batch = Batch { jobs: Vec::new(), state: None, counters: None };
        let mut last_sweep = Instant::now();
        // The step before the last one launched: waited for after each
        // launch, so that the device has the next step queued while this
        // thread launches another, but no more. Run further ahead and a job
        // submitted now would join only after every step queued before it,
        // tens of them, run at the old batch's size.
        let mut previous: Option<CudaEvent> = None;
        loop {
            let room = self.max_batch - batch.jobs.len();
            let joining = self.table.take(room, batch.jobs.is_empty(), IDLE_TICK);
            if !joining.is_empty() {
                self.join(&model, &mut batch, joining);
            }
            if last_sweep.elapsed() >= IDLE_TICK {
                self.table.sweep(now_ms());
                last_sweep = Instant::now();
            }
            if batch.jobs.is_empty() {
                continue;
            }
            self.step(&model, &mut batch);
            let launched = CudaEvent::record(device).ok().flatten();
            if let Some(before) = std::mem::replace(&mut previous, launched) {
                let _ = before.synchronize();
            }
            if !self.step_interval.is_zero() {
                std::thread::sleep(self.step_interval);
            }
        }
    }

    /// Device and threads, reported as the classifier's model thread does.
    fn start(&mut self) -> Result<Device, HostError> {
        let device = device::resolve(self.device)?;
        device::set_threads(device, self.cpu_threads);
        let name = device::name(device);
        let ready = DeviceReady { name: name.clone(), host_decode: None };
        let _ = std::mem::replace(&mut self.device_ready, tokio::sync::oneshot::channel().0).send(ready);
        self.reporter.device_ready(&name);
        Ok(device)
    }

    /// Loads the module and runs one job through it at the smallest and
    /// largest batch, checking that `finish` gives the declared image.
    fn load<'a>(&mut self, config: &'a IterativeConfig, device: Device) -> Result<Iterative<'a>, HostError> {
        let path = self.model.model_file.display().to_string();
        let load_error = |source| HostError::ModelLoad { path: path.clone(), source };
        // Through the shim: the tensor records streamed onto the device, with
        // the bytes read so far in the host's status as it goes.
        let reporter = &mut self.reporter;
        let module = Module::load_reporting(&self.model.model_file, device, None, &mut |read, total| reporter.loading(read, total))
            .map_err(|e| load_error(ModelError::Load(e.0)))?;
        self.counters.model_loads.fetch_add(1, Relaxed);
        self.reporter.weights_loaded();
        let model = Iterative { module, config, device };
        let _no_grad = tch::no_grad_guard();
        let shapes: Vec<usize> = if self.max_batch > 1 { vec![1, self.max_batch] } else { vec![1] };
        for (i, &n) in shapes.iter().enumerate() {
            self.reporter.warming(i as u32, shapes.len() as u32);
            let params: Vec<i64> = config.params.iter().map(|p| p.min).collect();
            let state = model.start(&vec![params; n]).map_err(|e| HostError::Startup(format!("warm-up of {n} jobs: {e}")))?;
            let (index, steps) = model.counters(&vec![(0, 2); n]);
            let state = model.step(&state, &index, &steps).map_err(|e| HostError::Startup(format!("warm-up of {n} jobs: {e}")))?;
            model.finish(&state, n).map_err(|e| HostError::Startup(format!("warm-up of {n} jobs: {e}")))?;
        }
        Ok(model)
    }

    /// Starts `joining` and appends their rows; a failed start fails them.
    fn join(&self, model: &Iterative<'_>, batch: &mut Batch, joining: Vec<Admitted>) {
        let params: Vec<Vec<i64>> = joining.iter().map(|a| a.params.clone()).collect();
        let started = Instant::now();
        let rows = match model.start(&params) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, jobs = joining.len(), "the model's start failed");
                for a in &joining {
                    self.table.end(&a.id, Err(format!("the model failed to start the job: {e}")));
                }
                return;
            }
        };
        self.table.record_time(started.elapsed());
        batch.state = Some(match batch.state.take() {
            Some(state) => Tensor::cat(&[state, rows], 0),
            None => rows,
        });
        batch.jobs.extend(joining.into_iter().map(|a| Row { id: a.id, index: 0, steps: a.steps }));
        batch.counters = None;
    }

    /// One step of every running job, then out with the finished and the canceled.
    fn step(&self, model: &Iterative<'_>, batch: &mut Batch) {
        let Some(state) = batch.state.take() else { return };
        let rows: Vec<(u32, u32)> = batch.jobs.iter().map(|r| (r.index, r.steps)).collect();
        let started = Instant::now();
        let (index, steps) = batch.counters.get_or_insert_with(|| model.counters(&rows));
        let state = match model.step(&state, index, steps) {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, jobs = rows.len(), "the model's step failed");
                for row in batch.jobs.drain(..) {
                    self.table.end(&row.id, Err(format!("the model failed at step {} of {}: {e}", row.index + 1, row.steps)));
                }
                return;
            }
        };
        self.table.record_step(rows.len(), started.elapsed());
        for row in &mut batch.jobs {
            row.index += 1;
        }
        if let Some((index, _)) = &mut batch.counters {
            // Queued on the device behind the step: nothing waits for it.
            let _ = index.f_add_scalar_(1);
        }
        let progress: Vec<(&str, u32)> = batch.jobs.iter().map(|r| (r.id.as_str(), r.index)).collect();
        let canceled = self.table.progress(&progress);
        let done: Vec<bool> = batch.jobs.iter().map(|r| r.index >= r.steps).collect();
        let leaving: Vec<i64> = (0..batch.jobs.len()).filter(|&i| done[i] || canceled[i]).map(|i| i as i64).collect();
        if leaving.is_empty() {
            batch.state = Some(state);
            return;
        }
        let finished: Vec<i64> = leaving.iter().copied().filter(|&i| done[i as usize] && !canceled[i as usize]).collect();
        if !finished.is_empty() {
            self.finish(model, &state, &finished, &batch.jobs);
        }
        for &i in &leaving {
            if canceled[i as usize] {
                self.table.end(&batch.jobs[i as usize].id, Ok(None));
            }
        }
        let staying: Vec<i64> = (0..batch.jobs.len() as i64).filter(|i| !leaving.contains(i)).collect();
        let mut index = 0;
        batch.jobs.retain(|_| {
            index += 1;
            !leaving.contains(&(index - 1))
        });
        batch.state = (!staying.is_empty()).then(|| state.index_select(0, &Tensor::from_slice(&staying).to_device(model.device)));
        batch.counters = None;
    }

    /// `finish` on the rows `finished` of `state`, each job's image to the table.
    fn finish(&self, model: &Iterative<'_>, state: &Tensor, finished: &[i64], jobs: &[Row]) {
        let started = Instant::now();
        let rows = state.index_select(0, &Tensor::from_slice(finished).to_device(model.device));
        match model.finish(&rows, finished.len()) {
            Ok(images) => {
                for (&i, pixels) in finished.iter().zip(images) {
                    self.table.end(&jobs[i as usize].id, Ok(Some(JobOutput { shape: model.config.output, pixels })));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = finished.len(), "the model's finish failed");
                for &i in finished {
                    self.table.end(&jobs[i as usize].id, Err(format!("the model failed to finish the job: {e}")));
                }
            }
        }
        self.table.record_time(started.elapsed());
    }
}

/// The shim's message as tch's error, which the runner's callers report.
fn torch_error(e: ShimError) -> tch::TchError {
    tch::TchError::Torch(e.0)
}

impl Iterative<'_> {
    /// `start` on one row of parameters per job.
    fn start(&self, params: &[Vec<i64>]) -> Result<Tensor, tch::TchError> {
        let (jobs, width) = (params.len() as i64, self.config.params.len() as i64);
        let flat: Vec<i64> = params.iter().flatten().copied().collect();
        let params = Tensor::from_slice(&flat).view([jobs, width]).to_device(self.device);
        let state = self.module.method(&self.config.start, &[&params]).map_err(torch_error)?;
        if state.dim() < 1 || state.size()[0] != jobs {
            return Err(tch::TchError::Shape(format!("start returned {:?} for {jobs} jobs; the state needs one row per job", state.size())));
        }
        Ok(state)
    }

    /// Each row's steps done and steps in all, as `step` takes them, on the device.
    fn counters(&self, rows: &[(u32, u32)]) -> (Tensor, Tensor) {
        let index: Vec<i64> = rows.iter().map(|r| i64::from(r.0)).collect();
        let steps: Vec<i64> = rows.iter().map(|r| i64::from(r.1)).collect();
        (Tensor::from_slice(&index).to_device(self.device), Tensor::from_slice(&steps).to_device(self.device))
    }

    /// `step` with each row's steps done (`index`) and steps in all.
    fn step(&self, state: &Tensor, index: &Tensor, steps: &Tensor) -> Result<Tensor, tch::TchError> {
        let next = self.module.method(&self.config.step, &[state, index, steps]).map_err(torch_error)?;
        if next.size() != state.size() {
            return Err(tch::TchError::Shape(format!("step returned {:?} for a state of {:?}", next.size(), state.size())));
        }
        Ok(next)
    }

    /// `finish`: each of the `n` rows' image, as height x width x channels bytes.
    fn finish(&self, state: &Tensor, n: usize) -> Result<Vec<Vec<u8>>, tch::TchError> {
        let images = self.module.method(&self.config.finish, &[state]).map_err(torch_error)?;
        let o = self.config.output;
        let want = [n as i64, i64::from(o.channels), i64::from(o.height), i64::from(o.width)];
        if images.size() != want || images.kind() != Kind::Uint8 {
            return Err(tch::TchError::Shape(format!(
                "finish returned {:?} {:?}; model.toml's [iterative] output needs uint8 {want:?}",
                images.kind(),
                images.size()
            )));
        }
        let hwc = images.permute([0, 2, 3, 1]).contiguous().to_device(Device::Cpu);
        let bytes = Vec::<u8>::try_from(hwc.flatten(0, -1))?;
        Ok(bytes.chunks(o.len() as usize).map(<[u8]>::to_vec).collect())
    }
}
