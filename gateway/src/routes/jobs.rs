//! The job API, for iterative models (a diffusion model's many steps):
//! submit, then watch, cancel and collect by id.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/models/{name}/jobs` (or predict with `Prefer: respond-async`) | 202 and the job |
//! | `GET /v1/jobs/{id}` | state, progress, timestamps, error |
//! | `GET /v1/jobs/{id}/result` | the output, as predict would answer it (PNG) |
//! | `POST /v1/jobs/{id}/cancel` | cancel before the next step |
//! | `GET /v1/jobs/{id}/events` | progress as server-sent events ([`super::job_events`]) |
//!
//! The host keeps the jobs; this gateway only finds the host a job's id
//! names and asks it, so any gateway answers for any job.

use std::io::Cursor;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::jobs::{IterativeModel, JobView, MAX_IDEMPOTENCY_KEY};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoResponses, ToSchema};

use crate::AppState;
use crate::error::{ApiError, ErrorBody, invalid};
use crate::host_client::Link;
use crate::upload::read_body;

/// The largest submit body: a few named integers need far less.
pub const MAX_JOB_BODY: usize = 16 * 1024;

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobBody {
    /// Names the job and the host that runs it; any gateway answers for it.
    pub id: String,
    pub model: String,
    /// `queued`, `running`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Steps done, of `steps`.
    pub step: u32,
    pub steps: u32,
    /// The share done, 0 to 1 (`step / steps`).
    pub progress: f64,
    /// Unix times in milliseconds, by the host's clock.
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Why a failed job failed.
    pub error: Option<String>,
    pub urls: JobUrls,
}

/// Where to go next with a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobUrls {
    pub get: String,
    pub result: String,
    pub cancel: String,
    pub events: String,
}

impl From<JobView> for JobBody {
    fn from(v: JobView) -> Self {
        let base = format!("/v1/jobs/{}", v.id);
        JobBody {
            urls: JobUrls { get: base.clone(), result: format!("{base}/result"), cancel: format!("{base}/cancel"), events: format!("{base}/events") },
            progress: if v.steps == 0 { 0.0 } else { f64::from(v.step) / f64::from(v.steps) },
            status: v.state.name().into(),
            id: v.id,
            model: v.model,
            step: v.step,
            steps: v.steps,
            created_ms: v.created_ms,
            started_ms: v.started_ms,
            finished_ms: v.finished_ms,
            error: v.error,
        }
    }
}

/// The errors of a job submit.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SubmitErrors {
    /// A parameter is missing, unknown or out of its range (the message names it and the range).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No host serves this model.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body, the step count or the Idempotency-Key is over its limit (named).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The model's queue of jobs is full (the limit is named); `Retry-After` says when to retry.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// Its hosts are loading or restarting; `Retry-After` says when to retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of a call about one job.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum JobErrors {
    /// No job has this id (never submitted here, or expired).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The host that holds it is away; `Retry-After` says when to retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Starts a job on an iterative model: 202 with the job (its id, state and
/// urls) and a `Location`. The body is a JSON object of the model's
/// parameters (`GET /v1/models/{name}` lists them with their ranges) and
/// optionally `steps` (at most the model's). A retried submit with the
/// same `Idempotency-Key` gets the same job.
#[utoipa::path(
    post, path = "/v1/models/{name}/jobs", operation_id = "v1_submit_job", tag = "jobs",
    params(
        ("name" = String, Path, description = "An iterative model's name.", example = "digit-diffusion"),
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 128 bytes; a retry with the same key returns the same job."),
    ),
    request_body(content = Object, content_type = "application/json", example = json!({"class": 7, "seed": 42, "steps": 100})),
    responses((status = 202, description = "The job, queued.", body = JobBody), SubmitErrors),
)]
#[tracing::instrument(skip_all, fields(model = %name))]
pub async fn submit(State(app): State<AppState>, Path(name): Path<String>, request: Request) -> Result<Response, ApiError> {
    let link = app.fleet.route(&name, None)?;
    submit_to(&app, &link, request).await
}

