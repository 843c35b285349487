//! One batch's life on the model thread: gather the slots out of shared
//! memory, launch it on the device, collect and answer.
//!
//! The steps are apart so that two threads can overlap them: the feeder
//! gathers batch N+1 out of shared memory and queues its copy to the device
//! while the model thread waits for batch N; only then does the model
//! thread launch N+1's forward pass (launching it earlier would queue it
//! ahead of N's readback and delay N's answers by a whole batch).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use protocol::{HostTimings, InferError, Prediction};

use crate::counters::{Counters, Refused};
use crate::jobs::Job;
use crate::model::{ImageClassifier, Launched, ModelError};
use crate::preprocess::{Input, Preprocessor};
use crate::model_config::padded_batch;

/// Slots copied into one staging buffer, padded to a warmed shape.
pub struct Gathered {
    jobs: Vec<Job>,
    /// The batch shape the model runs at (>= jobs.len()); padding rows are
    /// zeros and their answers are dropped.
    padded: usize,
    /// The largest top-k any of the jobs asked for.
    k: usize,
}

/// A batch queued on the device.
pub struct Running {
    jobs: Vec<Job>,
    padded: usize,
    launched: Result<Launched, ModelError>,
    /// When the batch was handed to the device.
    launched_at: Instant,
}

/// Copies each job's slot into `staging`, back to back. A job whose slot
/// cannot be read (a bug or a hostile gateway: the lease checks make it
/// rare) is answered at once and left out. None if no job is left.
pub fn gather(batch: Vec<Job>, slot_len: usize, shapes: &[u32], staging: &mut Vec<u8>, counters: &Counters) -> Option<Gathered> {
    let started = Instant::now();
    staging.clear();
    let mut jobs = Vec::with_capacity(batch.len());
    for job in batch {
        let at = staging.len();
        staging.resize(at + slot_len, 0);
        match job.segment.read_slot(job.slot.index, &mut staging[at..]) {
            Ok(()) => jobs.push(job),
            Err(e) => {
                staging.truncate(at);
                counters.refuse(Refused::InvalidRequest);
                tracing::warn!(request_id = %job.tag, error = %e, "slot unreadable");
                answer(job, Err(InferError::InvalidRequest(e.to_string())), counters);
            }
        }
    }
    if jobs.is_empty() {
        return None;
    }
    let padded = padded_batch(shapes, jobs.len());
    staging.resize(padded * slot_len, 0);
    counters.copy_us_total.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    let k = jobs.iter().map(|j| j.top_k as usize).max().unwrap_or(1);
    Some(Gathered { jobs, padded, k })
}

/// A batch whose pixels are on their way to the device.
pub struct Uploaded {
    jobs: Vec<Job>,
    padded: usize,
    k: usize,
    input: Result<Input, ModelError>,
}

impl Uploaded {
    /// Requests in the batch (without padding).
    pub fn len(&self) -> usize {
        self.jobs.len()
    }
}

/// Starts the gathered batch's copy to the device (pixels in `staging`).
/// On a GPU this only queues the copy and the pre-processing behind the
/// batch still running. `staging` is free again when this returns.
pub fn upload(pre: &Preprocessor, batch: Gathered, staging: &[u8]) -> Uploaded {
    let input = pre.upload(staging, batch.padded).map_err(ModelError::from);
    Uploaded { jobs: batch.jobs, padded: batch.padded, k: batch.k, input }
}

/// Queues the forward pass of an uploaded batch.
pub fn launch(model: &ImageClassifier, batch: Uploaded) -> Running {
    let launched_at = Instant::now();
    let launched = batch.input.and_then(|input| model.launch(input, batch.k));
    Running { jobs: batch.jobs, padded: batch.padded, launched, launched_at }
}

/// Waits for a running batch and answers each of its jobs.
pub fn finish(model: &ImageClassifier, batch: Running, counters: &Counters) {
    let Running { jobs, padded, launched, launched_at } = batch;
    let result = launched.and_then(|l| model.collect(l));
    let inference_us = launched_at.elapsed().as_micros() as u64;
    let batch_size = jobs.len() as u32;
    counters.inference_us_total.fetch_add(inference_us, Relaxed);
    counters.batch_run(padded);
    counters.batches_done.fetch_add(1, Relaxed);
    counters.requests_done.fetch_add(u64::from(batch_size), Relaxed);
    match result {
        Ok(rows) => {
            for (job, mut top) in jobs.into_iter().zip(rows) {
                top.truncate(job.top_k.max(1) as usize);
                let queue_us = launched_at.saturating_duration_since(job.arrived).as_micros() as u64;
                let timings = HostTimings { queue_us, inference_us, batch_size };
                tracing::debug!(request_id = %job.tag, queue_us, inference_us, batch_size, "request done");
                answer(job, Ok(Prediction { top, timings }), counters);
            }
        }
        Err(e) => {
            let ids: Vec<&str> = jobs.iter().map(|j| j.tag.as_str()).collect();
            tracing::error!(error = %e, batch_size, request_ids = ?ids, "batch failed");
            for job in jobs {
                answer(job, Err(InferError::Model(e.to_string())), counters);
            }
        }
    }
}

/// Answers a job and takes it off the queue depth.
pub fn answer(job: Job, result: Result<Prediction, InferError>, counters: &Counters) {
    counters.in_flight.fetch_sub(1, Relaxed);
    job.finish(result);
}
