//! The model's own thread: load once, warm up, then run batches forever.
//!
//! Inference runs here and not on tokio's workers: a forward pass blocks
//! for milliseconds (seconds on a large CPU batch), and the connection
//! tasks must keep answering leases and cancels meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::config::DeviceChoice;
use crate::batch::{self, Running};
use crate::batcher::{Batcher, Next};
use crate::counters::Counters;
use crate::device;
use crate::error::HostError;
use crate::jobs::Job;
use crate::notify::Notifier;
use crate::model::ImageClassifier;
use crate::model_config::LoadedConfig;
use crate::startup::PhaseReporter;

pub struct ModelThread {
    pub model: LoadedConfig,
    pub device: DeviceChoice,
    pub cpu_threads: u32,
    pub reporter: PhaseReporter,
    pub counters: Arc<Counters>,
    pub jobs: Receiver<Job>,
    pub notifier: Notifier,
    /// Told the resolved device name once known (for the handshake).
    pub device_name: tokio::sync::oneshot::Sender<String>,
}

impl ModelThread {
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || self.run())
            .expect("spawning a thread only fails when the process is out of resources")
    }

    fn run(mut self) {
        let model = match self.start() {
            Ok(model) => model,
            Err(e) => return self.reporter.failed(e.to_string()),
        };
        let batching = &self.model.config.batching;
        let shapes = batching.shapes();
        let slot_len = slot_len(&self.model);
        let mut batcher = Batcher::new(batching.policy());
        let mut staging = Vec::with_capacity(batching.max_batch_size as usize * slot_len);
        // The watchdog is pinged from this loop and nowhere else: if a
        // forward pass hangs, the pings stop and systemd restarts the host.
        let tick = self.notifier.watchdog_interval().unwrap_or(Duration::from_secs(1));
        // The batch on the device. While there is one, the batcher only
        // hands out a batch that is due now, which is gathered (a CPU copy
        // out of shared memory) while the device computes; then the running
        // batch is collected and the new one launched.
        let mut running: Option<Running> = None;
        loop {
            let wait = if running.is_some() { Duration::ZERO } else { tick };
            match batcher.next(&self.jobs, wait, &self.counters) {
                Next::Batch(jobs) => {
                    let gathered = batch::gather(jobs, slot_len, &shapes, &mut staging, &self.counters);
                    if let Some(done) = running.take() {
                        batch::finish(&model, done, &self.counters);
                    }
                    running = gathered.map(|g| batch::launch(&model, g, &staging));
                }
                Next::Idle => {
                    if let Some(done) = running.take() {
                        batch::finish(&model, done, &self.counters);
                    }
                }
                Next::Closed => break,
            }
            self.notifier.watchdog_ping();
        }
        if let Some(done) = running.take() {
            batch::finish(&model, done, &self.counters);
        }
        tracing::info!("job queue closed; model thread exits");
    }

    /// Device, weights, warm-up: each a reported phase with its timing.
    fn start(&mut self) -> Result<ImageClassifier, HostError> {
        if self.cpu_threads > 0 {
            tch::set_num_threads(self.cpu_threads as i32);
        }
        let device = device::resolve(self.device)?;
        // TorchScript's profiling executor re-specialises the graph for each
        // new input shape, costing seconds on the first requests of a shape
        // (seen on an H100 with ResNet-50); batches are padded to a few
        // warmed shapes instead, and cuDNN may autotune each once.
        tch::jit::set_profiling_mode(false);
        if device.is_cuda() {
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let name = device::name(device);
        let _ = std::mem::replace(&mut self.device_name, tokio::sync::oneshot::channel().0).send(name.clone());
        self.reporter.device_ready(&name);

        let path = &self.model.model_file;
        let model = ImageClassifier::load(path, &self.model.config, device)
            .map_err(|source| HostError::ModelLoad { path: path.display().to_string(), source })?;
        let loads = self.counters.model_loads.fetch_add(1, Relaxed) + 1;
        tracing::info!(model = %path.display(), loads, "model loaded");
        self.reporter.weights_loaded();

        self.warm_up(&model)?;
        self.reporter.ready();
        Ok(model)
    }

    /// Runs every batch shape the host will use, twice (the first run of a
    /// shape pays for kernel selection and allocation), and checks the
    /// output shape against the config before any client sees it.
    fn warm_up(&self, model: &ImageClassifier) -> Result<(), HostError> {
        let sizes = self.model.config.batching.shapes();
        let total = 2 * sizes.len() as u32;
        let slot_len = slot_len(&self.model);
        for (step, &n) in sizes.iter().chain(sizes.iter()).enumerate() {
            self.reporter.warming(step as u32, total);
            let started = Instant::now();
            let pixels: Vec<u8> = (0..n as usize * slot_len).map(|i| (i * 31 % 251) as u8).collect();
            model.classify(&pixels, n as usize, 1)?;
            tracing::info!(batch = n, ms = started.elapsed().as_secs_f64() * 1e3, "warm-up pass");
        }
        Ok(())
    }
}

fn slot_len(model: &LoadedConfig) -> usize {
    let i = &model.config.input;
    (i.width * i.height * i.channels) as usize
}
