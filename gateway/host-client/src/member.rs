//! One member of the fleet: the task that keeps a link to the host on one
//! socket, reconnecting with backoff when the host restarts, and reports
//! its state to the [`Fleet`] table. A gateway never needs a restart of
//! its own because a host went away.
//!
//! A socket that is not a live, trusted host of this protocol version (a
//! stale socket, a host of another version or another user, a peer that
//! never answers the handshake) costs one log line per distinct failure
//! and a retry with backoff; it never blocks the other members, which
//! each have their own task.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::trust::HostTrust;
use super::{Fleet, Link};

const BACKOFF_START: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// How often a retired member with a live link checks whether its last
/// request has been answered.
const RETIRE_POLL: Duration = Duration::from_millis(50);

/// What every member's link needs to connect.
pub struct LinkOptions {
    pub gateway_name: String,
    pub max_waiting: u64,
    pub trust: HostTrust,
}

/// Handles to a running member's task.
pub struct MemberHandle {
    /// Set to true when the socket left the directory.
    pub retire: watch::Sender<bool>,
    /// Wakes the task out of its backoff (the socket file changed).
    pub kick: Arc<Notify>,
}

/// Starts a member for `socket`. `settle_on_failure`: whether a failed
/// first attempt ends the start-up wait for it (directory entries, which
/// may be stale), or only a link does (sockets named on the command line).
pub fn spawn(fleet: &Fleet, socket: PathBuf, options: Arc<LinkOptions>, settle_on_failure: bool) -> MemberHandle {
    let id = fleet.add(socket.clone());
    let (retire, retired) = watch::channel(false);
    let kick = Arc::new(Notify::new());
    let task = Task { fleet: fleet.clone(), id, socket, options, retired, kick: kick.clone(), settle_on_failure };
    tokio::spawn(task.run());
    MemberHandle { retire, kick }
}

struct Task {
    fleet: Fleet,
    id: u64,
    socket: PathBuf,
    options: Arc<LinkOptions>,
    retired: watch::Receiver<bool>,
    kick: Arc<Notify>,
    settle_on_failure: bool,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        let mut last_failure = String::new();
        let socket = self.socket.display().to_string();
        while !*self.retired.borrow() {
            let o = &self.options;
            match Link::connect(&self.socket, &o.gateway_name, o.max_waiting, &o.trust).await {
                Ok((link, reader)) => {
                    if let Err(refusal) = self.fleet.admit(self.id, &link) {
                        link.close();
                        self.failed(&mut last_failure, refusal);
                    } else {
                        backoff = BACKOFF_START;
                        last_failure.clear();
                        let m = link.model();
                        tracing::info!(%socket, model = %m.name, version = %m.version, host_pid = link.host_pid(), phase = link.phase().name(), "connected to model host");
                        let why = self.serve(&link, reader).await;
                        link.close();
                        if *self.retired.borrow() {
                            break;
                        }
                        self.fleet.set_down(self.id, None, true);
                        tracing::warn!(%socket, reason = %why, "lost the model host; reconnecting");
                    }
                }
                Err(e) => self.failed(&mut last_failure, e),
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.kick.notified() => backoff = BACKOFF_START,
                () = until_retired(&mut self.retired) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.fleet.remove(self.id);
        tracing::info!(%socket, "host socket left the directory; dropped");
    }

    /// Serves until the connection ends, or until the member is retired
    /// and its last outstanding request has been answered.
    async fn serve(&mut self, link: &Arc<Link>, reader: super::link::Reader) -> String {
        let mut reader = reader;
        tokio::select! {
            why = &mut reader => return why,
            () = until_retired(&mut self.retired) => {}
        }
        self.fleet.retire(self.id);
        while link.outstanding() > 0 {
            tokio::select! {
                why = &mut reader => return why,
                () = tokio::time::sleep(RETIRE_POLL) => {}
            }
        }
        "its socket left the directory and its last request was answered".into()
    }

    /// Records a failed attempt; logs it once per distinct reason.
    fn failed(&self, last_failure: &mut String, reason: String) {
        if *last_failure != reason {
            tracing::warn!(socket = %self.socket.display(), %reason, "not using this host socket; retrying when it changes");
            last_failure.clone_from(&reason);
        }
        self.fleet.set_down(self.id, Some(reason), self.settle_on_failure);
    }
}

/// Resolves once the member is retired; never, if its handle is gone
/// (a socket named on the command line is never retired).
async fn until_retired(retired: &mut watch::Receiver<bool>) {
    if retired.wait_for(|r| *r).await.is_err() {
        std::future::pending::<()>().await;
    }
}
