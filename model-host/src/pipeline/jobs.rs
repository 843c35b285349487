//! The queue between connection tasks and the model thread.
//!
//! A connection turns a checked `Infer` into a [`Job`] and submits it; the
//! queue is bounded, so past its capacity a request is refused at once
//! instead of waiting without end. The model thread answers each job with
//! a [`Completion`] on the connection's own channel.
//!
//! A job whose slot holds a JPEG goes first to the decode stage
//! ([`crate::pipeline::jpeg_stage`]), which decodes it on the device as it
//! arrives and passes it on to the batcher with its input attached; every
//! other job goes straight to the batcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use protocol::shm::Segment;
use protocol::{InferError, Payload, Prediction, SlotRef};
use tch::Tensor;
use tokio::sync::mpsc;

use crate::counters::Counters;
use crate::pipeline::spans::RequestSpans;

pub struct Job {
    pub request_id: u64,
    pub slot: SlotRef,
    /// Keeps the gateway's mapping alive until the model has read the slot,
    /// even if the gateway disconnects meanwhile.
    pub segment: Arc<Segment>,
    pub top_k: u32,
    /// A vision model's answer ([`protocol::Ask::Answer`]: a segmentation
    /// mask 8-bit) rather than its raw outputs.
    pub answer: bool,
    /// What the slot holds: the input, or a JPEG for the host to decode
    /// (checked against the slot and the host's offer on arrival).
    pub payload: Payload,
    /// A JPEG job's input once the decode stage has made it: [height,
    /// width, channels] uint8 on the device, complete (its stream synced).
    pub decoded: Option<Tensor>,
    /// The HTTP request id, for log lines about this request.
    pub tag: String,
    pub arrived: Instant,
    pub deadline: Instant,
    /// Set when the gateway cancels or disconnects: skip before GPU work.
    pub cancelled: Arc<AtomicBool>,
    pub reply: mpsc::UnboundedSender<Completion>,
    /// The request's spans, when the gateway traced it and traces are
    /// exported; they end when the job is answered (dropped).
    pub spans: Option<RequestSpans>,
}

impl Job {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Answers the job; a gone connection is fine (its slots went with it).
    pub fn finish(self, result: Result<Prediction, InferError>) {
        if let (Some(spans), Err(e)) = (&self.spans, &result) {
            spans.failed(&format!("{e:?}"));
        }
        let _ = self.reply.send(Completion { request_id: self.request_id, slot: self.slot, result });
    }
}

#[cfg(test)]
impl Job {
    /// A job for slot `index` of `segment` (request id = index), answered
    /// on `reply`, with 60 s to go.
    pub(crate) fn for_test(segment: &Arc<Segment>, index: u32, payload: Payload, reply: &mpsc::UnboundedSender<Completion>) -> Job {
        let now = Instant::now();
        Job {
            request_id: u64::from(index),
            slot: SlotRef { index, generation: 1 },
            segment: segment.clone(),
            top_k: 1,
            answer: false,
            payload,
            decoded: None,
            tag: format!("r{index}"),
            arrived: now,
            deadline: now + std::time::Duration::from_secs(60),
            cancelled: Arc::new(AtomicBool::new(false)),
            reply: reply.clone(),
            spans: None,
        }
    }
}

pub struct Completion {
    pub request_id: u64,
    pub slot: SlotRef,
    pub result: Result<Prediction, InferError>,
}

/// The submitting side; cloned into every connection. A std channel, not
/// tokio's: the model thread is a plain thread and needs a receive with a
/// timeout (to keep pinging the watchdog while idle).
///
/// The bound is on requests queued or running (the `in_flight` counter),
/// not on the channels alone, so that jobs the batcher holds while it
/// waits to fill a batch, and JPEGs being decoded, count too: past
/// `capacity` a request is refused at once.
#[derive(Clone)]
pub struct JobQueue {
    /// To the batcher.
    tx: SyncSender<Job>,
    /// To the decode stage (JPEG jobs).
    jpeg_tx: SyncSender<Job>,
    capacity: u64,
    counters: Arc<Counters>,
}

/// The receiving ends, for the model thread.
pub struct Queues {
    /// Jobs ready to batch: inputs in their slots, and decoded JPEGs.
    pub ready: Receiver<Job>,
    /// Jobs whose slot holds a JPEG to decode first.
    pub jpegs: Receiver<Job>,
    /// Where the decode stage passes decoded jobs on to `ready`. It keeps
    /// `ready` open: whoever holds it must drop it when `jpegs` closes
    /// (the stage does), or when nothing decodes.
    pub decoded: SyncSender<Job>,
}

impl JobQueue {
    pub fn new(capacity: usize, counters: Arc<Counters>) -> (Self, Queues) {
        let (tx, ready) = sync_channel(capacity.max(1));
        let (jpeg_tx, jpegs) = sync_channel(capacity.max(1));
        let queues = Queues { ready, jpegs, decoded: tx.clone() };
        (Self { tx, jpeg_tx, capacity: capacity as u64, counters }, queues)
    }

    /// Queues a job without blocking, or hands it back with the reason.
    /// (The job comes back by value so that the caller can answer it.)
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), (Job, InferError)> {
        let depth = self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let refused = if depth >= self.capacity {
            Err((job, InferError::QueueFull))
        } else {
            let tx = if job.payload == Payload::Input { &self.tx } else { &self.jpeg_tx };
            tx.try_send(job).map_err(|e| match e {
                TrySendError::Full(job) => (job, InferError::QueueFull),
                TrySendError::Disconnected(job) => (job, InferError::NotReady),
            })
        };
        if refused.is_err() {
            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        refused
    }
}
