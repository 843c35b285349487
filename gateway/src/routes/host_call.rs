//! One request through the host, for every route that runs the model:
//! lease a slot (within the deadline), write the input, send the
//! inference, wait for the answer (within the deadline), and turn the
//! host's refusals into the gateway's errors. `/v1/.../predict` and
//! `/v2/.../infer` both call it.

use std::sync::Arc;
use std::time::Instant;

use protocol::Prediction;

use crate::error::ApiError;
use crate::host_client::{HostCallError, Link, SlotLease};

/// Classifies `pixels` (the model's input, already prepared), returning the
/// best `top_k`; any deadline passed on the way is a 504 naming `budget_ms`.
pub async fn classify(link: &Arc<Link>, pixels: &[u8], top_k: u32, deadline: Instant, budget_ms: u64, tag: String) -> Result<Prediction, ApiError> {
    let model = link.model();
    let shape = (model.width, model.height, model.channels);
    call(link, pixels, shape, top_k, deadline, budget_ms, tag).await.map(|(prediction, _)| prediction)
}

/// Runs a tensor model on one batch item: `inputs` is the slot's input
/// area (each input at its placement); the answer carries the slot's
/// output area.
pub async fn run_tensors(link: &Arc<Link>, inputs: &[u8], deadline: Instant, budget_ms: u64, tag: String) -> Result<(Prediction, Vec<u8>), ApiError> {
    call(link, inputs, (0, 0, 0), 0, deadline, budget_ms, tag).await
}

async fn call(
    link: &Arc<Link>,
    input: &[u8],
    shape: (u32, u32, u32),
    top_k: u32,
    deadline: Instant,
    budget_ms: u64,
    tag: String,
) -> Result<(Prediction, Vec<u8>), ApiError> {
    let timeout = || ApiError::DeadlineExceeded { budget_ms };
    let mut lease = tokio::time::timeout_at(deadline.into(), SlotLease::acquire(link)).await.map_err(|_| timeout())??;
    lease.write(input)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(timeout());
    }
    let in_flight = lease.infer(shape, top_k, remaining.as_micros() as u64, tag)?;
    let answer = tokio::time::timeout(remaining, in_flight.result_with_outputs()).await.map_err(|_| timeout())?;
    answer.map_err(|e| match e {
        HostCallError::DeadlineExceeded => timeout(),
        other => other.into(),
    })
}
