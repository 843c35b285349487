//! The host's OpenTelemetry spans for a request and for a batch.
//!
//! A request the gateway sent with a trace context ([`protocol::TraceParent`],
//! the gateway's `wait_for_host` span) gets a `model-host/Infer` span, its child,
//! from arrival to answer, and under it `queue` (arrival to the start of
//! its batch) and, for a JPEG the host decodes, `jpeg_decode`. A batch
//! with at least one traced request gets a `batch` span, a child of the
//! first such request's (so one trace holds the whole path) and
//! linked to every traced request it served, each of which links back to
//! it; under it `upload`, `forward` and `read_back`.
//!
//! Nothing here is made when traces are off or the request came without
//! a context: the job and the batch then carry `None`, and each step
//! below is an `Option` check.

use service::telemetry::{self, context};
use tracing::Span;

use crate::pipeline::jobs::Job;

/// A traced request's spans on the host.
pub struct RequestSpans {
    /// From arrival to answer; its status says whether it failed.
    request: Span,
    /// From arrival to its batch's start; closed then.
    queue: Option<Span>,
}

impl RequestSpans {
    /// The spans of a request that just arrived, if the gateway traced it
    /// and this host exports traces.
    pub fn start(parent: Option<protocol::TraceParent>, tag: &str, jpeg: bool) -> Option<RequestSpans> {
        let parent = parent.filter(|_| telemetry::enabled())?;
        let request = tracing::info_span!(
            "infer",
            otel.name = "model-host/Infer",
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "splitserve",
            rpc.service = "model-host",
            rpc.method = "Infer",
            request_id = %tag,
            splitserve.host_decodes = jpeg,
            splitserve.batch.size = tracing::field::Empty,
        );
        context::adopt_remote_parent(&request, parent);
        let queue = tracing::info_span!(parent: &request, "queue");
        Some(RequestSpans { request, queue: Some(queue) })
    }

    /// A span for this request's JPEG decode on the device.
    pub fn jpeg_decode(&self) -> Span {
        tracing::info_span!(parent: &self.request, "jpeg_decode")
    }

    /// Marks the request failed, with the reason (an InferError's debug form).
    pub fn failed(&self, reason: &str) {
        self.request.record("otel.status_code", "error");
        self.request.in_scope(|| tracing::info!(error = reason, "request failed"));
    }
}

/// A batch's span, when any of its requests is traced: see the module doc.
/// `padded` is the batch shape the model runs at (>= the requests).
pub fn start_batch(jobs: &mut [Job], padded: usize) -> Option<Span> {
    let first = jobs.iter().find_map(|j| j.spans.as_ref())?;
    // As i64: OpenTelemetry's integer attributes are signed; tracing's
    // unsigned values would reach it as text.
    let size = jobs.len() as i64;
    let traced = jobs.iter().filter(|j| j.spans.is_some()).count() as i64;
    let batch = tracing::info_span!(
        parent: &first.request,
        "batch",
        splitserve.batch.size = size,
        splitserve.batch.shape = padded as i64,
        splitserve.batch.traced = traced,
    );
    for spans in jobs.iter_mut().filter_map(|j| j.spans.as_mut()) {
        spans.queue = None;
        spans.request.record("splitserve.batch.size", size);
        context::link(&batch, &spans.request);
        context::link(&spans.request, &batch);
    }
    Some(batch)
}

/// The steps of a batch on the device, each a child span of the batch's.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// The gathered inputs copied to the device and pre-processed there.
    Upload,
    /// The forward pass queued (on a CPU: run).
    Forward,
    /// Waiting for the outputs and reading them back into host memory.
    ReadBack,
}

/// `step`'s span in a traced batch, or a disabled span for an untraced one.
pub fn step(batch: Option<&Span>, step: Step) -> Span {
    let Some(batch) = batch else { return Span::none() };
    match step {
        Step::Upload => tracing::info_span!(parent: batch, "upload"),
        Step::Forward => tracing::info_span!(parent: batch, "forward"),
        Step::ReadBack => tracing::info_span!(parent: batch, "read_back"),
    }
}
