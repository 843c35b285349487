//! gateway: a stateless HTTP front end for the model-host.
//!
//! Request path, in file order:
//! - [`routes`]: the axum router; [`routes::predict`] is the main handler.
//! - [`upload`]: body size and type checks at the edge (413, 415).
//! - [`decode`]: decode and resize to the model's input on the CPU (400,
//!   413), and [`postprocess`]: a vision model's answer back on the
//!   client's image; both in the crate `gateway-imaging` (gateway/imaging/).
//! - [`host_client`]: the hosts this gateway knows (found and kept linked
//!   on their own) and the route to one for each request; lease a slot,
//!   write the pixels, send the request, await the answer; the crate
//!   `gateway-host-client` (gateway/host-client/).
//!
//! Those two, and the generated gRPC code (gateway/grpc-proto/), are crates
//! of their own so that a save in `scripts/dev` recompiles only this one.
//! - [`system_shm`]: client shared-memory regions registered by name
//!   (`--system-shared-memory`), for tensors that travel outside the body.
//! - [`compression`]: gzip/deflate request bodies in, compressed answers out.
//! - [`error`]: every client-visible error and its HTTP status, in one place.
//! - [`metrics`]: `GET /metrics`; [`request_id`]: X-Request-Id on every log line.
//! - [`openapi`]: `GET /openapi.json`, made from the routes' own declarations,
//!   and `GET /docs` (Swagger UI, compiled in).
//! - [`grpc`]: the same v2 protocol over gRPC (tonic), on its own port,
//!   sharing the state and the inference path below the transport.
//!
//! This crate never links libtorch or CUDA.
#![forbid(unsafe_code)]

// scripts/dev's build: the dependencies linked from one shared library.
#[cfg(feature = "dylib")]
#[allow(unused_imports)]
use gateway_dylib as _;

pub(crate) mod compression;
pub mod config;
pub use gateway_imaging::decode;
pub(crate) mod error;
pub(crate) mod failure_log;
pub mod grpc;
pub(crate) use gateway_host_client as host_client;
pub(crate) mod metrics;
pub(crate) mod openapi;
pub use gateway_imaging::postprocess;
pub(crate) mod request_id;
pub(crate) mod routes;
pub(crate) mod serve;
pub(crate) mod system_shm;
pub(crate) mod upload;

use std::future::Future;
use std::time::Duration;

pub use config::Config;
use host_client::{Fleet, FleetConfig, HostTrust};

/// Per-request limits, from the config.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub request_timeout: Duration,
    /// A body not fully received within this gets 408.
    pub body_timeout: Duration,
    pub default_top_k: u32,
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// Every host this gateway knows, by model and version.
    pub fleet: Fleet,
    pub limits: RequestLimits,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The v2 statistics extension's counters, per gateway process.
    pub v2_stats: std::sync::Arc<routes::v2::stats::StatsByModel>,
    /// The system_shared_memory extension's regions; `None` unless the
    /// operator turned it on (`--system-shared-memory`).
    pub system_shm: Option<std::sync::Arc<system_shm::Registry>>,
}

impl AppState {
    /// Fails for a host directory or user list that cannot be used.
    pub fn new(config: &Config) -> Result<Self, String> {
        let fleet = Fleet::start(FleetConfig {
            sockets: config.host_sockets(),
            dir: config.host_dir.clone(),
            trust: HostTrust::new(&config.allowed_host_uids).map_err(|e| format!("--allowed-host-uids: {e}"))?,
            gateway_name: config.gateway_name(),
            max_waiting: config.max_waiting,
        })?;
        Ok(Self {
            fleet,
            limits: RequestLimits {
                max_body_bytes: config.max_body_bytes,
                max_pixels: config.max_pixels,
                request_timeout: config.request_timeout(),
                body_timeout: Duration::from_millis(config.body_timeout_ms),
                default_top_k: config.default_top_k,
            },
            metrics: metrics::handle(),
            v2_stats: Default::default(),
            system_shm: config.system_shared_memory.then(Default::default),
        })
    }
}

/// The sockets a gateway serves: HTTP always, gRPC unless turned off.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    pub grpc: Option<tokio::net::TcpListener>,
}

/// Serves HTTP (and gRPC) on `listeners` until `shutdown` resolves, then
/// lets in-flight requests finish for at most the configured grace period.
/// Fails at once for a configuration it cannot serve with (an untrusted
/// --host-dir).
pub async fn run(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), String> {
    let draining = serve::Draining::default();
    let state = AppState::new(&config)?;
    // Connections wait in the listening socket's queue meanwhile, unrefused.
    let waited = std::time::Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let linked = tokio::select! {
        linked = state.fleet.wait_settled(config.link_wait()) => linked,
        () = &mut shutdown => return Ok(()),
    };
    tracing::info!(linked, waited_ms = waited.elapsed().as_secs_f64() * 1e3, "accepting connections");
    // One signal, seen by both servers.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let grpc = listeners.grpc.map(|listener| tokio::spawn(grpc::serve(listener, state.clone(), config.grpc_limits(), until_stopped())));
    let app = routes::router(state)
        .layer(axum::middleware::from_fn_with_state(draining.clone(), serve::close_when_draining));
    let limits = serve::ServeLimits {
        header_timeout: config.header_timeout(),
        grace: config.shutdown_grace(),
        lame_duck: Duration::from_millis(config.lame_duck_ms),
    };
    let http = serve::serve(listeners.http, app, draining, limits, until_stopped());
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(http, signal);
    if let Some(grpc) = grpc {
        let _ = grpc.await;
    }
    Ok(())
}
