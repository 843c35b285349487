//! The host's phase (starting, loading, warming, ready, ...) and the startup
//! timing breakdown, published to the log and to every gateway.

use std::time::Instant;

use protocol::{Phase, StartupTimings};
use tokio::sync::watch;

/// Owned by whoever drives startup; every change is logged and broadcast.
pub struct PhaseReporter {
    tx: watch::Sender<Phase>,
    /// When `main` started: the zero of every startup milestone.
    process_start: Instant,
    timings: StartupTimings,
}

impl PhaseReporter {
    pub fn new(process_start: Instant) -> (Self, watch::Receiver<Phase>) {
        let (tx, rx) = watch::channel(Phase::Starting);
        (Self { tx, process_start, timings: StartupTimings::default() }, rx)
    }

    pub fn set(&self, phase: Phase) {
        tracing::info!(phase = phase.name(), detail = ?phase, "host phase");
        self.tx.send_replace(phase);
    }

    fn elapsed_ms(&self) -> f64 {
        self.process_start.elapsed().as_secs_f64() * 1e3
    }

    pub fn device_ready(&mut self, device: &str) {
        self.timings.device_ready_ms = self.elapsed_ms();
        tracing::info!(device, ms_since_start = self.timings.device_ready_ms, "device ready");
        self.set(Phase::Loading);
    }

    pub fn weights_loaded(&mut self) {
        self.timings.weights_loaded_ms = self.elapsed_ms();
        tracing::info!(ms_since_start = self.timings.weights_loaded_ms, "weights loaded");
    }

    pub fn warming(&self, done: u32, total: u32) {
        self.set(Phase::Warming { done, total });
    }

    pub fn ready(&mut self) -> StartupTimings {
        self.timings.warmup_done_ms = self.elapsed_ms();
        let t = self.timings;
        tracing::info!(
            device_ready_ms = t.device_ready_ms,
            weights_loaded_ms = t.weights_loaded_ms,
            warmup_done_ms = t.warmup_done_ms,
            "ready: startup breakdown (ms since process start)"
        );
        self.set(Phase::Ready(t));
        t
    }

    pub fn failed(&self, reason: String) {
        tracing::error!(%reason, "startup failed");
        self.set(Phase::Failed { reason });
    }

    /// Another handle on the same channel, for the drain on shutdown.
    pub fn sender(&self) -> watch::Sender<Phase> {
        self.tx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_are_monotonic_and_end_ready() {
        let (mut reporter, rx) = PhaseReporter::new(Instant::now());
        reporter.device_ready("cpu");
        assert_eq!(*rx.borrow(), Phase::Loading);
        reporter.weights_loaded();
        reporter.warming(1, 2);
        assert_eq!(*rx.borrow(), Phase::Warming { done: 1, total: 2 });
        let t = reporter.ready();
        assert!(t.device_ready_ms <= t.weights_loaded_ms && t.weights_loaded_ms <= t.warmup_done_ms);
        assert!(rx.borrow().is_ready());
    }
}
