//! Counters shared by the connection tasks and the model thread; read by
//! `Status` requests.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

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
}

impl Counters {
    pub fn get32(c: &AtomicU32) -> u32 {
        c.load(Relaxed)
    }

    pub fn get64(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}
