//! One batch's life on the model thread: gather the slots out of shared
//! memory, launch it on the device, collect and answer.
//!
//! The steps are apart so that two threads overlap them: the feeder
//! gathers batch N+1 out of shared memory and uploads it on its own stream
//! while batch N runs; on a GPU the model thread then launches N+1 behind
//! N's read-back (already queued, so the GPU does not make N's answers
//! wait) and only then waits for N and answers it.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use protocol::{HostTimings, InferError, Output, Payload, Prediction};
use tch::Tensor;

use crate::counters::{Counters, Refused};
use crate::pipeline::jobs::Job;
use crate::model::{Forms, Launched, Model, ModelError, Outputs};
use crate::model::config::padded_batch;
use crate::model::Input;
use crate::model::preprocess::Preprocessor;
use crate::torch_shim::HostBuffer;
use crate::pipeline::spans::{self, Step};
use crate::torch_shim::stream::CudaEvent;
use tracing::Span;

/// Slots copied into one staging buffer, padded to a warmed shape.
pub struct Gathered {
    jobs: Vec<Job>,
    /// The batch shape the model runs at (>= jobs.len()); padding rows are
    /// zeros and their answers are dropped.
    padded: usize,
    /// The largest top-k any of the jobs asked for.
    k: usize,
    /// The inputs, back to back, then the padding rows (pinned on a GPU).
    staging: HostBuffer,
    /// Rows whose input the decode stage made from a JPEG, already on the
    /// device; their rows of `staging` are left as they are.
    decoded: Vec<(usize, Tensor)>,
    /// The batch's span, when one of its requests is traced; it ends
    /// with the batch.
    span: Option<Span>,
}

/// Device memory a batch reads and that was made on another thread's
/// stream: the decode stage's tensors, and the inputs the feeder uploaded
/// on its own. Kept until the batch is finished, so that the caching
/// allocator cannot hand their blocks to that stream's next work before
/// this batch has read them.
type Borrowed = Vec<Tensor>;

/// A batch queued on the device.
pub struct Running {
    jobs: Vec<Job>,
    padded: usize,
    launched: Result<Launched, ModelError>,
    /// When the batch was handed to the device: on a GPU, while the batch
    /// before it still runs, so the time to its answers (a request's
    /// `inference_us`) includes the rest of that batch.
    launched_at: Instant,
    borrowed: Borrowed,
    span: Option<Span>,
}

