//! `POST /v1/models/{name}/predict` for a vision model: the image is
//! decoded at its own size, brought to the model's input (stretched or
//! letterboxed, the transform kept), run through the host like a tensor
//! model's item, and the outputs mapped back onto the image:
//!
//! - detection: `{"detections": [{"label", "index", "score", "box"}], "image", "timings_ms"}`,
//!   boxes in the image's pixels, `score_threshold` and `max_detections` from the query;
//! - segmentation: by `?format=` or `Accept`, `json` (per-class pixel
//!   counts and boxes), `png` (class index map or 8-bit alpha) or `cutout`
//!   (the image as RGBA with the alpha applied).

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use image::ImageFormat;
use protocol::vision::{DetectionSpec, Resize, SegmentationSpec, VisionModel, VisionTask};
use protocol::{Ask, HostDecode, ImageShape, ModelInfo, Payload};
use serde_json::json;

use crate::decode::host_side::{ToHost, send_to_host};
use crate::decode::{DecodeError, decode_upright};
use crate::error::{ApiError, invalid};
use crate::host_client::Route;
use crate::postprocess::boxes::{Selection, detections};
use crate::postprocess::{Transform, masks};
use crate::routes::host_call;
use crate::upload::{Format, PIXELS_CONTENT_TYPE, Upload, extract_image, read_body};
use crate::{AppState, request_id};

/// The query parameters only a vision model reads.
#[derive(Debug, Default)]
pub struct VisionParams {
    pub score_threshold: Option<f32>,
    pub max_detections: Option<u32>,
    pub format: Option<String>,
}

/// A detector's JSON answer (built in [`predict`]; described here).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DetectionAnswer {
    model: String,
    version: String,
    batch_size: u32,
    image: ImageSize,
    detections: Vec<crate::postprocess::boxes::Detection>,
    timings_ms: VisionTimings,
}

/// A segmenter's JSON answer: every class's pixels and box.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SegmentationAnswer {
    model: String,
    version: String,
    batch_size: u32,
    image: ImageSize,
    classes: Vec<masks::ClassArea>,
    timings_ms: VisionTimings,
}

/// The client's image, in pixels (boxes are in these).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ImageSize {
    width: u32,
    height: u32,
}

/// Milliseconds spent in each stage.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct VisionTimings {
    decode: f64,
    queue: f64,
    inference: f64,
    postprocess: f64,
    total: f64,
}

/// What a request gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Json,
    Png,
    Cutout,
}

