//! What the two daemons, model-host and gateway, do the same way: install
//! their logging ([`LogFormat`]) and traces ([`telemetry`]), wait for the
//! signal that stops them ([`shutdown_signal`]), and name users on the
//! command line ([`IdSpec`]). Kept out of `protocol`, which must stay free
//! of clap, tracing-subscriber and OpenTelemetry.
#![forbid(unsafe_code)]

mod ids;
pub mod telemetry;

use clap::ValueEnum;
use tracing_subscriber::Layer;
pub use ids::IdSpec;

/// How log lines are written to stderr (journald keeps them either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, coloured on a terminal.
    Text,
    /// One JSON object per event, with the current span and its parents.
    Json,
}

impl LogFormat {
    /// The log layer alone, for [`telemetry::init`] to stack beside spans.
    pub fn layer<S>(self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        match self {
            LogFormat::Text => layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).boxed(),
            LogFormat::Json => layer.json().with_current_span(true).with_span_list(true).boxed(),
        }
    }
}

/// Resolves on SIGTERM (systemd, deploys, kill) or SIGINT (Ctrl-C), logging
/// which; `what_next` says what the daemon does now ("draining", ...).
pub async fn shutdown_signal(what_next: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a signal handler fails only without a runtime");
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "{what_next}"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "{what_next}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_resolves_the_shutdown_signal() {
        let waiting = tokio::spawn(shutdown_signal("stopping"));
        // Let the handler install before the signal is sent.
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        nix_kill_self();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("resolved").expect("no panic");
    }

    fn nix_kill_self() {
        std::process::Command::new("kill").args(["-TERM", &std::process::id().to_string()]).status().expect("kill");
    }
}
