//! What every gateway connection of one host shares.

use std::sync::Arc;

use protocol::{ModelInfo, Phase};
use tokio::sync::watch;

use crate::counters::Counters;
use crate::pipeline::jobs::JobQueue;

/// What every connection shares.
pub struct HostContext {
    pub model: ModelInfo,
    pub phase: watch::Receiver<Phase>,
    pub jobs: JobQueue,
    /// An iterative model's jobs (None for other kinds).
    pub job_table: Option<Arc<crate::jobs::JobTable>>,
    pub counters: Arc<Counters>,
    pub slots_per_gateway: u32,
    pub shm_mode: u32,
    pub host_pid: u32,
    /// Who may connect (SO_PEERCRED check in the accept loop).
    pub peers: crate::control::peer_auth::PeerPolicy,
    /// Memory and GPU figures for Status.
    pub resources: crate::resources::Resources,
}

#[cfg(test)]
impl HostContext {
    /// For the control room's unit tests: a context for a model of `kind`
    /// with 2 slots per gateway and a queue of 4, and the job queue's
    /// receiving ends (the model thread's).
    pub(crate) fn for_test(kind: protocol::ModelKind, phase: watch::Receiver<Phase>) -> (Self, crate::pipeline::jobs::Queues) {
        let counters = Arc::new(Counters::new(&[1]));
        let (jobs, job_rx) = JobQueue::new(4, counters.clone());
        let model = ModelInfo { name: "m".into(), version: "1".into(), description: String::new(), kind, max_batch_size: 2, device: "cpu".into(), host_decode: None };
        let ctx = HostContext {
            model,
            phase,
            jobs,
            job_table: None,
            counters,
            slots_per_gateway: 2,
            shm_mode: 0o600,
            host_pid: std::process::id(),
            peers: crate::control::peer_auth::PeerPolicy::new(&[], &[]).expect("own uid"),
            resources: crate::resources::Resources::open("cpu"),
        };
        (ctx, job_rx)
    }

    /// A 2x2 grayscale classifier with two labels.
    pub(crate) fn test_classifier() -> protocol::ModelKind {
        protocol::ModelKind::Classifier {
            input: protocol::ImageShape { width: 2, height: 2, channels: 1 },
            labels: vec!["a".into(), "b".into()],
        }
    }
}