/// A request for a vision model, admitted (`link` is ready and serves
/// the model named): its parameters are checked before the body is read.
pub async fn predict(app: &AppState, link: &Route, params: VisionParams, request: Request, deadline: Instant, started: Instant) -> Result<Response, ApiError> {
    let model: &ModelInfo = link.model();
    let Some(vision) = model.vision() else { return Err(ApiError::Internal("not a vision model".into())) };
    let answer = choose_answer(params.format.as_deref(), request.headers(), &vision.task)?;
    let pick = match &vision.task {
        VisionTask::Detection(spec) => Some(selection(&params, spec)?),
        VisionTask::Segmentation(_) => None,
    };
    let tag = request_id::of(&request);
    let (parts, body) = request.into_parts();
    let budget_ms = deadline.saturating_duration_since(started).as_millis() as u64;
    let (input, resize, max_pixels) = (vision.input, vision.resize(), app.limits.max_pixels);
    let keep_rgb = answer == Answer::Cutout;
    let body_to_input = async {
        let body = read_body(body, &parts.headers, app.limits.max_body_bytes, app.limits.body_timeout).await?;
        crate::metrics::record_body(body.len());
        let upload = extract_image(&parts.headers, body).await?;
        let decode_started = Instant::now();
        let prepared = match to_host_decode(&upload, model.host_decode.as_ref(), keep_rgb, max_pixels)? {
            // The host decodes and letterboxes it on its GPU; the transform
            // follows from the header alone (`Resize::content`, shared).
            Some(to_host) => Prepared {
                transform: Transform::new(resize, to_host.upright, (input.width, input.height)),
                payload: Payload::Jpeg { len: upload.bytes.len() as u32, orientation: to_host.orientation },
                pixels: upload.bytes.to_vec(),
                rgb: None,
            },
            None => tokio::task::spawn_blocking(move || prepare(upload, input, resize, keep_rgb, max_pixels))
                .await
                .map_err(|e| ApiError::Internal(format!("decode task: {e}")))??,
        };
        Ok::<_, ApiError>((prepared, decode_started.elapsed()))
    };
    // Admission before the body: the slot is leased while the body
    // arrives, so an overloaded host's 503 goes out before the body is read
    // (a lease not wanted is released when the body fails).
    let ((prepared, decode), lease) = tokio::try_join!(body_to_input, host_call::lease(link, deadline, budget_ms))?;
    // The answer form: a segmenter's mask comes back 8-bit, made on the GPU.
    let (outputs, t) = host_call::run_tensors_leased(lease, &prepared.pixels, prepared.payload, Ask::Answer, deadline, budget_ms, tag).await?;
    let post_started = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let timings = json!({ "decode": ms(decode), "queue": t.queue_us as f64 / 1e3, "inference": t.inference_us as f64 / 1e3 });
    let transform = prepared.transform;
    let (width, height) = transform.original;
    let head = json!({ "model": model.name, "version": model.version, "batch_size": t.batch_size, "image": { "width": width, "height": height } });
    let record = || crate::metrics::record_stages(decode, Duration::from_micros(t.queue_us), Duration::from_micros(t.inference_us), started.elapsed());
    let finish = |mut body: serde_json::Value, mut timings: serde_json::Value| {
        timings["postprocess"] = json!(ms(post_started.elapsed()));
        timings["total"] = json!(ms(started.elapsed()));
        record();
        body["timings_ms"] = timings;
        super::json_answer::json_answer(&body)
    };
    match &vision.task {
        VisionTask::Detection(spec) => {
            let pick = pick.unwrap_or(Selection { score_threshold: spec.score_threshold, max_detections: spec.max_detections });
            let found = detections(&outputs, &vision.signature, spec, &transform, pick);
            let mut body = head;
            body["detections"] = json!(found);
            Ok(finish(body, timings))
        }
        VisionTask::Segmentation(spec) => {
            let (spec, signature): (SegmentationSpec, _) = (spec.clone(), vision.signature.clone());
            let rgb = prepared.rgb;
            let made = tokio::task::spawn_blocking(move || segmentation_answer(&outputs, &signature, &spec, &transform, answer, rgb))
                .await
                .map_err(|e| ApiError::Internal(format!("mask task: {e}")))?
                .map_err(ApiError::Internal)?;
            match made {
                Made::Json(classes) => {
                    let mut body = head;
                    body["classes"] = classes;
                    Ok(finish(body, timings))
                }
                Made::Png(png) => {
                    record();
                    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("image/png"))], png).into_response())
                }
            }
        }
    }
}

/// `?format=` first, else the first of `image/png` or `application/json`
/// (or a wildcard) that `Accept` lists; JSON when nothing says.
fn choose_answer(format: Option<&str>, headers: &HeaderMap, task: &VisionTask) -> Result<Answer, ApiError> {
    let segmentation = matches!(task, VisionTask::Segmentation(_));
    let allowed = if segmentation { "json, png or cutout" } else { "json (a detector answers in JSON)" };
    if let Some(format) = format {
        return match (format, segmentation) {
            ("json", _) => Ok(Answer::Json),
            ("png", true) => Ok(Answer::Png),
            ("cutout", true) => Ok(Answer::Cutout),
            (other, _) => Err(invalid("format", format!("{other:?} is not one of {allowed}"))),
        };
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    for range in accept.split(',') {
        let essence = range.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "image/png" | "image/*" if segmentation => return Ok(Answer::Png),
            "application/json" | "application/*" | "*/*" => return Ok(Answer::Json),
            _ => {}
        }
    }
    Ok(Answer::Json)
}

/// The request's threshold and count, within what the model can give.
fn selection(params: &VisionParams, spec: &DetectionSpec) -> Result<Selection, ApiError> {
    let score_threshold = params.score_threshold.unwrap_or(spec.score_threshold);
    if !(0.0..=1.0).contains(&score_threshold) {
        return Err(invalid("score_threshold", format!("{score_threshold} is outside 0..=1")));
    }
    let max_detections = params.max_detections.unwrap_or(spec.max_detections);
    if !(1..=spec.max_boxes).contains(&max_detections) {
        return Err(invalid("max_detections", format!("{max_detections} is outside 1..={} (the model's max_boxes)", spec.max_boxes)));
    }
    Ok(Selection { score_threshold, max_detections })
}

/// The model's input from an upload (or the JPEG for the host to decode
/// into it), the transform that made it, and the upload's own RGB pixels
/// when the answer needs them (a cut-out).
struct Prepared {
    pixels: Vec<u8>,
    payload: Payload,
    transform: Transform,
    rgb: Option<Vec<u8>>,
}

