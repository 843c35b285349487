//! The HTTP server loop: accept, serve each connection with hyper, shut
//! down in three steps.
//!
//! Not `axum::serve`, because that installs no header timer: a client that
//! sends its headers a byte every few seconds (slowloris) would hold a
//! connection and its memory for ever. Here each connection gets hyper's
//! `header_read_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A connection that has not sent a whole request head within this is closed.
    pub header_timeout: Duration,
    /// After shutdown begins, how long in-flight requests may take.
    pub grace: Duration,
    /// After shutdown begins, how long open keep-alive connections are still
    /// served, each answer saying `Connection: close` (see [`serve`]).
    pub lame_duck: Duration,
}

/// Set when shutdown begins; every response then says `Connection: close`.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Middleware: while draining, ask clients not to reuse the connection.
pub async fn close_when_draining(
    axum::extract::State(draining): axum::extract::State<Draining>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    if draining.is_set() {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Accepts on `listener` until `shutdown` resolves, handing each connection
/// (Nagle off) to `serve`. An accept error (out of descriptors and the
/// like) is logged and retried shortly, keeping the connections there are.
/// `protocol` names the listener in logs. Shared by HTTP and gRPC.
pub async fn accept_until(listener: &TcpListener, protocol: &'static str, shutdown: impl Future<Output = ()>, mut serve: impl FnMut(TcpStream)) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    serve(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, protocol, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            () = &mut shutdown => return,
        }
    }
}

/// Runs one connection to its end on its own task; its error, if any, is
/// the client's business (reset, timeout), so only logged at debug level.
pub fn spawn_connection<E: std::fmt::Display>(protocol: &'static str, connection: impl Future<Output = Result<(), E>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, protocol, "connection ended with an error");
        }
    });
}

/// Serves `app` until `shutdown` resolves, then shuts down in three steps:
/// 1. stop accepting (our listening fd is closed; a held socket stays open
///    in its holder, and the next gateway accepts from it);
/// 2. lame duck: keep serving requests on open keep-alive connections for
///    `limits.lame_duck`, each answer carrying `Connection: close`, so each
///    client drops its connection after one more answer. Closing idle
///    keep-alive connections at once instead races with clients that are
///    just sending on them: they would see a reset, not an answer;
/// 3. close what is idle, let in-flight requests finish, and return after at
///    most `limits.grace` in all.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    draining: Draining,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    accept_until(&listener, "HTTP", shutdown, |stream| {
        let service = TowerToHyperService::new(app.clone());
        spawn_connection("HTTP", graceful.watch(http.serve_connection(TokioIo::new(stream), service)));
    })
    .await;
    drop(listener);
    draining.set();
    let started = tokio::time::Instant::now();
    let lame_duck_end = started + limits.lame_duck.min(limits.grace);
    while graceful.count() > 0 && tokio::time::Instant::now() < lame_duck_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(open_connections = graceful.count(), "stopped accepting; closing idle connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("in-flight requests finished"),
        () = tokio::time::sleep_until(started + limits.grace) => {
            tracing::warn!(grace_secs = limits.grace.as_secs(), "grace period over; exiting with requests still open");
        }
    }
}
