//! model-host binary: parse flags, set up logging, bind, run.
#![forbid(unsafe_code)]

use std::time::Instant;

use clap::Parser;
use model_host::Config;
use model_host::control::socket as control_socket;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let process_start = Instant::now();
    let config = Config::parse();
    let telemetry = service::telemetry::init(config.log_format, &config.traces, "splitserve-model-host")?;
    tracing::info!(pid = std::process::id(), socket = %config.socket.display(), model = %config.model.display(), "model-host starting");
    let cache_dir = model_host::config::cache_dir(config.cache_dir.as_deref());
    tracing::info!(dir = ?cache_dir, "frozen-module cache");
    model_host::model::frozen_cache::configure(cache_dir);
    let listener = control_socket::bind(&config.socket, config.socket_mode)?;
    let ran = model_host::run(config, listener, process_start, service::shutdown_signal("draining")).await;
    telemetry.shutdown().await;
    Ok(ran?)
}
