//! model-host: the one process that owns the model.
//!
//! Request path, room by room:
//! - [`control`]: the Unix socket, one task per gateway (handshake, then
//!   read a message, dispatch, reply), each gateway's slot leases.
//! - [`pipeline`]: the bounded job queue, the batcher and its policy, the
//!   feeder that prepares the next batch, and the model's own thread.
//! - [`model`]: whichever kind model.toml declares, an image classifier
//!   (forward, top-k) or a tensor model (named tensors in and out), with
//!   its config, device and pre-processing.
//!
//! - [`jobs`]: an iterative model instead (model.toml's `[iterative]`):
//!   its job table, the store under the state directory, and the thread
//!   that steps every running job together.
//!
//! Around it: [`config`] (flags), [`startup`] (phases and timings),
//! [`notify`] (systemd), [`counters`], [`resources`] (memory and GPU
//! figures), [`error`].
// `unsafe` lives in one module, [`torch_shim`] (the libtorch shim).
#![deny(unsafe_code)]

// Public: what the binaries (`main`, `raw_bench`) use. The rest is
// crate-private, so that the compiler reports what nothing uses.
pub mod config;
pub mod control;
pub(crate) mod counters;
pub mod error;
pub(crate) mod jobs;
pub mod model;
pub(crate) mod notify;
pub(crate) mod pipeline;
pub(crate) mod resources;
pub(crate) mod startup;
pub(crate) mod torch_shim;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::Listener;
use protocol::{ImageShape, ModelInfo, Phase};

pub use config::Config;
use control::context::HostContext;
use control::{peer_auth, server, shm_sweep};
use counters::Counters;
pub use error::HostError;
use model::config::{self as model_config, ModelConfig, ModelKind};
use pipeline::jobs::JobQueue;
use pipeline::model_thread::ModelThread;
use startup::PhaseReporter;

