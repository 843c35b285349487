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

/// The job table for `model`, opened from its directory under the state
/// directory (one per model name, so two hosts of different models may
/// share a state directory).
pub fn open(config: &Config, model: &str, iterative: &IterativeConfig, max_batch: usize) -> Result<Arc<JobTable>, HostError> {
    let dir = jobs_dir(&config.state_dir, model);
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

pub fn jobs_dir(state_dir: &Path, model: &str) -> PathBuf {
    state_dir.join("jobs").join(model)
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