/// A submit to `link`'s model (also predict's, with `Prefer: respond-async`).
pub async fn submit_to(app: &AppState, link: &Link, request: Request) -> Result<Response, ApiError> {
    let model = link.model();
    let Some(iterative) = model.iterative() else {
        return Err(invalid("model", format!("{} is not an iterative model: send its requests to POST /v1/models/{}/predict", model.name, model.name)));
    };
    let key = idempotency_key(request.headers())?;
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, MAX_JOB_BODY, app.limits.body_timeout).await?;
    let (params, steps) = parse_params(&body, iterative)?;
    let job = link.submit_job(params, steps, key).await?;
    accepted(job)
}

/// Predict on an iterative model: a job, as the client preferred
/// (`Prefer: respond-async`, RFC 7240); without it a 400 saying so, since
/// holding the request open for minutes is what jobs exist to avoid.
pub async fn from_predict(app: &AppState, link: &Link, request: Request) -> Result<Response, ApiError> {
    let prefers = request.headers().get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    if !prefers.map(str::trim).any(|p| p.eq_ignore_ascii_case("respond-async")) {
        let name = &link.model().name;
        return Err(invalid("Prefer", format!("{name} is an iterative model whose requests run as jobs: send Prefer: respond-async, or POST /v1/models/{name}/jobs")));
    }
    submit_to(app, link, request).await
}

/// 202 with the job and where to find it.
fn accepted(job: JobView) -> Result<Response, ApiError> {
    let body = JobBody::from(job);
    let location = HeaderValue::from_str(&body.urls.get).map_err(|e| ApiError::Internal(format!("job url: {e}")))?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body)).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().map_err(|_| invalid("Idempotency-Key", "must be visible ASCII"))?;
    if key.is_empty() {
        return Err(invalid("Idempotency-Key", "must not be empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::JobTooLarge {
            field: "Idempotency-Key".into(),
            problem: format!("{} bytes, over the {MAX_IDEMPOTENCY_KEY}-byte limit", key.len()),
        });
    }
    Ok(Some(key.to_string()))
}

/// The body's parameters in the model's order, and its step count.
pub fn parse_params(body: &[u8], model: &IterativeModel) -> Result<(Vec<i64>, Option<u32>), ApiError> {
    let names = || model.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let object: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(invalid("body", format!("must be a JSON object of the parameters ({}) and optionally steps", names()))),
        Err(e) => return Err(invalid("body", format!("not JSON: {e}"))),
    };
    for key in object.keys() {
        if key != "steps" && !model.params.iter().any(|p| &p.name == key) {
            return Err(ApiError::InvalidParam { field: key.clone(), problem: format!("unknown parameter; the model takes {} and steps", names()) });
        }
    }
    let integer = |field: &str, v: &Value| {
        v.as_i64().ok_or_else(|| ApiError::InvalidParam { field: field.into(), problem: format!("{v} is not an integer") })
    };
    let mut params = Vec::with_capacity(model.params.len());
    for p in &model.params {
        let value = object.get(&p.name).ok_or_else(|| ApiError::InvalidParam {
            field: p.name.clone(),
            problem: format!("missing; an integer in {}..={} is required", p.min, p.max),
        })?;
        let value = integer(&p.name, value)?;
        if !(p.min..=p.max).contains(&value) {
            return Err(ApiError::InvalidParam { field: p.name.clone(), problem: format!("{value} is outside {}..={}", p.min, p.max) });
        }
        params.push(value);
    }
    let steps = match object.get("steps") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let steps = integer("steps", v)?;
            if steps < 1 {
                return Err(invalid("steps", "must be at least 1"));
            }
            if steps > i64::from(model.steps) {
                return Err(ApiError::JobTooLarge { field: "steps".into(), problem: format!("{steps} is over the model's limit of {} steps", model.steps) });
            }
            Some(steps as u32)
        }
    };
    Ok((params, steps))
}