/// Copies the first `slot_len` bytes of each job's slot (its input) into a
/// staging buffer from `pre` (page-locked on a GPU, so this is the only
/// copy the CPU makes), back to back; a job the decode stage has decoded
/// brings its input on the device instead. A job whose slot cannot be read
/// (a bug or a hostile gateway: the lease checks make it rare) is answered
/// at once and left out. None if no job is left.
pub fn gather(batch: Vec<Job>, slot_len: usize, shapes: &[u32], pre: &Preprocessor, counters: &Counters) -> Option<Gathered> {
    let started = Instant::now();
    let most = padded_batch(shapes, batch.len());
    let mut staging = match pre.staging(most * slot_len) {
        Ok(staging) => staging,
        Err(e) => {
            tracing::warn!(error = %e, "no staging memory for a batch");
            for job in batch {
                answer(job, Err(InferError::Model(format!("no staging memory: {e}"))), counters);
            }
            return None;
        }
    };
    let bytes = staging.as_mut_slice();
    let mut jobs = Vec::with_capacity(batch.len());
    let mut decoded = Vec::new();
    for mut job in batch {
        if let Some(input) = job.decoded.take() {
            decoded.push((jobs.len(), input));
            jobs.push(job);
            continue;
        }
        if job.payload != Payload::Input {
            // Only the decode stage passes JPEG jobs on, decoded: a bug.
            answer(job, Err(InferError::Model("a JPEG reached the batcher undecoded".into())), counters);
            continue;
        }
        let at = jobs.len() * slot_len;
        match job.segment.read_slot(job.slot.index, &mut bytes[at..at + slot_len]) {
            Ok(()) => jobs.push(job),
            Err(e) => {
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
    bytes[jobs.len() * slot_len..padded * slot_len].fill(0);
    counters.copy_us_total.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
    let k = jobs.iter().map(|j| j.top_k as usize).max().unwrap_or(1);
    let span = spans::start_batch(&mut jobs, padded);
    Some(Gathered { jobs, padded, k, staging, decoded, span })
}

/// A batch whose inputs are on their way to the device.
pub struct Uploaded {
    jobs: Vec<Job>,
    padded: usize,
    k: usize,
    input: Result<Input, ModelError>,
    /// On a GPU: the end of the upload on the feeder's stream, which the
    /// model's stream waits for before the forward pass.
    uploaded: Option<CudaEvent>,
    borrowed: Borrowed,
    span: Option<Span>,
}

/// Starts the gathered batch's copy to the device. On a GPU this only
/// queues the copy and the pre-processing on the calling thread's stream
/// (the feeder's own: beside the batch still running, not behind it).
pub fn upload(pre: &Preprocessor, batch: Gathered) -> Uploaded {
    let step = spans::step(batch.span.as_ref(), Step::Upload).entered();
    let mut uploaded = None;
    let input = pre.upload(batch.staging, batch.padded, &batch.decoded).map_err(ModelError::from).and_then(|input| {
        uploaded = CudaEvent::record(pre.device()).map_err(|e| ModelError::Stream(e.0))?;
        Ok(input)
    });
    let borrowed = batch.decoded.into_iter().map(|(_, t)| t).collect();
    drop(step);
    Uploaded { jobs: batch.jobs, padded: batch.padded, k: batch.k, input, uploaded, borrowed, span: batch.span }
}

/// Queues the forward pass of an uploaded batch on the calling thread's
/// stream, after its upload.
pub fn launch(model: &Model, batch: Uploaded) -> Running {
    let launched_at = Instant::now();
    let Uploaded { jobs, padded, k, input, uploaded, mut borrowed, span } = batch;
    let _forward = spans::step(span.as_ref(), Step::Forward).entered();
    let launched = input.and_then(|input| {
        if let Some(uploaded) = &uploaded {
            uploaded.block_current().map_err(|e| ModelError::Stream(e.0))?;
        }
        borrowed.extend(input.tensors.iter().map(Tensor::shallow_clone));
        // A segmenter makes only the mask forms its requests want.
        let forms = Forms { raw: jobs.iter().any(|j| !j.answer), small: jobs.iter().any(|j| j.answer) };
        model.launch_forms(input, k, forms)
    });
    Running { jobs, padded, launched, launched_at, borrowed, span }
}

/// Waits for a running batch and answers each of its jobs: a classifier's
/// with its top-k, a tensor model's once its outputs are in its slot.
pub fn finish(batch: Running, counters: &Counters) {
    let Running { jobs, padded, launched, launched_at, borrowed, span } = batch;
    let reading = spans::step(span.as_ref(), Step::ReadBack).entered();
    let result = launched.and_then(|l| l.collect(jobs.len()));
    drop(reading);
    // With the outputs back, the batch's copies out of these have run; a
    // batch that failed first waits for its device here.
    if let (Err(_), Some(tch::Device::Cuda(index))) = (&result, borrowed.first().map(Tensor::device)) {
        tch::Cuda::synchronize(index as i64);
    }
    drop(borrowed);
    let inference_us = launched_at.elapsed().as_micros() as u64;
    let batch_size = jobs.len() as u32;
    counters.inference_us_total.fetch_add(inference_us, Relaxed);
    counters.batch_run(padded);
    counters.batches_done.fetch_add(1, Relaxed);
    counters.requests_done.fetch_add(u64::from(batch_size), Relaxed);
    let outputs = match result {
        Ok(outputs) if outputs.len() == jobs.len() => outputs,
        result => {
            let e = match result {
                Err(e) => e.to_string(),
                Ok(outputs) => format!("{} answers for {} requests", outputs.len(), jobs.len()),
            };
            let ids: Vec<&str> = jobs.iter().map(|j| j.tag.as_str()).collect();
            tracing::error!(error = %e, batch_size, request_ids = ?ids, "batch failed");
            for job in jobs {
                answer(job, Err(InferError::Model(e.clone())), counters);
            }
            return;
        }
    };
    let timings = |job: &Job| {
        let queue_us = launched_at.saturating_duration_since(job.arrived).as_micros() as u64;
        tracing::debug!(request_id = %job.tag, queue_us, inference_us, batch_size, "request done");
        HostTimings { queue_us, inference_us, batch_size }
    };
    match outputs {
        Outputs::TopK(rows) => {
            for (job, mut top) in jobs.into_iter().zip(rows) {
                top.truncate(job.top_k.max(1) as usize);
                let timings = timings(&job);
                answer(job, Ok(Prediction { output: Output::TopK(top), timings }), counters);
            }
        }
        Outputs::Rows(rows) => {
            for (i, job) in jobs.into_iter().enumerate() {
                // The gateway reads the outputs when it handles the answer,
                // so they must be in the slot before it is sent: each
                // straight from the read-back memory, no copy between.
                let written = rows.row(i, job.answer).map_err(|e| e.to_string()).and_then(|parts| {
                    parts.into_iter().try_for_each(|(offset, bytes)| job.segment.write_slot_at(job.slot.index, offset, bytes).map_err(|e| e.to_string()))
                });
                let result = match written {
                    Ok(()) => Ok(Prediction { output: Output::InSlot, timings: timings(&job) }),
                    Err(e) => {
                        tracing::warn!(request_id = %job.tag, error = %e, "writing the outputs into the slot failed");
                        Err(InferError::Model(format!("writing the outputs: {e}")))
                    }
                };
                answer(job, result, counters);
            }
        }
    }
}

/// Answers a job and takes it off the queue depth.
pub fn answer(job: Job, result: Result<Prediction, InferError>, counters: &Counters) {
    counters.in_flight.fetch_sub(1, Relaxed);
    job.finish(result);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use protocol::shm::naming::segment_name;
    use protocol::shm::{Segment, SlotLayout};
    use tch::Device;

    use super::*;
    use crate::model::tensor_model::TensorModel;
    use crate::model::tensor_model::tests::{check_dict_row, dict_item, dict_signature, scripted};

    #[test]
    fn a_tensor_batch_writes_each_outputs_into_its_slot_before_answering() {
        let signature = dict_signature();
        let layout = SlotLayout::new(4, signature.slot_bytes()).unwrap();
        let mut segment = Segment::create(&segment_name(std::process::id(), 880_001), layout, 0o600).unwrap();
        // The mapping outlives the name; nothing is left in /dev/shm.
        segment.unlink().unwrap();
        let segment = Arc::new(segment);
        segment.write_slot(1, &dict_item(&signature, 2)).unwrap();
        segment.write_slot(3, &dict_item(&signature, 5)).unwrap();

        let (reply, mut replies) = tokio::sync::mpsc::unbounded_channel();
        let job = |index: u32| Job::for_test(&segment, index, Payload::Input, &reply);
        let shapes = [1, 2, 4];
        let counters = Counters::new(&shapes);
        counters.in_flight.store(3, Relaxed);
        let optimization = crate::model::config::OptimizationConfig::default();
        let model = Model::Tensors(TensorModel::load(&scripted("dict"), &signature, &optimization, Device::Cpu, Vec::new()).unwrap());
        let pre = Preprocessor::Tensors(crate::model::preprocess::TensorUploader::new(&signature, &optimization, Device::Cpu));

        // Slot 9 does not exist: answered at once, left out of the batch.
        let gathered = gather(vec![job(1), job(9), job(3)], signature.input_bytes() as usize, &shapes, &pre, &counters).unwrap();
        assert_eq!(gathered.padded, 2);
        finish(launch(&model, upload(&pre, gathered)), &counters);

        let mut results = std::collections::HashMap::new();
        while let Ok(done) = replies.try_recv() {
            results.insert(done.request_id, done.result);
        }
        assert!(matches!(results[&9], Err(InferError::InvalidRequest(_))));
        for (index, item) in [(1, 2), (3, 5)] {
            let prediction = results[&u64::from(index)].as_ref().unwrap();
            assert_eq!(prediction.output, Output::InSlot);
            assert_eq!(prediction.timings.batch_size, 2);
            let mut row = vec![0u8; signature.output_bytes() as usize];
            segment.read_slot(index, &mut row).unwrap();
            check_dict_row(&signature, &row, item);
        }
        assert_eq!(counters.in_flight.load(Relaxed), 0);
    }
}
