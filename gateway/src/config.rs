//! Command-line and environment configuration of a gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
pub use service::LogFormat;

/// Where the packaged model-host.service listens.
pub const DEFAULT_HOST_SOCKET: &str = "/run/model-host/control.sock";

/// A stateless HTTP front end for the model-host: validates, decodes and
/// resizes images, and hands the pixels to the host through shared memory.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version)]
pub struct Config {
    /// Address to listen on for HTTP, unless a listening socket is passed
    /// in LISTEN_FDS (systemd socket activation, scripts/dev).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// A model-host's control socket; give it once per host (or a
    /// comma-separated list in the environment variable). With neither
    /// this nor --host-dir: /run/model-host/control.sock.
    #[arg(long, env = "GATEWAY_HOST_SOCKET", value_delimiter = ',')]
    pub host_socket: Vec<PathBuf>,

    /// A directory of model-host control sockets, watched: every host whose
    /// socket appears there is served, and dropped when its socket goes,
    /// with no gateway restart. It must be writable only by its owner, a
    /// trusted host user or root (the gateway refuses to start otherwise).
    #[arg(long, env = "GATEWAY_HOST_DIR")]
    pub host_dir: Option<PathBuf>,

    /// Users (names or uids, comma-separated) a host may run as, checked
    /// with SO_PEERCRED before the gateway sends it anything: a host gets
    /// users' images. Default: the gateway's own user and `model-host`.
    #[arg(long, env = "GATEWAY_ALLOWED_HOST_UIDS", value_delimiter = ',')]
    pub allowed_host_uids: Vec<service::IdSpec>,

    /// Threads that serve requests (tokio's async workers). Default: one
    /// per core. Decodes run on tokio's blocking threads and a segmenter's
    /// masks on a pool of their own, neither bounded by this.
    #[arg(long, env = "GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    /// Largest request body accepted, in bytes (413 above it, refused from
    /// the Content-Length header before the body is read when it has one).
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest image accepted, in pixels (width x height), checked from the
    /// image header before any pixel memory is allocated (413 above it).
    #[arg(long, env = "GATEWAY_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// Longest a request may take, in milliseconds, unless it asks for less
    /// with `?timeout_ms=` (504 past it).
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,

    /// A connection that has not sent a complete request head within this
    /// many milliseconds is closed (slow-header clients, idle keep-alives).
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// A request body not fully received within this many milliseconds
    /// gets 408.
    #[arg(long, env = "GATEWAY_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub body_timeout_ms: u64,

    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// After SIGTERM, milliseconds during which open keep-alive connections
    /// are still served, each answer saying `Connection: close`, before idle
    /// ones are closed (closing them at once races with clients sending).
    #[arg(long, env = "GATEWAY_LAME_DUCK_MS", default_value_t = 1_000)]
    pub lame_duck_ms: u64,

    /// At start, accept no HTTP connection until the host link is up, for
    /// at most this many milliseconds: a gateway restarted on a held socket
    /// (systemd's gateway.socket) leaves the requests that arrive meanwhile
    /// queued in the kernel instead of answering them 503 "connecting". A
    /// gateway whose host is away serves (503s, health) once this passes.
    #[arg(long, env = "GATEWAY_LINK_WAIT_MS", default_value_t = 2_000)]
    pub link_wait_ms: u64,

    /// Requests that may wait at this gateway for one of its slots at the
    /// host (the host's --slots-per-gateway) when all are in use; each
    /// waits at most its own deadline. Past this many, a request is
    /// answered 503 `overloaded` at once. 0: never wait.
    #[arg(long, env = "GATEWAY_MAX_WAITING", default_value_t = 1024)]
    pub max_waiting: u64,

    /// How many classes a prediction returns when the request does not say
    /// (`?top_k=`).
    #[arg(long, env = "GATEWAY_DEFAULT_TOP_K", default_value_t = 5)]
    pub default_top_k: u32,

    /// Offer the protocol's system_shared_memory extension
    /// (`/v2/systemsharedmemory/...`). Off by default because it lets any
    /// HTTP client that can reach the gateway name a POSIX shared-memory
    /// object on this machine that the gateway's user can open, and have the
    /// gateway map, read and write it: turn it on only where every client is
    /// a trusted local process.
    #[arg(long, env = "GATEWAY_SYSTEM_SHARED_MEMORY")]
    pub system_shared_memory: bool,

