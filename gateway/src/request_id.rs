//! X-Request-Id: taken from the client when it sends a sane one, made up
//! otherwise; echoed in the response, put on the request's tracing span (so
//! on every log line about it) and sent to the host with the request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::http::{HeaderName, HeaderValue, Request};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
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
    let id = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).unwrap_or("-");
    protocol::request_tag(id)
}

fn span_for<B>(request: &Request<B>) -> tracing::Span {
    tracing::info_span!("http", request_id = %of(request), method = %request.method(), path = %request.uri().path())
}

type Trace = TraceLayer<SharedClassifier<ServerErrorsAsFailures>, fn(&Request<axum::body::Body>) -> tracing::Span>;

/// The three layers, innermost last, as `ServiceBuilder` stacks them.
type Layers = ServiceBuilder<Stack<PropagateRequestIdLayer, Stack<Trace, Stack<SetRequestIdLayer<Sequential>, Identity>>>>;

/// Set the id (outermost), trace with it, echo it back.
pub fn layers() -> Layers {
    let trace: Trace = TraceLayer::new_for_http()
        .make_span_with(span_for as fn(&Request<axum::body::Body>) -> tracing::Span)
        .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG));
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(HEADER, Sequential::default()))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(HEADER))
}
