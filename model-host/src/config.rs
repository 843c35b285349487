//! Command-line and environment configuration of the model-host.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
pub use service::LogFormat;

/// Serves one TorchScript image model to any number of gateways over a
/// Unix-socket control channel, with pixels in shared memory.
///
/// Every flag can also be set with the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "model-host", version)]
pub struct Config {
    /// Path of the control socket that gateways connect to.
    #[arg(long, env = "MODEL_HOST_SOCKET", default_value = "/run/model-host/control.sock")]
    pub socket: PathBuf,

    /// Model directory holding model.toml (and the TorchScript file it
    /// names), or the path of a model.toml.
    #[arg(long, env = "MODEL_HOST_MODEL", default_value = "models/digits")]
    pub model: PathBuf,

    /// Where to run the model: auto (the first GPU if there is one, else the
    /// CPU), cpu, cuda, or cuda:N.
    #[arg(long, env = "MODEL_HOST_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,

    /// Slots in each gateway's shared-memory segment: how many requests one
    /// gateway may have leased or in flight at once.
    #[arg(long, env = "MODEL_HOST_SLOTS_PER_GATEWAY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots_per_gateway: u32,

    /// Requests queued, held by the batcher or running, across all
    /// gateways, before new ones are refused (the gateway answers 503 with
    /// Retry-After).
    #[arg(long, env = "MODEL_HOST_QUEUE_CAPACITY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub queue_capacity: u32,

    /// File mode of the control socket, in octal. Connecting needs write
    /// permission, so 660 admits the socket's group (the gateways' group).
    #[arg(long, env = "MODEL_HOST_SOCKET_MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Users (names or uids, comma-separated) allowed to connect; checked
    /// with SO_PEERCRED before any frame is read. With neither this nor
    /// --allowed-gids set, only the host's own user may connect.
    #[arg(long, env = "MODEL_HOST_ALLOWED_UIDS", value_delimiter = ',')]
    pub allowed_uids: Vec<crate::control::peer_auth::IdSpec>,

    /// Groups (names or gids, comma-separated) whose members, by the
    /// connecting process's effective gid, may connect.
    #[arg(long, env = "MODEL_HOST_ALLOWED_GIDS", value_delimiter = ',')]
    pub allowed_gids: Vec<crate::control::peer_auth::IdSpec>,

    /// File mode of each shared-memory segment, in octal (600 when the
    /// gateways run as the host's user, 660 when they share its group).
    #[arg(long, env = "MODEL_HOST_SHM_MODE", default_value = "600", value_parser = parse_mode)]
    pub shm_mode: u32,

    /// Seconds to finish in-flight requests after SIGTERM before exiting.
    /// Keep it below systemd's TimeoutStopSec.
    #[arg(long, env = "MODEL_HOST_DRAIN_TIMEOUT_SECS", default_value_t = 10)]
    pub drain_timeout_secs: u64,

    /// Under systemd: how much more start time each step of startup
    /// progress (device ready, weights loaded, each warm-up pass) asks for
    /// with EXTEND_TIMEOUT_USEC, so that a slow but moving load is not killed.
    #[arg(long, env = "MODEL_HOST_STARTUP_STEP_TIMEOUT_SECS", default_value_t = 120)]
    pub startup_step_timeout_secs: u64,

    /// Threads libtorch may use for CPU work; 0: its default (one per
    /// core) on the CPU, 1 on a GPU (where more only spin and steal cores
    /// from the gateways).
    #[arg(long, env = "MODEL_HOST_CPU_THREADS", default_value_t = 0)]
    pub cpu_threads: u32,

    /// On a GPU, microseconds the feeder and the model thread poll for
    /// their next job or batch before they sleep: a sleeping thread takes
    /// tens of microseconds to wake, twice per request. Costs up to two
    /// cores while requests keep coming, none when idle; 0 turns it off.
    /// Ignored on the CPU.
    #[arg(long, env = "MODEL_HOST_SPIN_US", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub spin_us: u64,

    /// On a GPU, threads that warm up and capture the batch shapes left for
    /// after READY (model.toml's `warm_up_after_ready`) while the host
    /// serves: more finish sooner, fewer disturb serving less.
    #[arg(long, env = "MODEL_HOST_WARM_UP_THREADS_AFTER_READY", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub warm_up_threads_after_ready: u32,

