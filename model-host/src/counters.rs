//! Counters shared by the connection tasks and the model thread; read by
//! `Status` requests, which is how gateways export them as metrics.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Why a request got no GPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    NoFreeSlot,
    NotReady,
    DeadlineExceeded,
    Cancelled,
    InvalidRequest,
}

impl Refused {
    const ALL: [Refused; 6] = [
        Refused::QueueFull,
        Refused::NoFreeSlot,
        Refused::NotReady,
        Refused::DeadlineExceeded,
        Refused::Cancelled,
        Refused::InvalidRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::QueueFull => "queue_full",
            Refused::NoFreeSlot => "no_free_slot",
            Refused::NotReady => "not_ready",
            Refused::DeadlineExceeded => "deadline_exceeded",
            Refused::Cancelled => "cancelled",
            Refused::InvalidRequest => "invalid_request",
        }
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    /// Times this process loaded the model: 1 once ready, and it stays 1
    /// however many gateways come and go.
    pub model_loads: AtomicU32,
    pub connections: AtomicU32,
    /// Slots leased or in flight, over all connections.
    pub leased_slots: AtomicU32,
    /// Requests accepted into the queue and not yet answered.
    pub in_flight: AtomicU64,
    pub requests_done: AtomicU64,
    pub batches_done: AtomicU64,
    pub copy_us_total: AtomicU64,
    pub inference_us_total: AtomicU64,
    /// JPEGs decoded on the device (sent encoded by gateways).
    pub jpegs_decoded: AtomicU64,
    /// Connections dropped by the peer-credential check.
    pub peers_refused: AtomicU64,
    /// Bytes of the model's weights on its device, set once it is loaded.
    pub model_bytes: AtomicU64,
    /// (batch shape, batches run at it); shapes fixed at startup.
    batches_by_size: Vec<(u32, AtomicU64)>,
    refused: [AtomicU64; 6],
    /// Batch sizes with a captured CUDA graph: those captured before READY,
    /// then each one captured after it.
    graphs: std::sync::Mutex<Vec<u32>>,
}

impl Counters {
    pub fn new(batch_shapes: &[u32]) -> Self {
        Self { batches_by_size: batch_shapes.iter().map(|&s| (s, AtomicU64::new(0))).collect(), ..Self::default() }
    }

    pub fn get32(c: &AtomicU32) -> u32 {
        c.load(Relaxed)
    }

    pub fn get64(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    pub fn refuse(&self, why: Refused) {
        let i = Refused::ALL.iter().position(|r| *r == why).expect("ALL lists every variant");
        self.refused[i].fetch_add(1, Relaxed);
    }

    pub fn refused(&self) -> Vec<(String, u64)> {
        let mut out: Vec<_> =
            Refused::ALL.iter().zip(&self.refused).map(|(r, c)| (r.as_str().to_string(), c.load(Relaxed))).collect();
        out.push(("peer_not_allowed".to_string(), self.peers_refused.load(Relaxed)));
        out
    }

    pub fn batch_run(&self, shape: usize) {
        if let Some((_, c)) = self.batches_by_size.iter().find(|(s, _)| *s as usize == shape) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn add_graphs(&self, sizes: &[i64]) {
        let mut graphs = self.graphs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        graphs.extend(sizes.iter().map(|&n| n as u32));
        graphs.sort_unstable();
        graphs.dedup();
    }

    pub fn graphs(&self) -> Vec<u32> {
        self.graphs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn batches_by_size(&self) -> Vec<(u32, u64)> {
        self.batches_by_size.iter().map(|(s, c)| (*s, c.load(Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_batch_shapes_are_counted_by_name() {
        let c = Counters::new(&[1, 8]);
        c.refuse(Refused::QueueFull);
        c.refuse(Refused::QueueFull);
        c.refuse(Refused::Cancelled);
        c.batch_run(8);
        c.batch_run(3); // not a shape: ignored
        let refused = c.refused();
        assert!(refused.contains(&("queue_full".to_string(), 2)));
        assert!(refused.contains(&("cancelled".to_string(), 1)));
        assert_eq!(c.batches_by_size(), vec![(1, 0), (8, 1)]);
    }

    #[test]
    fn graphs_captured_after_ready_join_those_before_in_order() {
        let c = Counters::new(&[1, 2, 4, 8]);
        assert!(c.graphs().is_empty());
        c.add_graphs(&[1, 8]);
        c.add_graphs(&[4]);
        c.add_graphs(&[2, 4]);
        assert_eq!(c.graphs(), vec![1, 2, 4, 8]);
    }
}