/// Whether this upload goes to the host as the JPEG it is: a JPEG the
/// host's offer takes (see [`send_to_host`]), unless the answer needs the
/// image's own pixels here (a cut-out: then it is decoded here anyway).
fn to_host_decode(upload: &Upload, offer: Option<&HostDecode>, keep_rgb: bool, max_pixels: u64) -> Result<Option<ToHost>, ApiError> {
    match (upload.format, offer) {
        (Format::Encoded(ImageFormat::Jpeg), Some(offer)) if !keep_rgb => Ok(send_to_host(&upload.bytes, offer, max_pixels)?),
        _ => Ok(None),
    }
}

fn prepare(upload: Upload, input: ImageShape, resize: Resize, keep_rgb: bool, max_pixels: u64) -> Result<Prepared, ApiError> {
    let size = (input.width, input.height);
    let (pixels, original, channels) = match upload.format {
        // Already the model's input: the transform is the identity.
        Format::Pixels => {
            if upload.bytes.len() as u64 != input.len() {
                return Err(invalid(
                    "body",
                    format!("{PIXELS_CONTENT_TYPE} must be {} bytes ({}x{}x{} uint8), got {}", input.len(), input.height, input.width, input.channels, upload.bytes.len()),
                ));
            }
            (upload.bytes.to_vec(), size, input.channels)
        }
        Format::Encoded(format) => {
            let channels = if keep_rgb { 3 } else { input.channels };
            let (pixels, original) = decode(&upload.bytes, format, channels, max_pixels)?;
            (pixels, original, channels)
        }
    };
    let transform = Transform::new(resize, original, size);
    let rgb = keep_rgb.then(|| if channels == 3 { pixels.clone() } else { pixels.iter().flat_map(|&v| [v, v, v]).collect() });
    let for_model = if channels == input.channels { pixels } else { gray(pixels, original) };
    let pixels = transform.apply(for_model, input.channels, resize)?;
    Ok(Prepared { pixels, payload: Payload::Input, transform, rgb })
}

fn decode(bytes: &[u8], format: ImageFormat, channels: u32, max_pixels: u64) -> Result<(Vec<u8>, (u32, u32)), DecodeError> {
    decode_upright(bytes, format, channels, max_pixels)
}

/// RGB to gray (for a gray model when the RGB was kept for a cut-out).
fn gray(rgb: Vec<u8>, (width, height): (u32, u32)) -> Vec<u8> {
    match image::RgbImage::from_raw(width, height, rgb) {
        Some(image) => image::DynamicImage::ImageRgb8(image).into_luma8().into_raw(),
        None => Vec::new(),
    }
}

enum Made {
    Json(serde_json::Value),
    Png(Vec<u8>),
}

fn segmentation_answer(
    outputs: &[u8],
    signature: &protocol::TensorSignature,
    spec: &SegmentationSpec,
    t: &Transform,
    answer: Answer,
    rgb: Option<Vec<u8>>,
) -> Result<Made, String> {
    let mask = masks::to_original(outputs, signature, spec, t)?;
    Ok(match (answer, rgb) {
        (Answer::Json, _) => Made::Json(json!(mask.areas(&spec.labels))),
        (Answer::Png, _) => Made::Png(mask.png(spec.mask)?),
        (Answer::Cutout, Some(rgb)) => Made::Png(mask.cutout(&rgb)?),
        (Answer::Cutout, None) => return Err("a cut-out without the image's pixels".into()),
    })
}

/// For `/v1/models`: what a vision model answers, beside its input.
pub fn describe(v: &VisionModel) -> serde_json::Value {
    let input = json!({ "width": v.input.width, "height": v.input.height, "channels": v.input.channels, "dtype": "uint8" });
    match &v.task {
        VisionTask::Detection(d) => json!({
            "kind": "detection", "input": input, "labels": d.labels, "resize": resize_name(d.resize),
            "max_boxes": d.max_boxes, "score_threshold": shortest(d.score_threshold), "max_detections": d.max_detections,
        }),
        VisionTask::Segmentation(s) => json!({
            "kind": "segmentation", "input": input, "labels": s.labels, "resize": resize_name(s.resize),
            "mask": { "width": s.width, "height": s.height, "planes": s.planes() },
        }),
    }
}

/// An f32 as the shortest decimal that reads back as it (0.3, not 0.30000001192092896).
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn resize_name(r: Resize) -> &'static str {
    match r {
        Resize::Stretch => "stretch",
        Resize::Letterbox { .. } => "letterbox",
    }
}