    /// On a GPU, MiB that must be free beyond the weights file's size
    /// before the model is loaded (CUDA context, cuDNN workspaces,
    /// activations); with less, the host refuses to start, naming the
    /// figures. 0 turns the check off.
    #[arg(long, env = "MODEL_HOST_LOAD_HEADROOM_MB", default_value_t = 1024)]
    pub load_headroom_mb: u64,

    /// libnvjpeg for model.toml's `decode = "host"` or `"auto"`: a path, or
    /// unset to look for libnvjpeg.so.13 through the loader and then in the
    /// nvidia-nvjpeg wheel beside libtorch.
    #[arg(long, env = "MODEL_HOST_NVJPEG")]
    pub nvjpeg: Option<std::path::PathBuf>,

    /// Where the host keeps what must outlive it: an iterative model's
    /// jobs and results (under jobs/<socket name>/). Under systemd,
    /// StateDirectory= sets $STATE_DIRECTORY, used when this is not given.
    #[arg(long, env = "MODEL_HOST_STATE_DIR", default_value_os_t = default_state_dir())]
    pub state_dir: PathBuf,

    /// Where frozen modules are kept between starts (the model cast to its
    /// precision and frozen, keyed by the model file and libtorch's
    /// version): later starts load that instead of freezing again. Off by
    /// default: loading a frozen archive recompiles its one inlined
    /// function, superlinear in the model's depth, and for deep models
    /// costs more than freezing again. Under systemd, CacheDirectory= sets
    /// $CACHE_DIRECTORY, used when this is not given (the units leave it
    /// out); with neither, nothing is cached.
    #[arg(long, env = "MODEL_HOST_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Iterative models: seconds a finished job's status and result are kept.
    #[arg(long, env = "MODEL_HOST_JOB_RETENTION_SECS", default_value_t = 3600)]
    pub job_retention_secs: u64,

    /// Iterative models: jobs waiting to run before a submit is refused
    /// (the gateway answers 429 naming this limit).
    #[arg(long, env = "MODEL_HOST_JOB_MAX_QUEUED", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub job_max_queued: u32,

    /// Iterative models: finished jobs kept; past it the oldest are removed
    /// before their retention ends.
    #[arg(long, env = "MODEL_HOST_JOB_MAX_RESULTS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub job_max_results: u32,

    /// Iterative models: bytes of results kept; past it the oldest are
    /// removed before their retention ends.
    #[arg(long, env = "MODEL_HOST_JOB_MAX_RESULT_BYTES", default_value_t = 1 << 30)]
    pub job_max_result_bytes: u64,

    /// Iterative models: the least time between two steps of the job loop,
    /// in milliseconds. 0 (the default) runs steps back to back; more
    /// leaves the device (or the CPU) to others, and makes a job's
    /// progress slow enough to watch in a demonstration or a test.
    #[arg(long, env = "MODEL_HOST_JOB_STEP_INTERVAL_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub job_step_interval_ms: u64,

    /// Log format on stderr: text (human) or json (one object per line,
    /// for log collectors). Verbosity comes from RUST_LOG (default info).
    #[arg(long, env = "MODEL_HOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OpenTelemetry traces (docs/observability.md), set by the standard
    /// OTEL_* variables: off unless an OTLP endpoint is given.
    #[command(flatten)]
    pub traces: service::telemetry::TraceFlags,
}

/// `--cache-dir`, else systemd's CacheDirectory= (its first entry).
pub fn cache_dir(flag: Option<&std::path::Path>) -> Option<PathBuf> {
    flag.map(PathBuf::from).or_else(|| std::env::var_os("CACHE_DIRECTORY").and_then(|dirs| std::env::split_paths(&dirs).next()))
}

/// systemd's StateDirectory= (its first entry), else /var/lib/model-host.
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .unwrap_or_else(|| PathBuf::from("/var/lib/model-host"))
}

/// `--device`: parsed once, resolved against the hardware at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device {other:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not an octal file mode"))?;
    if mode & !0o777 != 0 {
        return Err(format!("mode {s} has bits outside 0777"));
    }
    if mode & 0o007 != 0 {
        return Err(format!("mode {s} would let any local user in; use at most 0770"));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn modes_are_octal_and_never_world_accessible() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("666").is_err());
        assert!(parse_mode("9").is_err());
        assert!(parse_mode("1777").is_err());
    }

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from(["model-host"]).unwrap();
        assert_eq!(c.device, DeviceChoice::Auto);
        assert_eq!(c.socket_mode, 0o660);
    }
}
