//! `POST /v1/models/{name}/predict`: the request path, step by step.
//!
//! admit (host ready?) -> read body (size) -> find image (type) -> decode and
//! resize (pixels) -> write pixels into a leased slot -> infer -> answer.
//!
//! The slot is leased while the body is still arriving, not after it is
//! decoded: the lease is a round trip to the host. A request that then
//! turns out bad gives its slot back unused.

use std::time::{Duration, Instant};

use axum::response::Response;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{AppState, metrics, request_id};
use crate::decode::host_side::send_to_host;
use crate::decode::{Target, decode_to_input, decodes_in_place};
use crate::error::ApiError;
use crate::openapi::{Binary, InferErrors};
use crate::routes::{host_call, vision};
use crate::upload::{Format, PIXELS_CONTENT_TYPE, Upload, extract_image, read_body};
use protocol::{HostDecode, ImageShape, Payload};
use service::telemetry;
use tracing::Instrument;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictParams {
    /// Classifiers: how many classes to return, best first (at least 1;
    /// default: the gateway's --default-top-k; at most the model's labels).
    #[param(minimum = 1)]
    top_k: Option<u32>,
    /// A deadline in milliseconds, shorter than the gateway's
    /// --request-timeout-ms (a longer one is cut to it). One that cannot be
    /// met (0, or shorter than the work) is a 504 `deadline_exceeded`.
    timeout_ms: Option<u64>,
    /// Detectors: the lowest score returned, 0 to 1 (default: the model's).
    score_threshold: Option<f32>,
    /// Detectors: the most boxes returned, 1 to the model's `max_boxes`
    /// (default: the model's).
    max_detections: Option<u32>,
    /// Vision models: `json` (default), or for a segmenter `png` (the mask)
    /// or `cutout` (the image as RGBA with the mask as alpha). Without it,
    /// `Accept: image/png` asks a segmenter for the mask.
    format: Option<String>,
}

/// The body of a predict request sent as multipart/form-data: the image in
/// the field `image` or `file` (else the first field with a file name).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageForm {
    /// A PNG, JPEG or WebP file.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// What predict answers in JSON, by the model's kind.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum PredictAnswer {
    Classes(PredictResponse),
    Detections(vision::DetectionAnswer),
    Segments(vision::SegmentationAnswer),
}

/// A classifier's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictResponse {
    pub model: String,
    pub version: String,
    pub predictions: Vec<Prediction>,
    pub timings_ms: Timings,
    /// How many requests shared this one's forward pass.
    pub batch_size: u32,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    pub label: String,
    pub index: u32,
    pub score: f32,
}

/// Milliseconds spent in each stage.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Timings {
    pub decode: f64,
    pub queue: f64,
    pub inference: f64,
    pub total: f64,
}

/// One image in: a classifier's top classes, a detector's boxes, or a
/// segmenter's classes (or mask as PNG). An iterative model's requests run
/// as jobs: with `Prefer: respond-async` and its JSON parameters, this
/// answers 202 as `POST /v1/models/{name}/jobs` does. The image is the body as it is
/// (PNG, JPEG or WebP; the type sniffed for application/octet-stream),
/// a multipart form's file, or the model's input as raw pixels
/// (application/x-pixels: height x width x channels uint8).
#[utoipa::path(
    post, path = "/v1/models/{name}/predict", operation_id = "v1_predict", tag = "v1",
    params(("name" = String, Path, description = "The model's name, as `GET /v1/models` lists it.", example = "digits"), PredictParams),
    request_body(content(
        (Binary = "image/png"), (Binary = "image/jpeg"), (Binary = "image/webp"), (Binary = "application/octet-stream"),
        (ImageForm = "multipart/form-data"), (Binary = "application/x-pixels"),
    )),
    responses(
        (status = 200, description = "The answer: JSON, or for a segmenter asked for `png` or `cutout`, a PNG.",
            content((PredictAnswer = "application/json"), (Binary = "image/png"))),
        (status = 202, description = "An iterative model's job, with `Prefer: respond-async` (see `POST /v1/models/{name}/jobs`).",
            body = crate::routes::jobs::JobBody),
        InferErrors,
    ),
)]
pub async fn predict(
    State(app): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<PredictParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    // A span of its own only for exported traces: each span a log layer
    // formats costs a raw-pixels request about 5% of its CPU
    // (bench/gateway_instructions.py), and a failed request's log line
    // names its route (failure_log.rs).
    let span = telemetry::span(|| tracing::info_span!("predict", model = %name));
    predict_model(app, name, params, request).instrument(span).await
}

