//! gateway binary: parse flags, set up logging, bind, run.
#![forbid(unsafe_code)]

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use gateway::Config;

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let config = Config::parse();
    config.validate().map_err(anyhow::Error::msg)?;
    gateway_imaging::threads::start().map_err(anyhow::Error::msg)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        runtime.worker_threads(threads.into());
    }
    runtime.enable_all().build().context("starting the tokio runtime")?.block_on(serve(config, started))
}

async fn serve(config: Config, started: Instant) -> anyhow::Result<()> {
    let telemetry = service::telemetry::init(config.log_format, &config.traces, "splitserve-gateway")?;
    let held = held_sockets().context("LISTEN_FDS sockets")?;
    let (listener, source) = http_listener(&config, held.http).await?;
    let grpc = grpc_listener(&config, held.grpc).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        grpc_addr = ?grpc.as_ref().and_then(|g| g.local_addr().ok()),
        socket_from = source,
        host_sockets = ?config.host_sockets(),
        host_dir = ?config.host_dir,
        worker_threads = ?config.worker_threads,
        startup_ms = started.elapsed().as_secs_f64() * 1e3,
        "gateway listening"
    );
    raise_fd_limit();
    let listeners = gateway::Listeners { http: listener, grpc };
    let ran = gateway::run(config, listeners, service::shutdown_signal("finishing in-flight requests")).await;
    telemetry.shutdown().await;
    ran.map_err(anyhow::Error::msg)?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Sockets systemd (or scripts/dev, or a test) holds and passes as
/// LISTEN_FDS, so that restarts never refuse a connection. LISTEN_FDNAMES
/// tells them apart: `grpc` is the gRPC socket (gateway-grpc.socket's
/// FileDescriptorName); any other name, or none, is HTTP's.
struct Held {
    http: Option<std::net::TcpListener>,
    grpc: Option<std::net::TcpListener>,
}

fn held_sockets() -> anyhow::Result<Held> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES").map(|n| n.split(':').map(String::from).collect()).unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut held = Held { http: None, grpc: None };
    for index in 0..fds.len() {
        let Some(socket) = fds.take_tcp_listener(index)? else { continue };
        socket.set_nonblocking(true)?;
        let slot = if names.get(index).map(String::as_str) == Some("grpc") { &mut held.grpc } else { &mut held.http };
        if slot.is_none() {
            *slot = Some(socket);
        }
    }
    Ok(held)
}

/// The held HTTP socket, else a socket of our own on --listen.
async fn http_listener(config: &Config, held: Option<std::net::TcpListener>) -> anyhow::Result<(tokio::net::TcpListener, &'static str)> {
    if let Some(held) = held {
        return Ok((tokio::net::TcpListener::from_std(held)?, "LISTEN_FDS"));
    }
    let own = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    Ok((own, "--listen"))
}

/// The held gRPC socket, else --grpc-listen (which must bind), else
/// Triton's port when it is free; none with --no-grpc.
async fn grpc_listener(config: &Config, held: Option<std::net::TcpListener>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if config.no_grpc {
        return Ok(None);
    }
    if let Some(held) = held {
        return Ok(Some(tokio::net::TcpListener::from_std(held)?));
    }
    if let Some(addr) = config.grpc_listen {
        return Ok(Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --grpc-listen {addr}"))?));
    }
    match tokio::net::TcpListener::bind(Config::DEFAULT_GRPC_LISTEN).await {
        Ok(own) => Ok(Some(own)),
        Err(e) => {
            tracing::warn!(addr = Config::DEFAULT_GRPC_LISTEN, error = %e, "gRPC not served: the default port is taken (set --grpc-listen)");
            Ok(None)
        }
    }
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
