//! X-Request-Id: taken from the client when it sends a sane one, made up
//! otherwise; echoed in the response, logged with a failed request
//! (failure_log.rs), put on the request's span (exported with traces; on
//! every log line about the request with debug logging), and sent to the
//! host with the request.
//!
//! With traces exported, that span is also the request's OpenTelemetry
//! server span: a child of the client's `traceparent` when it sent one,
//! with HTTP's semantic-convention attributes (the route is filled in by
//! [`crate::metrics::track_http`], which knows it, and names the span
//! `{method} {route}` as the conventions do).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Request, Response};
use service::telemetry;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// `<pid>-<counter>`: unique per gateway process, cheap, and sortable.
#[derive(Clone, Default)]
pub struct Sequential {
    next: std::sync::Arc<AtomicU64>,
}

impl MakeRequestId for Sequential {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Relaxed);
        HeaderValue::from_str(&format!("{}-{n}", std::process::id())).ok().map(RequestId::new)
    }
}

/// The id of a request, bounded for logs and the control channel.
pub fn of<B>(request: &Request<B>) -> String {
    tag(request.headers().get(HEADER))
}

/// An X-Request-Id header's value as [`of`] gives it ("-" without one).
pub fn tag(header: Option<&HeaderValue>) -> String {
    protocol::request_tag(header.and_then(|v| v.to_str().ok()).unwrap_or("-"))
}

/// The request's span. Without exported traces it is a DEBUG span: made
/// (its fields formatted) only when debug logging is on, where it puts the
/// id on every line about the request; at the default level a span the
/// log layer formats would cost every request (failure_log.rs says how
/// much, and logs each failed request with its id instead).
fn span_for<B>(request: &Request<B>) -> tracing::Span {
    if !telemetry::enabled() {
        return tracing::debug_span!("http", request_id = %of(request), method = %request.method(), path = %request.uri().path());
    }
    let method = request.method();
    let span = tracing::info_span!(
        "http",
        request_id = %of(request),
        method = %method,
        path = %request.uri().path(),
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        url.path = %request.uri().path(),
        url.scheme = "http",
        network.protocol.version = protocol_version(request.version()),
    );
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    telemetry::context::adopt_client_parent(&span, header("traceparent"), header("tracestate"));
    span
}

/// HTTP's version as the semantic conventions spell it.
fn protocol_version(version: axum::http::Version) -> &'static str {
    match version {
        axum::http::Version::HTTP_09 => "0.9",
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The response's status on the request's span (as a debug log line, as
/// before; and, with traces exported, as attributes: a 5xx marks the
/// server span failed, a 4xx does not, as the conventions say).
#[derive(Clone, Copy)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &tracing::Span) {
        DefaultOnResponse::new().level(tracing::Level::DEBUG).on_response(response, latency, span);
        if telemetry::enabled() {
            span.record("http.response.status_code", i64::from(response.status().as_u16()));
            if response.status().is_server_error() {
                span.record("otel.status_code", "error");
            }
        }
    }
}

type Trace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<axum::body::Body>) -> tracing::Span,
    tower_http::trace::DefaultOnRequest,
    RecordStatus,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
    (),
>;

/// The three layers, innermost last, as `ServiceBuilder` stacks them.
type Layers = ServiceBuilder<Stack<PropagateRequestIdLayer, Stack<Trace, Stack<SetRequestIdLayer<Sequential>, Identity>>>>;

/// Set the id (outermost), trace with it, echo it back.
pub fn layers() -> Layers {
    let trace: Trace = TraceLayer::new_for_http()
        .make_span_with(span_for as fn(&Request<axum::body::Body>) -> tracing::Span)
        .on_response(RecordStatus)
        // failure_log.rs logs a failed request, with more than this would.
        .on_failure(());
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(HEADER, Sequential::default()))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(HEADER))
}
