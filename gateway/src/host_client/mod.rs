//! The gateway's side of the control channel.
//!
//! - [`HostClient`] (this file): a cheap handle for request handlers, and
//!   the background task that keeps one connection to the host alive,
//!   reconnecting with backoff when the host restarts. A gateway never needs
//!   a restart of its own because the host went away.
//! - [`link`]: one live connection: handshake, writer, reader, the table of
//!   requests waiting for an answer.
//! - [`lease`]: a leased slot (RAII: given back if never sent) and the
//!   in-flight request (cancelled at the host if its caller goes away).

mod lease;
mod link;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::{HostStatus, Phase};
use thiserror::Error;
use tokio::sync::watch;

pub use lease::SlotLease;
pub use link::Link;

/// Why the host could not take a request. Mapped to HTTP in `crate::error`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum HostCallError {
    #[error("host unavailable ({phase})")]
    Unavailable { phase: String },
    #[error("host at capacity: {0}")]
    Overloaded(&'static str),
    #[error("deadline exceeded at the host")]
    DeadlineExceeded,
    #[error("host refused the request: {0}")]
    Rejected(String),
    #[error("model failed: {0}")]
    Model(String),
}

/// What handlers see of the host connection.
#[derive(Clone)]
pub struct HostClient {
    link: watch::Receiver<Option<Arc<Link>>>,
    /// Why there is no link, for /health/ready and 503 bodies.
    down_reason: watch::Receiver<String>,
}

const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

impl HostClient {
    /// Starts the background connection task and returns at once: the
    /// gateway serves HTTP (answering 503) while the host is still away.
    /// `max_waiting`: how many requests may wait for a free slot (see [`link`]).
    pub fn start(socket: PathBuf, gateway_name: String, max_waiting: u64) -> Self {
        let (link_tx, link) = watch::channel(None);
        let (reason_tx, down_reason) = watch::channel("connecting".to_string());
        tokio::spawn(maintain(socket, gateway_name, max_waiting, link_tx, reason_tx));
        Self { link, down_reason }
    }

    /// Waits until the first link is up (handshake done, so the host's phase
    /// is known) or `limit` passes; true if it is up.
    pub async fn wait_linked(&self, limit: Duration) -> bool {
        let mut link = self.link.clone();
        tokio::time::timeout(limit, link.wait_for(Option::is_some)).await.is_ok_and(|r| r.is_ok())
    }

    /// The live link, or why there is none.
    pub fn link(&self) -> Result<Arc<Link>, HostCallError> {
        match &*self.link.borrow() {
            Some(link) if !link.is_closed() => Ok(link.clone()),
            _ => Err(HostCallError::Unavailable { phase: self.down_reason.borrow().clone() }),
        }
    }

    /// The live link if the host is also ready to serve.
    pub fn ready_link(&self) -> Result<Arc<Link>, HostCallError> {
        let link = self.link()?;
        let phase = link.phase();
        if !phase.is_ready() {
            return Err(HostCallError::Unavailable { phase: phase.name().to_string() });
        }
        Ok(link)
    }

    /// The host's phase as a word, or "disconnected".
    pub fn phase_name(&self) -> String {
        match &*self.link.borrow() {
            Some(link) if !link.is_closed() => link.phase().name().to_string(),
            _ => self.down_reason.borrow().clone(),
        }
    }

    pub async fn status(&self) -> Result<HostStatus, HostCallError> {
        self.link()?.status().await
    }
}

/// Connects, serves until the connection drops, and starts over.
async fn maintain(
    socket: PathBuf,
    gateway_name: String,
    max_waiting: u64,
    link_tx: watch::Sender<Option<Arc<Link>>>,
    reason_tx: watch::Sender<String>,
) {
    let mut backoff = BACKOFF_START;
    let mut logged_failure = false;
    loop {
        match Link::connect(&socket, &gateway_name, max_waiting).await {
            Ok((link, reader)) => {
                backoff = BACKOFF_START;
                logged_failure = false;
                let phase: Phase = link.phase();
                tracing::info!(host_pid = link.host_pid(), phase = phase.name(), "connected to model host");
                link_tx.send_replace(Some(link.clone()));
                let why = reader.await;
                link.close();
                link_tx.send_replace(None);
                reason_tx.send_replace("disconnected".into());
                tracing::warn!(reason = %why, "lost the model host; reconnecting");
            }
            Err(e) => {
                reason_tx.send_replace("disconnected".into());
                if !logged_failure {
                    tracing::warn!(error = %e, socket = %socket.display(), "cannot reach the model host; retrying with backoff");
                    logged_failure = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
