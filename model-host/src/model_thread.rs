//! The model's own thread: load once, warm up, then run batches forever.
//!
//! Inference runs here and not on tokio's workers: a forward pass blocks
//! for milliseconds (seconds on a large CPU batch), and the connection
//! tasks must keep answering leases and cancels meanwhile.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use protocol::{HostTimings, InferError, Prediction};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::config::DeviceChoice;
use crate::counters::{Counters, Refused};
use crate::device;
use crate::error::HostError;
use crate::jobs::{Job, Next, next_batch};
use crate::notify::Notifier;
use crate::model::ImageClassifier;
use crate::model_config::{LoadedConfig, padded_batch};
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
        let max = self.model.config.batching.max_batch_size as usize;
        let shapes = self.model.config.batching.shapes();
        let slot_len = slot_len(&self.model);
        let mut staging = Vec::with_capacity(max * slot_len);
        // The watchdog is pinged from this loop and nowhere else: if a
        // forward pass hangs, the pings stop and systemd restarts the host.
        let tick = self.notifier.watchdog_interval().unwrap_or(Duration::from_secs(1));
        loop {
            match next_batch(&self.jobs, max, tick) {
                Next::Batch(batch) => run_batch(&model, batch, slot_len, &shapes, &mut staging, &self.counters),
                Next::Idle => {}
                Next::Closed => break,
            }
            self.notifier.watchdog_ping();
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

/// Answers cancelled and expired jobs without GPU work, copies the rest out
/// of shared memory into one staging buffer, and runs them as one batch.
fn run_batch(
    model: &ImageClassifier,
    batch: Vec<Job>,
    slot_len: usize,
    shapes: &[u32],
    staging: &mut Vec<u8>,
    counters: &Counters,
) {
    let started = Instant::now();
    staging.clear();
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        counters.in_flight.fetch_sub(1, Relaxed);
        if job.is_cancelled() {
            counters.refuse(Refused::Cancelled);
            job.finish(Err(InferError::Cancelled));
        } else if job.deadline <= started {
            counters.refuse(Refused::DeadlineExceeded);
            tracing::debug!(request_id = %job.tag, "deadline passed in the queue; skipped");
            job.finish(Err(InferError::DeadlineExceeded));
        } else {
            let at = staging.len();
            staging.resize(at + slot_len, 0);
            match job.segment.read_slot(job.slot.index, &mut staging[at..]) {
                Ok(()) => live.push(job),
                Err(e) => {
                    staging.truncate(at);
                    counters.refuse(Refused::InvalidRequest);
                    tracing::warn!(request_id = %job.tag, error = %e, "slot unreadable");
                    job.finish(Err(InferError::InvalidRequest(e.to_string())));
                }
            }
        }
    }
    if live.is_empty() {
        return;
    }
    let k = live.iter().map(|j| j.top_k as usize).max().unwrap_or(1);
    // Pad to a warmed-up shape; the padding rows' answers are dropped.
    let padded = padded_batch(shapes, live.len());
    staging.resize(padded * slot_len, 0);
    let copied = Instant::now();
    let result = model.classify(staging, padded, k);
    let inference_us = started.elapsed().as_micros() as u64;
    let batch_size = live.len() as u32;
    counters.copy_us_total.fetch_add(copied.duration_since(started).as_micros() as u64, Relaxed);
    counters.inference_us_total.fetch_add(copied.elapsed().as_micros() as u64, Relaxed);
    counters.batch_run(padded);
    counters.batches_done.fetch_add(1, Relaxed);
    counters.requests_done.fetch_add(u64::from(batch_size), Relaxed);
    match result {
        Ok(rows) => {
            for (job, mut top) in live.into_iter().zip(rows) {
                top.truncate(job.top_k.max(1) as usize);
                let queue_us = started.saturating_duration_since(job.arrived).as_micros() as u64;
                let timings = HostTimings { queue_us, inference_us, batch_size };
                tracing::debug!(request_id = %job.tag, queue_us, inference_us, batch_size, "request done");
                job.finish(Ok(Prediction { top, timings }));
            }
        }
        Err(e) => {
            let ids: Vec<&str> = live.iter().map(|j| j.tag.as_str()).collect();
            tracing::error!(error = %e, batch_size, request_ids = ?ids, "batch failed");
            for job in live {
                job.finish(Err(InferError::Model(e.to_string())));
            }
        }
    }
}
