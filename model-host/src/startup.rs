//! The host's phase (starting, loading, warming, ready, ...) and the startup
//! timing breakdown, published to the log and to every gateway.

use std::time::Instant;

use protocol::{Phase, StartupTimings};
use tokio::sync::watch;

use crate::notify::Notifier;

/// Owned by whoever drives startup; every change is logged, broadcast to
/// gateways, and told to systemd.
pub struct PhaseReporter {
    tx: watch::Sender<Phase>,
    /// When `main` started: the zero of every startup milestone.
    process_start: Instant,
    timings: StartupTimings,
    notifier: Notifier,
    /// The last 5% step of the file's read reported (see [`Self::loading`]).
    loading_step: Option<u64>,
}

/// The one-line status systemd shows for a phase.
pub fn status_line(phase: &Phase) -> String {
    phase.describe()
}

impl PhaseReporter {
    pub fn new(process_start: Instant, notifier: Notifier) -> (Self, watch::Receiver<Phase>) {
        let (tx, rx) = watch::channel(Phase::Starting);
        (Self { tx, process_start, timings: StartupTimings::default(), notifier, loading_step: None }, rx)
    }

    pub fn set(&self, phase: Phase) {
        tracing::info!(phase = phase.name(), detail = ?phase, "host phase");
        let line = status_line(&phase);
        match &phase {
            Phase::Ready(_) => self.notifier.ready(&line),
            Phase::Starting | Phase::Loading { .. } | Phase::Warming { .. } => self.notifier.progress(&line),
            Phase::Draining | Phase::Failed { .. } => self.notifier.status(&line),
        }
        self.tx.send_replace(phase);
    }

    fn elapsed_ms(&self) -> f64 {
        self.process_start.elapsed().as_secs_f64() * 1e3
    }

    pub fn device_ready(&mut self, device: &str) {
        self.timings.device_ready_ms = self.elapsed_ms();
        tracing::info!(device, ms_since_start = self.timings.device_ready_ms, "device ready");
        self.set(Phase::Loading { read: 0, total: 0 });
    }

    /// The model file read so far (`read` of `total` bytes), as its reads
    /// happen: a new phase (logged, told to systemd and the gateways) at
    /// each 5% of the file, and when it is all read.
    pub fn loading(&mut self, read: u64, total: u64) {
        let step = (read.min(total) * 20).checked_div(total).unwrap_or(0);
        if self.loading_step.replace(step) == Some(step) {
            return;
        }
        self.set(Phase::Loading { read: read.min(total), total });
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
        let notifier = Notifier::from_env(std::time::Duration::from_secs(1));
        let (mut reporter, rx) = PhaseReporter::new(Instant::now(), notifier);
        reporter.device_ready("cpu");
        assert_eq!(*rx.borrow(), Phase::Loading { read: 0, total: 0 });
        for read in [0, 10, 49, 50, 51, 99, 100] {
            reporter.loading(read, 100);
        }
        // Reported at each 5% step only: 0, 10, 45, 50, 95 and 100 here.
        assert_eq!(*rx.borrow(), Phase::Loading { read: 100, total: 100 });
        reporter.weights_loaded();
        reporter.warming(1, 2);
        assert_eq!(*rx.borrow(), Phase::Warming { done: 1, total: 2 });
        let t = reporter.ready();
        assert!(t.device_ready_ms <= t.weights_loaded_ms && t.weights_loaded_ms <= t.warmup_done_ms);
        assert!(rx.borrow().is_ready());
    }
}