    /// Name this gateway gives itself in the host's logs (default: gateway-<pid>).
    #[arg(long, env = "GATEWAY_NAME")]
    pub name: Option<String>,

    /// Address to serve gRPC on (KServe v2 / Triton's
    /// inference.GRPCInferenceService and grpc.health.v1), unless a socket
    /// named `grpc` is passed in LISTEN_FDS. Given, it must be bound; left
    /// out, 127.0.0.1:8001 (Triton's port) is tried, and gRPC is not served
    /// (one warning) when another process holds it.
    #[arg(long, env = "GATEWAY_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,

    /// Serve no gRPC at all.
    #[arg(long, env = "GATEWAY_NO_GRPC", conflicts_with = "grpc_listen")]
    pub no_grpc: bool,

    /// Largest gRPC message accepted or sent, in bytes (RESOURCE_EXHAUSTED
    /// above it).
    #[arg(long, env = "GATEWAY_GRPC_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// Milliseconds between HTTP/2 keep-alive pings on each gRPC connection.
    #[arg(long, env = "GATEWAY_GRPC_KEEPALIVE_MS", default_value_t = 30_000)]
    pub grpc_keepalive_ms: u64,

    /// A gRPC peer that does not answer a keep-alive ping within this many
    /// milliseconds is disconnected.
    #[arg(long, env = "GATEWAY_GRPC_KEEPALIVE_TIMEOUT_MS", default_value_t = 10_000)]
    pub grpc_keepalive_timeout_ms: u64,

    /// Calls (HTTP/2 streams) one gRPC connection may have open at once.
    #[arg(long, env = "GATEWAY_GRPC_MAX_STREAMS", default_value_t = 1024)]
    pub grpc_max_streams: u32,

    /// Log format on stderr: text (human) or json (one object per line,
    /// for log collectors). Verbosity comes from RUST_LOG (default info).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry traces (docs/observability.md), set by the standard
    /// OTEL_* variables: off unless an OTLP endpoint is given.
    #[command(flatten)]
    pub traces: service::telemetry::TraceFlags,
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn link_wait(&self) -> Duration {
        Duration::from_millis(self.link_wait_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// The sockets to connect to: those given, or the packaged default
    /// when no host was named at all.
    pub fn host_sockets(&self) -> Vec<PathBuf> {
        if self.host_socket.is_empty() && self.host_dir.is_none() {
            return vec![PathBuf::from(DEFAULT_HOST_SOCKET)];
        }
        self.host_socket.clone()
    }

    pub fn gateway_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("gateway-{}", std::process::id()))
    }

    /// Triton's gRPC port, tried when --grpc-listen is not given.
    pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:8001";

    pub fn grpc_limits(&self) -> crate::grpc::GrpcLimits {
        crate::grpc::GrpcLimits {
            max_message_bytes: self.grpc_max_message_bytes,
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            keepalive_interval: Duration::from_millis(self.grpc_keepalive_ms),
            keepalive_timeout: Duration::from_millis(self.grpc_keepalive_timeout_ms),
            max_concurrent_streams: self.grpc_max_streams,
            grace: self.shutdown_grace(),
        }
    }

    /// Checks what clap's types cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [self.max_body_bytes as u64, self.max_pixels, self.request_timeout_ms, u64::from(self.default_top_k), self.header_timeout_ms, self.body_timeout_ms];
        if positive.contains(&0) {
            return Err("--max-body-bytes, --max-pixels, --request-timeout-ms, --default-top-k, --header-timeout-ms and --body-timeout-ms must be > 0".into());
        }
        let grpc = [self.grpc_max_message_bytes as u64, self.grpc_keepalive_ms, self.grpc_keepalive_timeout_ms, u64::from(self.grpc_max_streams)];
        if grpc.contains(&0) {
            return Err("--grpc-max-message-bytes, --grpc-keepalive-ms, --grpc-keepalive-timeout-ms and --grpc-max-streams must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--worker-threads` takes a count of one or more; unset, tokio's default.
    #[test]
    fn worker_threads_is_a_positive_count() {
        let parse = |args: &[&str]| Config::try_parse_from([&["gateway"], args].concat());
        assert_eq!(parse(&[]).unwrap().worker_threads, None);
        assert_eq!(parse(&["--worker-threads", "4"]).unwrap().worker_threads, Some(4));
        assert!(parse(&["--worker-threads", "0"]).is_err());
        assert!(parse(&["--worker-threads", "x"]).is_err());
    }
}
