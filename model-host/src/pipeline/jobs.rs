//! The queue between connection tasks and the model thread.
//!
//! A connection turns a checked `Infer` into a [`Job`] and submits it; the
//! queue is bounded, so past its capacity a request is refused at once
//! instead of waiting without end. The model thread answers each job with
//! a [`Completion`] on the connection's own channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use protocol::shm::Segment;
use protocol::{InferError, Payload, Prediction, SlotRef};
use tokio::sync::mpsc;

use crate::counters::Counters;

pub struct Job {
    pub request_id: u64,
    pub slot: SlotRef,
    /// Keeps the gateway's mapping alive until the model has read the slot,
    /// even if the gateway disconnects meanwhile.
    pub segment: Arc<Segment>,
    pub top_k: u32,
    /// What the slot holds: the input, or a JPEG for the host to decode
    /// (checked against the slot and the host's offer on arrival).
    pub payload: Payload,
    /// The HTTP request id, for log lines about this request.
    pub tag: String,
    pub arrived: Instant,
    pub deadline: Instant,
    /// Set when the gateway cancels or disconnects: skip before GPU work.
    pub cancelled: Arc<AtomicBool>,
    pub reply: mpsc::UnboundedSender<Completion>,
}

impl Job {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Answers the job; a gone connection is fine (its slots went with it).
    pub fn finish(self, result: Result<Prediction, InferError>) {
        let _ = self.reply.send(Completion { request_id: self.request_id, slot: self.slot, result });
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
/// not on the channel alone, so that jobs the batcher holds while it waits
/// to fill a batch count too: past `capacity` a request is refused at once.
#[derive(Clone)]
pub struct JobQueue {
    tx: SyncSender<Job>,
    capacity: u64,
    counters: Arc<Counters>,
}

impl JobQueue {
    pub fn new(capacity: usize, counters: Arc<Counters>) -> (Self, Receiver<Job>) {
        let (tx, rx) = sync_channel(capacity.max(1));
        (Self { tx, capacity: capacity as u64, counters }, rx)
    }

    /// Queues a job without blocking, or hands it back with the reason.
    /// (The job comes back by value so that the caller can answer it.)
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), (Job, InferError)> {
        let depth = self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let refused = if depth >= self.capacity {
            Err((job, InferError::QueueFull))
        } else {
            self.tx.try_send(job).map_err(|e| match e {
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
