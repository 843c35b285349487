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
    pub counters: Arc<Counters>,
    pub slots_per_gateway: u32,
    pub shm_mode: u32,
    pub host_pid: u32,
    /// Who may connect (SO_PEERCRED check in the accept loop).
    pub peers: crate::control::peer_auth::PeerPolicy,
}
