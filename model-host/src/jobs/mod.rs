//! Jobs: how the host serves an iterative model (model.toml's
//! `[iterative]`), whose answer takes many steps.
//!
//! - [`table`]: every job from submit to expiry, the queue, the bounds;
//!   what connection tasks ask (submit, status, cancel, result).
//! - [`store`]: the jobs on disk under the state directory, so a restarted
//!   host keeps its results and fails what it was running.
//! - [`runner`]: the model's thread, running the steps of all running jobs
//!   in one batch (jobs join and leave between steps).

pub mod runner;
pub mod store;
pub mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::jobs::IterativeModel;

pub use table::{JobTable, Limits};

use crate::config::Config;
use crate::error::HostError;
use crate::model::config::iterative::IterativeConfig;

/// The job table of this host, opened from its directory under the state
/// directory ([`jobs_dir`]).
pub fn open(config: &Config, model: &str, iterative: &IterativeConfig, max_batch: usize) -> Result<Arc<JobTable>, HostError> {
    let dir = jobs_dir(&config.state_dir, &config.socket);
    let limits = Limits {
        max_queued: config.job_max_queued,
        retention: Duration::from_secs(config.job_retention_secs),
        max_results: config.job_max_results as usize,
        max_result_bytes: config.job_max_result_bytes,
    };
    let startup = |e: std::io::Error| HostError::Startup(format!("job store {}: {e}", dir.display()));
    let store = store::Store::open(&dir).map_err(startup)?;
    let table = JobTable::open(store, model, iterative.clone(), limits, max_batch).map_err(startup)?;
    tracing::info!(dir = %dir.display(), tag = table.tag(), counts = ?table.counts(), "job store opened");
    Ok(Arc::new(table))
}

/// One directory per host, named after its control socket: that is what
/// names a host instance (systemd's `model-host@%i` gives each instance
/// its own socket, and a restarted host takes its socket back), while a
/// model's name does not (two versions, or two GPUs' replicas, of one
/// model may share a state directory). The store's lock refuses a second
/// host on the same directory.
pub fn jobs_dir(state_dir: &Path, socket: &Path) -> PathBuf {
    let name = socket.file_stem().map_or_else(|| "host".into(), |s| s.to_string_lossy().into_owned());
    state_dir.join("jobs").join(name)
}

/// What gateways are told about the model in the handshake.
pub fn model_info(table: &JobTable, config: &IterativeConfig) -> IterativeModel {
    IterativeModel {
        steps: config.steps,
        params: config.params.clone(),
        output: config.output,
        max_queued: table.limits().max_queued,
        host_tag: table.tag().to_string(),
    }
}
