//! Talking to systemd (`Type=notify`): readiness, status lines, startup
//! progress, the watchdog and stopping. Every call is a no-op when the host
//! does not run under systemd (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

/// WATCHDOG_USEC, if set and meant for this process. As libsystemd's
/// sd_watchdog_enabled: WATCHDOG_PID, when present, must be our pid (it
/// guards against a child inheriting the variables); when absent the
/// watchdog applies. (The sd-notify crate insists on WATCHDOG_PID.)
fn watchdog_from_env() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&u| u > 0)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[derive(Debug, Clone)]
pub struct Notifier {
    /// NOTIFY_SOCKET was set when the host started.
    enabled: bool,
    /// WATCHDOG_USEC from systemd: the longest silence before it kills us.
    watchdog: Option<Duration>,
    /// How much more time each step of startup progress asks for.
    startup_step: Duration,
}

impl Notifier {
    pub fn from_env(startup_step: Duration) -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        Self { enabled, watchdog: watchdog_from_env(), startup_step }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    /// A status line (`systemctl status` shows it), during startup also
    /// pushing the start timeout out: each step is progress.
    pub fn progress(&self, status: &str) {
        let usec = u32::try_from(self.startup_step.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::Status(status), NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// How often the model thread must ping: half the watchdog period.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    pub fn watchdog_ping(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }
}
