//! gateway binary: parse flags, set up logging, bind, run.
#![forbid(unsafe_code)]

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use gateway::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::parse();
    config.validate().map_err(anyhow::Error::msg)?;
    config.log_format.init();
    let (listener, source) = listener(&config).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        socket_from = source,
        host_sockets = ?config.host_sockets(),
        host_dir = ?config.host_dir,
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "gateway listening"
    );
    raise_fd_limit();
    gateway::run(config, listener, service::shutdown_signal("finishing in-flight requests")).await.map_err(anyhow::Error::msg)?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// The listening socket: the one systemd (or scripts/dev, or a test) holds
/// and passes as LISTEN_FDS, so that restarts never refuse a connection;
/// else a socket of our own on --listen.
async fn listener(config: &Config) -> anyhow::Result<(tokio::net::TcpListener, &'static str)> {
    if let Some(held) = listenfd::ListenFd::from_env().take_tcp_listener(0).context("LISTEN_FDS socket")? {
        held.set_nonblocking(true)?;
        return Ok((tokio::net::TcpListener::from_std(held)?, "LISTEN_FDS"));
    }
    let own = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    Ok((own, "--listen"))
}

/// Idle and slow clients each hold a descriptor; the usual soft limit of
/// 1024 would let a thousand of them lock real clients out. Raise the soft
/// limit to the hard one (systemd's default hard limit is 512K).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok()
    {
        tracing::info!(from = soft, to = hard, "raised the open-file limit");
    }
}