/// Runs the host until `shutdown` resolves (then drains) or startup fails.
pub async fn run(
    config: Config,
    listener: Listener,
    process_start: Instant,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HostError> {
    let peers = peer_auth::PeerPolicy::new(&config.allowed_uids, &config.allowed_gids).map_err(HostError::Startup)?;
    tracing::info!(uids = ?peers.uids, gids = ?peers.gids, own_gid = peer_auth::own_gid(), "peers allowed on the control socket");
    let removed = shm_sweep::sweep_stale_segments();
    tracing::info!(removed, "swept stale shared-memory segments");
    let loaded = model_config::load(&config.model)?;
    let notifier = notify::Notifier::from_env(Duration::from_secs(config.startup_step_timeout_secs));
    let (reporter, phase) = PhaseReporter::new(process_start, notifier.clone());
    let phase_tx = reporter.sender();
    let counters = Arc::new(Counters::new(&loaded.config.batching.shapes()));
    let (job_queue, queues) = JobQueue::new(config.queue_capacity as usize, counters.clone());
    let (device_tx, device_rx) = tokio::sync::oneshot::channel();
    let model_config = loaded.config.clone();
    let job_table = match loaded.config.kind.clone() {
        ModelKind::Iterative(iterative) => {
            let max_batch = loaded.config.batching.max_batch_size as usize;
            let table = jobs::open(&config, &loaded.config.name, &iterative, max_batch)?;
            jobs::runner::Runner {
                config: iterative,
                model: loaded,
                device: config.device,
                cpu_threads: config.cpu_threads,
                reporter,
                counters: counters.clone(),
                table: table.clone(),
                max_batch,
                step_interval: Duration::from_millis(config.job_step_interval_ms),
                device_ready: device_tx,
            }
            .spawn();
            // No slot request reaches an iterative model (the session
            // refuses its Infers before they queue): nothing reads these.
            drop(queues);
            Some(table)
        }
        _ => {
            spawn_model_thread(&config, loaded, reporter, counters.clone(), queues, notifier.clone(), device_tx);
            None
        }
    };

    // The device is known within milliseconds (before the weights load);
    // gateways need its name in the handshake.
    let device = match device_rx.await {
        Ok(ready) => ready,
        Err(_) => return Err(startup_failure(&phase)),
    };
    let model = model_info(&model_config, device, job_table.as_deref());
    let resources = resources::Resources::open(&model.device);
    let ctx = Arc::new(HostContext {
        model,
        phase: phase.clone(),
        jobs: job_queue,
        job_table: job_table.clone(),
        counters: counters.clone(),
        slots_per_gateway: config.slots_per_gateway,
        shm_mode: config.shm_mode,
        host_pid: std::process::id(),
        peers,
        resources,
    });

    let mut failed = phase.clone();
    tokio::select! {
        () = server::accept_loop(listener, ctx) => unreachable!("accept_loop never returns"),
        _ = failed.wait_for(|p| matches!(p, Phase::Failed { .. })) => return Err(startup_failure(&phase)),
        () = shutdown => {}
    }
    notifier.stopping();
    drain(&phase_tx, &counters, job_table.as_deref(), Duration::from_secs(config.drain_timeout_secs)).await;
    Ok(())
}

/// The model thread of an image classifier, tensor or vision model.
fn spawn_model_thread(
    config: &Config,
    loaded: model_config::LoadedConfig,
    reporter: PhaseReporter,
    counters: Arc<Counters>,
    queues: pipeline::jobs::Queues,
    notifier: notify::Notifier,
    device_tx: tokio::sync::oneshot::Sender<pipeline::model_thread::DeviceReady>,
) {
    ModelThread {
        model: loaded,
        device: config.device,
        cpu_threads: config.cpu_threads,
        spin: std::time::Duration::from_micros(config.spin_us),
        warm_up_threads_after_ready: config.warm_up_threads_after_ready as usize,
        load_headroom_mb: config.load_headroom_mb,
        reporter,
        counters,
        queues: Some(queues),
        notifier,
        nvjpeg: config.nvjpeg.clone(),
        device_ready: device_tx,
    }
    .spawn();
}

/// What gateways are told about the model in the handshake.
fn model_info(config: &ModelConfig, device: pipeline::model_thread::DeviceReady, jobs: Option<&jobs::JobTable>) -> ModelInfo {
    let kind = match &config.kind {
        ModelKind::Classifier(c) => protocol::ModelKind::Classifier {
            input: ImageShape { width: c.input.width, height: c.input.height, channels: c.input.channels },
            labels: c.output.labels.clone(),
        },
        ModelKind::Tensors(signature) => protocol::ModelKind::Tensors(signature.clone()),
        ModelKind::Vision(v) => protocol::ModelKind::Vision(v.model.clone()),
        ModelKind::Iterative(i) => {
            let table = jobs.expect("an iterative model's host opens its job table before the handshake");
            protocol::ModelKind::Iterative(jobs::model_info(table, i))
        }
    };
    ModelInfo {
        name: config.name.clone(),
        version: config.version.clone(),
        description: config.description.clone(),
        kind,
        max_batch_size: config.batching.max_batch_size,
        device: device.name,
        host_decode: device.host_decode,
    }
}

fn startup_failure(phase: &tokio::sync::watch::Receiver<Phase>) -> HostError {
    match &*phase.borrow() {
        Phase::Failed { reason } => HostError::Startup(reason.clone()),
        other => HostError::Startup(format!("model thread ended in phase {}", other.name())),
    }
}

/// Refuses new work (gateways see "draining"), then waits a bounded time for
/// requests (and an iterative model's jobs) already queued or running.
/// Jobs still unfinished then are failed now, saying why, so that no
/// gateway reads them as running while the host is away.
async fn drain(phase: &tokio::sync::watch::Sender<Phase>, counters: &Counters, jobs: Option<&jobs::JobTable>, limit: Duration) {
    phase.send_replace(Phase::Draining);
    let started = Instant::now();
    let busy = || counters.in_flight.load(Relaxed) > 0 || jobs.is_some_and(|j| j.unfinished() > 0);
    while busy() && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = counters.in_flight.load(Relaxed);
    if let Some(jobs) = jobs {
        let failed = jobs.fail_unfinished(&format!("the model host stopped (SIGTERM) and its {} s drain ended before the job did", limit.as_secs()));
        tracing::info!(failed, "unfinished jobs failed");
    }
    tracing::info!(left, waited_ms = started.elapsed().as_millis() as u64, "drained; exiting");
}
