//! One log line for each request that fails on our side (a 5xx), naming
//! the request: its X-Request-Id, method, route, status and what went
//! wrong. A client's mistake (a 4xx) is the client's to read in its answer
//! and is not logged.
//!
//! Why not in the request's log span: a span whose fields a log layer
//! formats costs every request, also the ones that log nothing: about
//! 13,000 instructions of a raw-pixels request's 137,000
//! (bench/gateway_instructions.py). At the default log level the request
//! has no span (`request_id.rs`); [`crate::metrics::track_http`], which
//! has the request's route and its answer already, logs here what the
//! span's fields said.

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::Response;

use crate::request_id;

/// What went wrong, put on a 5xx answer by [`crate::error::ApiError`] to
/// be logged: the answer's body says less (an internal error's detail
/// stays in the log).
#[derive(Clone, Debug)]
pub struct Failure {
    pub error: String,
    /// An internal error (a bug or the machine), logged at ERROR; else WARN.
    pub internal: bool,
}

/// What the log line names of the request, kept while it runs: a header
/// value's clone shares its bytes, and a method is an enum.
pub struct Asked {
    id: Option<HeaderValue>,
    method: Method,
}

impl Asked {
    pub fn of(request: &Request) -> Self {
        Asked { id: request.headers().get(request_id::HEADER).cloned(), method: request.method().clone() }
    }

    /// The one line for `response`, if it carries a [`Failure`].
    pub fn log_if_failed(&self, response: &Response, route: &str) {
        let Some(failure) = response.extensions().get::<Failure>() else { return };
        let (request_id, method, status) = (request_id::tag(self.id.as_ref()), &self.method, response.status().as_u16());
        if failure.internal {
            tracing::error!(request_id, %method, route, status, detail = %failure.error, "internal error");
        } else {
            tracing::warn!(request_id, %method, route, status, error = %failure.error, "request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::error::ApiError;

    /// Everything the log layer writes, for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The log lines of one request to `path` (with X-Request-Id `id`).
    fn logged(path: &str, id: &str) -> (u16, String) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let app = Router::new()
            .route("/boom/{what}", get(|| async { ApiError::Internal("the disk is on fire".into()) }))
            .route("/busy", get(|| async { ApiError::HostUnavailable { phase: "loading".into() } }))
            .route("/bad", get(|| async { ApiError::InvalidRequest { field: "top_k", problem: "must be at least 1".into() } }))
            .layer(axum::middleware::from_fn(crate::metrics::track_http))
            .layer(request_id::layers());
        let request = axum::http::Request::get(path).header(request_id::HEADER, id).body(Body::empty()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let status = tracing::subscriber::with_default(subscriber, || runtime.block_on(app.oneshot(request))).unwrap().status();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        (status.as_u16(), text)
    }

    #[test]
    fn an_internal_error_is_logged_once_with_the_request_and_its_detail() {
        let (status, log) = logged("/boom/now", "req-41");
        assert_eq!(status, 500);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "one line for the failure: {log}");
        for part in ["ERROR", "internal error", "request_id=\"req-41\"", "method=GET", "route=\"/boom/{what}\"", "status=500", "the disk is on fire"] {
            assert!(lines[0].contains(part), "{part} missing from {log}");
        }
    }

    #[test]
    fn an_unavailable_host_is_a_warning_and_a_client_mistake_is_not_logged() {
        let (status, log) = logged("/busy", "req-42");
        assert_eq!(status, 503);
        assert!(log.contains("WARN") && log.contains("request failed") && log.contains("req-42") && log.contains("loading"), "{log}");
        let (status, log) = logged("/bad", "req-43");
        assert_eq!(status, 400);
        assert_eq!(log, "", "a 4xx is the client's to read in its answer");
    }
}
