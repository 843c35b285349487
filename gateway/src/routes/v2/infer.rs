//! `POST /v2/models/{m}[/versions/{v}]/infer`: read the body (JSON, or a
//! JSON header followed by binary data), validate it against the served
//! model, run it, answer.
//!
//! [`execute`] is the part gRPC shares ([`crate::grpc`]): everything
//! below the transport. What is common to every model is in [`super::request`]; the image
//! classifier's inputs and output are in [`super::classifier`], a tensor
//! model's in [`super::tensor_model`].

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::response::Response;

use super::answer::{OutputTensor, respond};
use super::binary::split_body;
use super::request::{Delivery, ValidRequest, binary_error};
use super::run::Ran;
use super::shm_io::SharedMemory;
use super::stats::ModelStats;
use super::request::InferRequest;
use super::{ModelName, ModelPath, ModelVersion, classifier, tensor_model};
use protocol::{ModelInfo, ModelKind, TensorSignature};
use crate::error::ApiError;
use crate::host_client::Route;
use crate::openapi::{Binary, InferErrors};
use crate::upload::read_body;
use crate::{AppState, request_id};
use service::telemetry;
use tracing::Instrument;

/// The answer's JSON (the whole body, or the binary extension's header).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct InferResponse {
    model_name: String,
    model_version: String,
    /// The request's `id`, when it had one.
    id: Option<String>,
    outputs: Vec<ResponseOutput>,
}

/// One output: its `data` in JSON, or `parameters` saying where it went
/// (`binary_data_size` bytes after the header, or a shared-memory region).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ResponseOutput {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    parameters: Option<serde_json::Value>,
}

/// Runs the model on the request's inputs. The body is the request as
/// JSON, or with the binary tensor data extension a JSON header of
/// `Inference-Header-Content-Length` bytes followed by the inputs that
/// declare `parameters.binary_data_size`, raw, in input order. The answer
/// is JSON, or the same two parts when an output is asked for as binary.
#[utoipa::path(
    post, path = "/v2/models/{name}/infer", operation_id = "v2_infer", tag = "v2",
    params(ModelName, InferHeader),
    request_body(content((InferRequest = "application/json"), (Binary = "application/octet-stream"))),
    responses((status = 200, description = "The outputs.", content((InferResponse = "application/json"), (Binary = "application/octet-stream")),
        headers(("Inference-Header-Content-Length" = u64, description = "With binary outputs: the JSON header's length in bytes."))),
        InferErrors),
)]
pub async fn infer(State(app): State<AppState>, Path(path): Path<ModelPath>, request: Request) -> Result<Response, ApiError> {
    // As predict's: a span of its own only for exported traces.
    let span = telemetry::span(|| tracing::info_span!("infer", model = %path.name));
    infer_model(app, path, request).instrument(span).await
}

async fn infer_model(app: AppState, path: ModelPath, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Admission before work: no body is read for a host that cannot serve.
    let link = app.fleet.route(&path.name, path.version.as_deref())?;
    let stats = stats_of(&app, &link);
    let answer = answer(&app, &link, &stats, started, request).await;
    counted(&stats, started, answer)
}

/// [`infer`] at a version.
#[utoipa::path(
    post, path = "/v2/models/{name}/versions/{version}/infer", operation_id = "v2_model_version_infer", tag = "v2",
    params(ModelVersion, InferHeader),
    request_body(content((InferRequest = "application/json"), (Binary = "application/octet-stream"))),
    responses((status = 200, description = "The outputs.", content((InferResponse = "application/json"), (Binary = "application/octet-stream")),
        headers(("Inference-Header-Content-Length" = u64, description = "With binary outputs: the JSON header's length in bytes."))),
        InferErrors),
)]
pub async fn infer_version(app: State<AppState>, path: Path<ModelPath>, request: Request) -> Result<Response, ApiError> {
    infer(app, path, request).await
}

/// The binary tensor data extension's request header, for the document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct InferHeader {
    /// With binary input data: the length in bytes of the JSON header that
    /// starts the body (the rest is the inputs' raw data).
    #[param(rename = "Inference-Header-Content-Length")]
    inference_header_content_length: Option<u64>,
}

/// The statistics of the model `link` serves. Counted from routing on: the
/// request named a served model, so its failures (400s included, as Triton
/// counts them) are this model's.
pub fn stats_of(app: &AppState, link: &Route) -> Arc<ModelStats> {
    app.v2_stats.of(&link.model().name, &link.model().version)
}

/// A request's outcome, counted; the answer without its element count.
pub fn counted<R>(stats: &ModelStats, started: Instant, answer: Result<(R, usize), ApiError>) -> Result<R, ApiError> {
    match &answer {
        Ok((_, elements)) => stats.succeeded(*elements, started.elapsed()),
        Err(_) => stats.fail.add(1, started.elapsed()),
    }
    answer.map(|(response, _)| response)
}