/// A job's state and progress.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", operation_id = "v1_get_job", tag = "jobs",
    params(("id" = String, Path, description = "The id the submit answered.")),
    responses((status = 200, description = "The job.", body = JobBody), JobErrors),
)]
pub async fn status(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<JobBody>, ApiError> {
    let link = app.fleet.job_host(&id)?;
    Ok(Json(link.job_status(&id).await?.into()))
}

/// Cancels a job: a queued one at once, a running one before its next
/// step (the answer may still say `running`; the events and the status
/// say `canceled` within one step). A finished job stays as it is.
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", operation_id = "v1_cancel_job", tag = "jobs",
    params(("id" = String, Path, description = "The id the submit answered.")),
    responses((status = 202, description = "The job as it is now.", body = JobBody), JobErrors),
)]
pub async fn cancel(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let link = app.fleet.job_host(&id)?;
    let job = JobBody::from(link.cancel_job(&id).await?);
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

/// A succeeded job's output as predict would answer it: its image as a PNG.
#[utoipa::path(
    get, path = "/v1/jobs/{id}/result", operation_id = "v1_job_result", tag = "jobs",
    params(("id" = String, Path, description = "The id the submit answered.")),
    responses(
        (status = 200, description = "The image.", content_type = "image/png", body = crate::openapi::Binary),
        (status = 409, description = "The job has no result: it is queued, running, failed or canceled (named).", body = ErrorBody),
        JobErrors,
    ),
)]
pub async fn result(State(app): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let link = app.fleet.job_host(&id)?;
    let output = link.job_result(&id).await.map_err(|e| match ApiError::from(e) {
        ApiError::NoResult { state, .. } => ApiError::NoResult { id: id.clone(), state },
        other => other,
    })?;
    let png = encode_png(&output.pixels, output.shape).map_err(ApiError::Internal)?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// A job's image (height x width x channels uint8) as a PNG.
fn encode_png(pixels: &[u8], shape: protocol::ImageShape) -> Result<Vec<u8>, String> {
    use image::ImageEncoder;
    let color = match shape.channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        n => return Err(format!("a job's image has {n} channels")),
    };
    let mut out = Cursor::new(Vec::new());
    image::codecs::png::PngEncoder::new(&mut out).write_image(pixels, shape.width, shape.height, color).map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::jobs::ParamSpec;

    fn model() -> IterativeModel {
        IterativeModel {
            steps: 200,
            params: vec![ParamSpec { name: "class".into(), min: 0, max: 9 }, ParamSpec { name: "seed".into(), min: 0, max: 99 }],
            output: protocol::ImageShape { width: 2, height: 2, channels: 1 },
            max_queued: 4,
            host_tag: "ab".into(),
        }
    }

    fn error(body: &str) -> (StatusCode, String) {
        let e = parse_params(body.as_bytes(), &model()).unwrap_err();
        (e.status(), e.to_string())
    }

    #[test]
    fn parameters_come_in_the_model_order_with_optional_steps() {
        assert_eq!(parse_params(br#"{"seed": 5, "class": 3}"#, &model()).unwrap(), (vec![3, 5], None));
        assert_eq!(parse_params(br#"{"seed": 5, "class": 3, "steps": 20}"#, &model()).unwrap(), (vec![3, 5], Some(20)));
    }

    #[test]
    fn bad_parameters_name_the_field_and_the_limit() {
        assert_eq!(error(r#"{"class": 10, "seed": 1}"#), (StatusCode::BAD_REQUEST, "invalid class: 10 is outside 0..=9".into()));
        assert_eq!(error(r#"{"seed": 1}"#).1, "invalid class: missing; an integer in 0..=9 is required");
        assert!(error(r#"{"class": 1, "seed": 1, "colour": 2}"#).1.contains("invalid colour: unknown parameter"));
        assert!(error(r#"{"class": 1.5, "seed": 1}"#).1.contains("not an integer"));
        assert_eq!(error("[1]").0, StatusCode::BAD_REQUEST);
        assert_eq!(error("{").0, StatusCode::BAD_REQUEST);
        let (status, message) = error(r#"{"class": 1, "seed": 1, "steps": 201}"#);
        assert_eq!((status, message.as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "steps: 201 is over the model's limit of 200 steps"));
        assert_eq!(error(r#"{"class": 1, "seed": 1, "steps": 0}"#).0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_gray_image_becomes_a_png_of_its_size() {
        let png = encode_png(&[0, 255, 255, 0], protocol::ImageShape { width: 2, height: 2, channels: 1 }).unwrap();
        let back = image::load_from_memory(&png).unwrap().into_luma8();
        assert_eq!((back.width(), back.height(), back.into_raw()), (2, 2, vec![0, 255, 255, 0]));
    }
}
