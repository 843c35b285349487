//! The feeder thread: forms the next batch, gathers it out of shared memory
//! and queues its copy to the device, while the model thread waits for the
//! batch on the device.
//!
//! Measured on an H100 (docs/benchmarks.md): with ResNet-50 in fp16 the
//! model thread's own CPU work (launching the forward pass) is already as
//! long as the GPU's; doing the gather and upload on it too left the GPU
//! idle between batches.
//!
//! The two threads talk in turns: the model thread asks for a batch
//! (saying how long the feeder may wait for one), the feeder answers with
//! an uploaded batch or "none due". So the feeder never runs ahead by more
//! than one batch, and a batch is formed as late as possible, when the
//! model thread will take it next: as many requests as possible share it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use crate::pipeline::batch::{self, Uploaded};
use crate::pipeline::batcher::{Batcher, Next};
use crate::counters::Counters;
use crate::pipeline::jobs::Job;
use crate::pipeline::ready_shapes::ReadyShapes;
use crate::model::preprocess::Preprocessor;
use crate::torch_shim::stream::{Priority, current_priority, use_own_stream};

/// The feeder's answer to one ask.
pub enum Fed {
    Batch(Uploaded),
    /// No batch was due within the wait.
    Idle,
}

pub struct Feeder {
    pub batcher: Batcher,
    pub jobs: Receiver<Job>,
    pub pre: Preprocessor,
    pub slot_len: usize,
    /// What a batch may be padded to (more shapes join after READY).
    pub shapes: Arc<ReadyShapes>,
    pub counters: Arc<Counters>,
    /// libtorch CPU threads for this thread's own work (the copies and, on
    /// the CPU, the conversion); 0 leaves libtorch's default. Each thread
    /// that calls libtorch gets its own OpenMP team, and a team of one per
    /// core spin-waits after every parallel copy: on a CPU-only host that
    /// took the cores from the forward pass (ResNet-50 at batch 1 ran in
    /// 100 ms instead of 47 ms on two cores).
    pub cpu_threads: i32,
}

impl Feeder {
    /// Runs until the job queue closes or the model thread goes away.
    pub fn spawn(mut self, asks: Receiver<Duration>, answers: SyncSender<Fed>) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("feeder".into())
            .spawn(move || {
                if self.cpu_threads > 0 {
                    tch::set_num_threads(self.cpu_threads);
                }
                // Uploads on a stream of their own overlap the batch the
                // model's stream runs, instead of queueing behind it.
                match (use_own_stream(self.pre.device(), Priority::High), self.pre.device()) {
                    (Ok(()), tch::Device::Cuda(index)) => {
                        tracing::info!(priority = ?current_priority(index).ok(), "uploads on a stream of their own");
                    }
                    (Ok(()), _) => {}
                    (Err(e), _) => tracing::warn!(error = %e.0, "no CUDA stream of the feeder's own; uploads queue behind each forward pass"),
                }
                for wait in asks {
                    let fed = match self.batcher.next(&self.jobs, wait, &self.counters) {
                        Next::Batch(jobs) => match batch::gather(jobs, self.slot_len, &self.shapes.now(), &self.pre, &self.counters) {
                            Some(gathered) => Fed::Batch(batch::upload(&self.pre, gathered)),
                            None => Fed::Idle,
                        },
                        Next::Idle => Fed::Idle,
                        // Not dropped, for the model thread's reason (its
                        // device tensors would race exit()).
                        Next::Closed => return std::mem::forget(self),
                    };
                    if answers.send(fed).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a thread only fails when the process is out of resources")
    }
}