/// A validated request, by the model's kind (a tensor plan with the
/// signature it was checked against).
enum Plan<'m> {
    Classifier(classifier::Plan<'m>),
    Tensors(&'m TensorSignature, tensor_model::Plan),
}

/// REST's answer: the body read and parsed as JSON (+ binary data), then
/// the shared path, then written as JSON (+ binary data).
async fn answer(app: &AppState, link: &Route, stats: &ModelStats, started: Instant, request: Request) -> Result<(Response, usize), ApiError> {
    let tag = request_id::of(&request);
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, app.limits.max_body_bytes, app.limits.body_timeout).await?;
    let input_started = Instant::now();
    let (json, binary) = split_body(&parts.headers, body).map_err(binary_error)?;
    let shm = SharedMemory(app.system_shm.as_deref());
    let request = ValidRequest::read(&json, binary, shm, app.limits.max_body_bytes as u64)?;
    let stage = Stage { app, link, stats, started, input_started, tag: &tag };
    execute(stage, request, respond).await
}

/// Where a request is, for [`execute`]: its host, its counters, and when
/// it arrived and when its parsing began.
pub struct Stage<'a> {
    pub app: &'a AppState,
    pub link: &'a Route,
    pub stats: &'a ModelStats,
    pub started: Instant,
    pub input_started: Instant,
    /// The request id, `<id>.<i>` per element at the host.
    pub tag: &'a str,
}

/// The transport-neutral part of an inference, shared by REST and gRPC: a
/// request already parsed by its transport is validated against the model,
/// run, and handed to `format` (the transport's answer) while the regions
/// its inputs came from are still held. The answer and its element count;
/// stage times go to the statistics.
pub async fn execute<R>(
    stage: Stage<'_>,
    request: ValidRequest<'_>,
    format: impl FnOnce(Option<String>, &ModelInfo, Vec<(OutputTensor, Delivery)>) -> Result<R, ApiError>,
) -> Result<(R, usize), ApiError> {
    let Stage { app, link, stats, started, input_started, tag } = stage;
    let model = link.model();
    let ValidRequest { id, timeout, inputs, outputs, default, mut data } = request;
    // The request's tensors checked against the model and read out of the
    // body or the shared-memory regions (an image classifier's encoded
    // images are decoded later, in its run): the trace's `decode`, as v1's.
    let decoding = telemetry::span(|| tracing::info_span!("decode", splitserve.v2.inputs = inputs.len() as i64)).entered();
    let plan = match &model.kind {
        ModelKind::Classifier { input, labels } => {
            let classifier = classifier::Classifier::new(*input, labels, model.max_batch_size);
            Plan::Classifier(classifier::validate(inputs, classifier, &mut data, outputs, default)?)
        }
        // A vision model over v2 is its tensors: IMAGE in, the raw outputs back.
        ModelKind::Tensors(signature) | ModelKind::Vision(protocol::VisionModel { signature, .. }) => {
            Plan::Tensors(signature, tensor_model::validate(inputs, model, signature, &mut data, outputs, default)?)
        }
        // Its requests run for many steps: the Open Inference Protocol has
        // no shape for a job (an id to poll), so they go to the job API.
        ModelKind::Iterative(_) => {
            return Err(ApiError::InvalidRequest {
                field: "model",
                problem: format!("{} is an iterative model: submit jobs to POST /v1/models/{}/jobs (see docs/jobs.md)", model.name, model.name),
            });
        }
    };
    // Held (in use, so not unregistered) until the answer is written.
    let _input_regions = data.finish()?;
    let parsed = input_started.elapsed();
    drop(decoding);

    // The client may shorten the gateway's budget, never lengthen it.
    let budget = timeout.map_or(app.limits.request_timeout, |t| t.min(app.limits.request_timeout));
    let budget_ms = budget.as_millis() as u64;
    let deadline = started + budget;
    // Already late (the budget was 0): no slot, no host call.
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded { budget_ms });
    }
    let ran: Ran = match plan {
        Plan::Classifier(plan) => classifier::run(link, plan, deadline, budget_ms, tag, app.limits.max_pixels).await?,
        Plan::Tensors(signature, plan) => tensor_model::run(link, signature, plan, deadline, budget_ms, tag, app.limits.max_pixels).await?,
    };
    let output_started = Instant::now();
    let response = {
        let _answering = telemetry::span(|| tracing::info_span!("answer")).entered();
        format(id, model, ran.outputs)?
    };
    let n = ran.elements as u64;
    stats.compute_input.add(1, parsed + ran.decode);
    stats.queue.add(n, ran.queue);
    stats.compute_infer.add(n, ran.inference);
    stats.compute_output.add(1, output_started.elapsed());
    Ok((response, ran.elements))
}