async fn predict_model(app: AppState, name: String, params: Result<Query<PredictParams>, QueryRejection>, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Query(params) = params.map_err(|e| ApiError::InvalidRequest { field: "query string", problem: e.body_text() })?;
    // Admission before work: no body is read for a host that cannot serve.
    let link = app.fleet.route(&name, None)?;
    // Borrowed from the link for the whole request: ModelInfo carries every
    // label (1000 strings for an ImageNet model), too much to copy per request.
    let model = link.model();
    if model.iterative().is_some() {
        return super::jobs::from_predict(&app, &link, request).await;
    }
    let budget = match params.timeout_ms {
        Some(ms) => Duration::from_millis(ms).min(app.limits.request_timeout),
        None => app.limits.request_timeout,
    };
    if model.vision().is_some() {
        let params = vision::VisionParams { score_threshold: params.score_threshold, max_detections: params.max_detections, format: params.format };
        return vision::predict(&app, &link, params, request, started + budget, started).await;
    }
    // Images in, classes out: a tensor model's named inputs need v2.
    let Some((input, labels)) = model.classifier() else {
        return Err(ApiError::InvalidRequest {
            field: "model",
            problem: format!("{name} is a tensor model, not an image classifier; send its inputs to POST /v2/models/{name}/infer"),
        });
    };
    let deadline = started + budget;
    let top_k = params.top_k.unwrap_or(app.limits.default_top_k);
    if top_k == 0 {
        return Err(ApiError::InvalidRequest { field: "top_k", problem: "must be at least 1".into() });
    }
    let top_k = top_k.min(labels.len() as u32);

    let tag = request_id::of(&request);
    let budget_ms = budget.as_millis() as u64;
    let (parts, body) = request.into_parts();
    let prepare = async {
        let body = read_body(body, &parts.headers, app.limits.max_body_bytes, app.limits.body_timeout).await?;
        metrics::record_body(body.len());
        let upload = extract_image(&parts.headers, body).await?;
        let decode_started = Instant::now();
        let decoding = telemetry::span(|| tracing::info_span!("decode", splitserve.image.bytes = upload.bytes.len() as i64));
        let (bytes, payload) = model_input(upload, input, app.limits.max_pixels, model.host_decode.as_ref()).instrument(decoding).await?;
        Ok::<_, ApiError>((bytes, payload, decode_started.elapsed()))
    };
    // The body first: a JPEG small enough to decode in place blocks this
    // worker thread for a moment, and the lease's message must not be
    // waiting in that worker's run queue meanwhile (tokio runs the task a
    // task wakes next, on the same worker, and no other worker may take
    // it). The lease goes while the body is still arriving, or once it is
    // decoded. The first error ends both (a lease not wanted is released).
    let ((bytes, payload, decode), lease) = tokio::try_join!(prepare, host_call::lease(&link, deadline, budget_ms))?;

    let (top, t) = host_call::classify_leased(lease, &bytes, payload, top_k, deadline, budget_ms, tag).await?;
    let _answering = telemetry::span(|| tracing::info_span!("answer")).entered();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (queue, inference) = (Duration::from_micros(t.queue_us), Duration::from_micros(t.inference_us));
    metrics::record_stages(decode, queue, inference, started.elapsed());
    let predictions = top
        .into_iter()
        .map(|(index, score)| Prediction {
            label: labels.get(index as usize).cloned().unwrap_or_else(|| index.to_string()),
            index,
            score,
        })
        .collect();
    Ok(super::json_answer::json_answer(&PredictResponse {
        model: model.name.clone(),
        version: model.version.clone(),
        predictions,
        timings_ms: Timings {
            decode: ms(decode),
            queue: t.queue_us as f64 / 1e3,
            inference: t.inference_us as f64 / 1e3,
            total: ms(started.elapsed()),
        },
        batch_size: t.batch_size,
    }))
}

/// What goes into the slot for an upload: raw pixels checked for length,
/// an encoded image decoded and resized (on the blocking pool), or a JPEG
/// as it is, for a host that decodes it (`offer`; see [`send_to_host`]).
async fn model_input(upload: Upload, input: ImageShape, max_pixels: u64, offer: Option<&HostDecode>) -> Result<(bytes::Bytes, Payload), ApiError> {
    if let (Format::Encoded(image::ImageFormat::Jpeg), Some(offer)) = (upload.format, offer)
        && let Some(to_host) = send_to_host(&upload.bytes, offer, max_pixels)?
    {
        let len = upload.bytes.len() as u32;
        return Ok((upload.bytes, Payload::Jpeg { len, orientation: to_host.orientation }));
    }
    let pixels = match upload.format {
        Format::Pixels => {
            let want = input.len();
            if upload.bytes.len() as u64 != want {
                return Err(ApiError::InvalidRequest {
                    field: "body",
                    problem: format!(
                        "{PIXELS_CONTENT_TYPE} must be {want} bytes ({}x{}x{} uint8, height x width x channels), got {}",
                        input.height, input.width, input.channels, upload.bytes.len()
                    ),
                });
            }
            upload.bytes
        }
        Format::Encoded(format) => {
            let target = Target { width: input.width, height: input.height, channels: input.channels };
            let pixels = if decodes_in_place(&upload.bytes) {
                decode_to_input(&upload.bytes, format, target, max_pixels)?
            } else {
                tokio::task::spawn_blocking(move || decode_to_input(&upload.bytes, format, target, max_pixels))
                    .await
                    .map_err(|e| ApiError::Internal(format!("decode task: {e}")))??
            };
            pixels.into()
        }
    };
    Ok((pixels, Payload::Input))
}
