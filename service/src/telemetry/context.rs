//! W3C trace contexts into and out of the daemons' spans: a client's
//! `traceparent` header (or gRPC metadata) as the parent of the gateway's
//! request span, and the [`TraceParent`] an Infer message carries from
//! the gateway's span to the host's.
//!
//! Every function does nothing when traces are off ([`super::enabled`]).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use protocol::TraceParent;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::enabled;

/// The two W3C headers, as a client sent them.
struct W3cHeaders<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Makes `span` (just made, not yet entered) a child of the client's span
/// named by a `traceparent` header; a missing or malformed one leaves
/// `span` a root, as W3C asks.
pub fn adopt_client_parent(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if !enabled() || traceparent.is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&W3cHeaders { traceparent, tracestate });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span`'s own trace context, for the host: None when traces are off.
pub fn trace_parent_of(span: &Span) -> Option<TraceParent> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| TraceParent {
        trace_id: own.trace_id().to_bytes(),
        span_id: own.span_id().to_bytes(),
        flags: own.trace_flags().to_u8(),
    })
}

/// Makes `span` (just made) a child of the gateway's span that `parent`
/// names; its sampled flag decides, under the default sampler, whether
/// `span` is recorded.
pub fn adopt_remote_parent(span: &Span, parent: TraceParent) {
    if !enabled() || !parent.is_valid() {
        return;
    }
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::NONE,
    );
    let _ = span.set_parent(Context::new().with_remote_span_context(remote));
}

/// Renames `span` once what names it is known (an HTTP request's route is
/// known only after routing, when its span has started and `otel.name`
/// can no longer be recorded).
pub fn rename(span: &Span, name: String) {
    if enabled() {
        span.context().span().update_name(name);
    }
}

/// Adds a link from `span` to `to`: a batch to each request it served, a
/// request to its batch.
pub fn link(span: &Span, to: &Span) {
    if !enabled() {
        return;
    }
    let target = to.context().span().span_context().clone();
    if target.is_valid() {
        span.add_link(target);
    }
}
