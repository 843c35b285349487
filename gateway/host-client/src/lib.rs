//! The gateway's side of the control channel, to every host it knows.
//!
//! - [`fleet`]: the table of hosts and the handle request handlers use:
//!   route a request to a ready host of its model and version.
//! - [`routing`]: the choice itself (newest ready version, fewest
//!   outstanding among replicas), as plain functions.
//! - [`discovery`]: where hosts come from: `--host-socket`s, and the
//!   sockets in a watched `--host-dir`.
//! - [`route`]: a request's chosen host, with one retry on a replica if
//!   that host stops being ready before it takes the request.
//! - [`member`]: one socket's task: connect, serve, reconnect with backoff.
//! - [`trust`]: which users a host may run as; which directories may be watched.
//! - [`link`]: one live connection: handshake, writer, reader, the table of
//!   requests waiting for an answer, this gateway's slots.
//! - [`jobs`]: an iterative model's job calls, and the host a job id names.
//! - [`lease`]: a leased slot (RAII: given back if never sent) and the
//!   in-flight request (cancelled at the host if its caller goes away).

mod discovery;
mod fleet;
mod jobs;
mod lease;
mod link;
mod member;
mod route;
mod routing;
mod trust;

use std::path::PathBuf;

use thiserror::Error;

pub use fleet::Fleet;
pub use jobs::JobCallError;
pub use lease::SlotLease;
pub use link::Link;
pub use route::Route;
pub use routing::compare_versions;
pub use trust::HostTrust;

/// Why no host could take a request. Mapped to HTTP in `crate::error`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum HostCallError {
    #[error("host unavailable ({phase})")]
    Unavailable { phase: String },
    #[error("no host serves model {0:?}")]
    UnknownModel(String),
    #[error("no host serves model {model:?} at version {version:?} (served: {served})")]
    UnknownVersion { model: String, version: String, served: String },
    #[error("host at capacity: {0}")]
    Overloaded(&'static str),
    #[error("deadline exceeded at the host")]
    DeadlineExceeded,
    #[error("host refused the request: {0}")]
    Rejected(String),
    /// The JPEG the host decoded for us is corrupt or one it cannot read:
    /// the client's file.
    #[error("the host could not decode the JPEG: {0}")]
    BadImage(String),
    #[error("model failed: {0}")]
    Model(String),
}

/// Where to find hosts, and how to talk to them.
pub struct FleetConfig {
    /// Sockets named on the command line, kept for the gateway's lifetime.
    pub sockets: Vec<PathBuf>,
    /// A directory of host sockets to watch.
    pub dir: Option<PathBuf>,
    pub trust: HostTrust,
    pub gateway_name: String,
    /// How many requests may wait for a free slot per host (see [`link`]).
    pub max_waiting: u64,
}

impl Fleet {
    /// Starts a member per socket and the directory watch, and returns at
    /// once: the gateway serves HTTP (answering 503) while hosts are away.
    /// Fails only for a `--host-dir` that cannot be trusted or watched.
    pub fn start(config: FleetConfig) -> Result<Fleet, String> {
        let fleet = Fleet::default();
        let options = member::LinkOptions { gateway_name: config.gateway_name, max_waiting: config.max_waiting, trust: config.trust };
        discovery::start(&fleet, &config.sockets, config.dir.as_deref(), options)?;
        Ok(fleet)
    }
}
