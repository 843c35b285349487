//! The dynamic batcher's moving part: pulls jobs from the queue into a
//! pending list, drops the ones nobody waits for any more, and asks
//! [`BatchPolicy`] when to close a batch.
//!
//! It runs on the model thread (no task of its own): between two batches
//! the thread calls [`Batcher::next`], which blocks at most as long as the
//! policy or the caller allows.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use protocol::InferError;

use crate::pipeline::batch::answer;
use crate::pipeline::batch_policy::{BatchPolicy, Decision};
use crate::pipeline::spin;
use crate::counters::{Counters, Refused};
use crate::pipeline::jobs::Job;

/// What the model thread got from the batcher.
pub enum Next {
    Batch(Vec<Job>),
    /// No batch is due within the wait: a chance to ping the watchdog, or
    /// to finish the batch already on the device.
    Idle,
    /// Every sender is gone and nothing is pending.
    Closed,
}

pub struct Batcher {
    policy: BatchPolicy,
    /// Jobs taken off the queue, oldest first; at most one batch's worth,
    /// so that the queue's bound still holds back everything else.
    pending: VecDeque<Job>,
    /// How long a wait for the next job polls before it sleeps (see
    /// [`crate::pipeline::spin`]).
    spin: Duration,
}

impl Batcher {
    pub fn new(policy: BatchPolicy, spin: Duration) -> Self {
        let pending = VecDeque::with_capacity(policy.max_batch_size);
        Self { policy, pending, spin }
    }

    /// The next batch, waiting at most `wait` for one to be due. `wait` is
    /// zero while a batch is still on the device: the thread then only
    /// takes a batch that is due now, and otherwise goes to collect the
    /// running one.
    pub fn next(&mut self, rx: &Receiver<Job>, wait: Duration, counters: &Counters) -> Next {
        let give_up = Instant::now() + wait;
        let mut closed = false;
        loop {
            closed |= self.pull(rx);
            self.drop_abandoned(counters);
            let now = Instant::now();
            let oldest = self.pending.front().map_or(Duration::ZERO, |j| now.saturating_duration_since(j.arrived));
            let until = match self.policy.decide(self.pending.len(), oldest) {
                Decision::Run(n) => return Next::Batch(self.pending.drain(..n).collect()),
                // No sender left: nothing more will come, run what is here.
                _ if closed && !self.pending.is_empty() => return Next::Batch(self.pending.drain(..).collect()),
                Decision::Empty if closed => return Next::Closed,
                Decision::Wait(d) => (now + d).min(give_up),
                Decision::Empty => give_up,
            };
            if now >= until {
                return Next::Idle;
            }
            match spin::recv_timeout(rx, until - now, self.spin) {
                Ok(job) => self.pending.push_back(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        }
    }

    /// Moves queued jobs into `pending`, up to one batch; true if the
    /// queue has no senders left.
    fn pull(&mut self, rx: &Receiver<Job>) -> bool {
        while self.pending.len() < self.policy.max_batch_size {
            match rx.try_recv() {
                Ok(job) => self.pending.push_back(job),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Answers cancelled and expired jobs now, before they cost GPU time
    /// or hold a batch open.
    fn drop_abandoned(&mut self, counters: &Counters) {
        if self.pending.iter().all(|j| !j.is_cancelled() && j.deadline > Instant::now()) {
            return;
        }
        let now = Instant::now();
        let (keep, gone): (VecDeque<Job>, VecDeque<Job>) =
            self.pending.drain(..).partition(|j| !j.is_cancelled() && j.deadline > now);
        self.pending = keep;
        for job in gone {
            if job.is_cancelled() {
                counters.refuse(Refused::Cancelled);
                answer(job, Err(InferError::Cancelled), counters);
            } else {
                counters.refuse(Refused::DeadlineExceeded);
                tracing::debug!(request_id = %job.tag, "deadline passed in the queue; skipped");
                answer(job, Err(InferError::DeadlineExceeded), counters);
            }
        }
    }
}
