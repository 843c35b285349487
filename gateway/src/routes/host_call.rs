//! One request through the host, for every route that runs the model:
//! lease a slot (within the deadline), write the input, send the
//! inference, wait for the answer (within the deadline), and turn the
//! host's refusals into the gateway's errors. `/v1/.../predict` and
//! `/v2/.../infer` both call it.
//!
//! A route may take the lease itself ([`lease`]) while it still reads and
//! decodes the body, and hand it to [`classify_leased`]: the lease's round
//! trip to the host then overlaps that work instead of following it.

use std::time::Instant;

use protocol::{Ask, HostTimings, Output, Payload, Prediction};
use service::telemetry;
use tracing::Instrument;

use crate::error::ApiError;
use crate::host_client::{HostCallError, Route, SlotLease};

/// Classifies `input` (the model's input, already prepared, or a JPEG the
/// host decodes, as `payload` says), returning the best `top_k` and where
/// the host spent the time; any deadline passed on the way is a 504
/// naming `budget_ms`.
pub async fn classify(
    route: &Route,
    input: &[u8],
    payload: Payload,
    top_k: u32,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Vec<(u32, f32)>, HostTimings), ApiError> {
    let lease = lease(route, deadline, budget_ms).await?;
    classify_leased(lease, input, payload, top_k, deadline, budget_ms, tag).await
}

/// [`classify`] in a slot already leased.
pub async fn classify_leased(
    lease: SlotLease,
    input: &[u8],
    payload: Payload,
    top_k: u32,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Vec<(u32, f32)>, HostTimings), ApiError> {
    let (prediction, _) = send(lease, input, payload, Ask::TopK { k: top_k }, deadline, budget_ms, tag).await?;
    match prediction.output {
        Output::TopK(top) => Ok((top, prediction.timings)),
        Output::InSlot => Err(ApiError::Internal("the host answered a classification with outputs in the slot".into())),
    }
}

/// Runs a tensor model on one batch item: `inputs` is the slot's input
/// area (each input at its placement); the answer is the slot's output
/// area.
pub async fn run_tensors(route: &Route, inputs: &[u8], deadline: Instant, budget_ms: u64, tag: String) -> Result<(Vec<u8>, HostTimings), ApiError> {
    run_tensors_from(route, inputs, Payload::Input, deadline, budget_ms, tag).await
}

/// [`run_tensors`] of a slot that holds `payload`: the inputs, or a JPEG
/// for the host to decode into them.
pub async fn run_tensors_from(
    route: &Route,
    inputs: &[u8],
    payload: Payload,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Vec<u8>, HostTimings), ApiError> {
    let lease = lease(route, deadline, budget_ms).await?;
    run_tensors_leased(lease, inputs, payload, Ask::Tensors, deadline, budget_ms, tag).await
}

/// [`run_tensors_from`] in a slot already leased; `ask` is
/// [`Ask::Tensors`] (the raw outputs), or a vision model's [`Ask::Answer`]
/// (a segmenter's mask 8-bit).
pub async fn run_tensors_leased(
    lease: SlotLease,
    inputs: &[u8],
    payload: Payload,
    ask: Ask,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Vec<u8>, HostTimings), ApiError> {
    let (prediction, outputs) = send(lease, inputs, payload, ask, deadline, budget_ms, tag).await?;
    match prediction.output {
        Output::InSlot => Ok((outputs, prediction.timings)),
        Output::TopK(_) => Err(ApiError::Internal("the host answered a tensor model with classes".into())),
    }
}

/// A slot at the route's host, within the deadline.
pub async fn lease(route: &Route, deadline: Instant, budget_ms: u64) -> Result<SlotLease, ApiError> {
    let span = telemetry::span(|| tracing::info_span!("lease"));
    let lease = tokio::time::timeout_at(deadline.into(), route.lease()).instrument(span).await.map_err(|_| ApiError::DeadlineExceeded { budget_ms })?;
    Ok(lease?)
}

async fn send(
    mut lease: SlotLease,
    input: &[u8],
    payload: Payload,
    ask: Ask,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Prediction, Vec<u8>), ApiError> {
    let timeout = || ApiError::DeadlineExceeded { budget_ms };
    lease.write(input)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(timeout());
    }
    // The client side of the call to the host; the host's spans for this
    // request are its children (the Infer message carries its context).
    let waiting = telemetry::span(|| {
        tracing::info_span!(
            "wait_for_host",
            otel.kind = "client",
            rpc.system = "splitserve",
            rpc.service = "model-host",
            rpc.method = "Infer",
            splitserve.slot_bytes = input.len() as i64,
            splitserve.host_decodes = matches!(payload, Payload::Jpeg { .. }),
        )
    });
    let trace = telemetry::context::trace_parent_of(&waiting);
    let in_flight = lease.infer(ask, payload, remaining.as_micros() as u64, tag, trace)?;
    let answer = tokio::time::timeout(remaining, in_flight.result_with_outputs()).instrument(waiting).await.map_err(|_| timeout())?;
    answer.map_err(|e| match e {
        HostCallError::DeadlineExceeded => timeout(),
        other => other.into(),
    })
}
