//! When to close a batch: the dynamic batcher's policy, as plain state.
//!
//! The same rules as Triton's dynamic batcher, so a model config written
//! for one reads the same here:
//! - a full batch (`max_batch_size`) runs at once;
//! - otherwise the largest preferred batch size that the queue can fill
//!   runs at once;
//! - otherwise the batch waits for more requests, but the oldest request
//!   never waits longer than `max_queue_delay`: then whatever is queued runs.
//!
//! With `max_queue_delay = 0` (the default) nothing waits: the model takes
//! whatever has queued up while it was busy, which is already a batch under
//! load and a batch of one when idle.
//!
//! No clocks or channels here: the caller says how many requests are queued
//! and how long the oldest has waited, so every rule is unit-tested.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_batch_size: usize,
    /// The longest the oldest queued request may wait for others.
    pub max_queue_delay: Duration,
    /// Sizes worth running at once without waiting (sorted, ascending).
    pub preferred: Vec<usize>,
}

/// What the model thread should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run a batch of this many of the oldest queued requests.
    Run(usize),
    /// Wait at most this long for more requests, then ask again.
    Wait(Duration),
    /// Nothing is queued.
    Empty,
}

impl BatchPolicy {
    pub fn new(max_batch_size: usize, max_queue_delay: Duration, preferred: &[usize]) -> Self {
        let mut preferred: Vec<usize> = preferred.iter().copied().filter(|&n| n >= 1 && n <= max_batch_size).collect();
        preferred.sort_unstable();
        preferred.dedup();
        Self { max_batch_size: max_batch_size.max(1), max_queue_delay, preferred }
    }

    /// `queued` requests wait; the oldest has waited `oldest_waited`.
    pub fn decide(&self, queued: usize, oldest_waited: Duration) -> Decision {
        if queued == 0 {
            return Decision::Empty;
        }
        if queued >= self.max_batch_size {
            return Decision::Run(self.max_batch_size);
        }
        if oldest_waited >= self.max_queue_delay {
            return Decision::Run(queued);
        }
        if let Some(&best) = self.preferred.iter().rev().find(|&&p| p <= queued) {
            return Decision::Run(best);
        }
        Decision::Wait(self.max_queue_delay - oldest_waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_a_delay_whatever_is_queued_runs_at_once() {
        let p = BatchPolicy::new(8, Duration::ZERO, &[]);
        assert_eq!(p.decide(0, Duration::ZERO), Decision::Empty);
        assert_eq!(p.decide(1, Duration::ZERO), Decision::Run(1));
        assert_eq!(p.decide(5, Duration::ZERO), Decision::Run(5));
        assert_eq!(p.decide(20, Duration::ZERO), Decision::Run(8));
    }

    #[test]
    fn a_partial_batch_waits_until_the_oldest_has_waited_the_delay() {
        let p = BatchPolicy::new(8, 2 * MS, &[]);
        assert_eq!(p.decide(3, Duration::ZERO), Decision::Wait(2 * MS));
        assert_eq!(p.decide(3, MS / 2), Decision::Wait(MS + MS / 2));
        assert_eq!(p.decide(3, 2 * MS), Decision::Run(3));
        assert_eq!(p.decide(3, 5 * MS), Decision::Run(3));
    }

    #[test]
    fn a_full_batch_never_waits() {
        let p = BatchPolicy::new(8, Duration::from_secs(1), &[]);
        assert_eq!(p.decide(8, Duration::ZERO), Decision::Run(8));
        assert_eq!(p.decide(9, Duration::ZERO), Decision::Run(8));
    }

    #[test]
    fn the_largest_preferred_size_that_can_be_filled_runs_at_once() {
        let p = BatchPolicy::new(32, 10 * MS, &[16, 4, 64, 0]);
        assert_eq!(p.preferred, vec![4, 16], "out-of-range sizes dropped, sorted");
        assert_eq!(p.decide(3, Duration::ZERO), Decision::Wait(10 * MS));
        assert_eq!(p.decide(4, Duration::ZERO), Decision::Run(4));
        assert_eq!(p.decide(7, Duration::ZERO), Decision::Run(4));
        assert_eq!(p.decide(17, Duration::ZERO), Decision::Run(16));
        // Once the delay is up everything queued goes, preferred or not.
        assert_eq!(p.decide(7, 10 * MS), Decision::Run(7));
    }
}
