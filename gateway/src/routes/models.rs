//! What is served: model metadata and the hosts' counters.

use axum::Json;
use axum::extract::{Path, Query, State};
use protocol::{HostStatus, ModelInfo, ModelKind};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::error::{ApiError, invalid};
use crate::openapi::{ErrorBody, LookupErrors};

fn describe_model(m: &ModelInfo) -> Value {
    let mut body = json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "max_batch_size": m.max_batch_size,
        "device": m.device,
    });
    match &m.kind {
        // A tensor model: its named inputs and outputs, per batch item.
        ModelKind::Tensors(signature) => {
            let list = |specs: &[protocol::TensorSpec]| -> Vec<Value> {
                specs.iter().map(|s| json!({ "name": s.name, "datatype": s.datatype.name(), "dims": s.dims })).collect()
            };
            body["kind"] = json!("tensors");
            body["inputs"] = json!(list(&signature.inputs));
            body["outputs"] = json!(list(&signature.outputs));
        }
        ModelKind::Vision(v) => {
            for (key, value) in crate::routes::vision::describe(v).as_object().into_iter().flatten() {
                body[key] = value.clone();
            }
        }
        ModelKind::Iterative(i) => {
            body["kind"] = json!("iterative");
            body["steps"] = json!(i.steps);
            body["params"] = json!(i.params.iter().map(|p| json!({ "name": p.name, "min": p.min, "max": p.max })).collect::<Vec<_>>());
            body["output"] = json!({ "width": i.output.width, "height": i.output.height, "channels": i.output.channels, "format": "image/png" });
        }
        ModelKind::Classifier { input, labels } => {
            body["kind"] = json!("image_classifier");
            body["input"] = json!({ "width": input.width, "height": input.height, "channels": input.channels, "dtype": "uint8" });
            body["labels"] = json!(labels);
        }
    }
    body
}

/// A model as `/v1/models` describes it. The fields after `kind` depend on
/// it: `input` and `labels` for an image model, `resize` and more for a
/// vision model, `inputs` and `outputs` for a tensor model. (The answer is
/// built by `describe_model`; this is its description, which the
/// integration test `openapi` checks against live answers.)
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelDescription {
    name: String,
    version: String,
    description: String,
    max_batch_size: u32,
    /// Where the host runs the model, e.g. `cpu` or `cuda:0`.
    device: String,
    /// `image_classifier`, `detection`, `segmentation`, `tensors` or
    /// `iterative` (served as jobs: `POST /v1/models/{name}/jobs`).
    kind: String,
    /// An image model's input: width, height, channels and dtype (`uint8`).
    input: Option<ImageInput>,
    /// An image model's class labels, in index order.
    labels: Option<Vec<String>>,
    /// A vision model's resize: `stretch` or `letterbox`.
    resize: Option<String>,
    /// A detector's most boxes, and its default threshold and count.
    max_boxes: Option<u32>,
    score_threshold: Option<f64>,
    max_detections: Option<u32>,
    /// A segmenter's mask: width, height and planes.
    #[schema(value_type = Option<Object>)]
    mask: Option<Value>,
    /// A tensor model's inputs and outputs, per batch item.
    inputs: Option<Vec<TensorDescription>>,
    outputs: Option<Vec<TensorDescription>>,
    /// An iterative model's most (and default) steps per job.
    steps: Option<u32>,
    /// An iterative model's job parameters: each `{name, min, max}` (integers).
    #[schema(value_type = Option<Vec<Object>>)]
    params: Option<Value>,
    /// An iterative model's result: width, height, channels, format (`image/png`).
    #[schema(value_type = Option<Object>)]
    output: Option<Value>,
    /// `GET /v1/models`: how many hosts serve it, and how many are ready.
    hosts: Option<usize>,
    ready_hosts: Option<usize>,
    /// `GET /v1/models/{name}`: whether the version requests go to is ready.
    ready: Option<bool>,
}

/// An image model's input, in pixels.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageInput {
    width: u32,
    height: u32,
    channels: u32,
    /// Always `uint8`.
    dtype: String,
}

/// A tensor model's named input or output, per batch item.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TensorDescription {
    name: String,
    /// The protocol's datatype name: `FP32`, `UINT8`, ...
    datatype: String,
    dims: Vec<u64>,
}

/// `GET /v1/models`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelList {
    models: Vec<ModelDescription>,
}

/// Every model and version with a connected host, each with how many
/// hosts serve it and how many of those are ready.
#[utoipa::path(get, path = "/v1/models", operation_id = "v1_models", tag = "v1", responses((status = 200, body = ModelList)))]
pub async fn list(State(app): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = app
        .fleet
        .models()
        .into_values()
        .map(|links| {
            let mut body = describe_model(links[0].model());
            body["hosts"] = json!(links.len());
            body["ready_hosts"] = json!(links.iter().filter(|l| l.phase().is_ready()).count());
            body
        })
        .collect();
    Json(json!({ "models": models }))
}

/// The model as requests without a version see it (its newest ready version).
#[utoipa::path(
    get, path = "/v1/models/{name}", operation_id = "v1_model", tag = "v1",
    params(("name" = String, Path, description = "The model's name, as `GET /v1/models` lists it.", example = "digits")),
    responses((status = 200, body = ModelDescription), LookupErrors),
)]
pub async fn describe(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let link = app.fleet.find(&name, None)?;
    let mut body = describe_model(link.model());
    body["ready"] = json!(link.phase().is_ready());
    Ok(Json(body))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HostQuery {
    /// The host's control socket path, as `GET /v1/hosts` lists it.
    host: Option<String>,
}

/// One host as `GET /v1/hosts` lists it: a connected one with its model,
/// phase, pid, device and slots in use; a down one with why.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HostEntry {
    /// The host's control socket: what `?host=` names.
    socket: String,
    /// `ready`, `loading`, `draining`, ...; for a down host, why it is down.
    phase: String,
    /// The phase in words, e.g. "loading weights 43% (1.1 of 2.5 GB)".
    status: Option<String>,
    model: Option<String>,
    version: Option<String>,
    host_pid: Option<u32>,
    device: Option<String>,
    /// Slots leased to this gateway now.
    outstanding: Option<u64>,
    /// A down host's last error, if any.
    error: Option<String>,
}

/// `GET /v1/hosts`'s answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HostList {
    hosts: Vec<HostEntry>,
}

/// Every host socket this gateway knows, its model and state.
#[utoipa::path(get, path = "/v1/hosts", operation_id = "v1_hosts", tag = "operations", responses((status = 200, body = HostList)))]
pub async fn hosts(State(app): State<AppState>) -> Json<Value> {
    let hosts: Vec<Value> = app
        .fleet
        .members()
        .iter()
        .map(|m| match m.live_link() {
            Some(link) => json!({
                "socket": m.socket, "model": link.model().name, "version": link.model().version,
                "phase": if m.retired { "draining" } else { link.phase().name() },
                "status": if m.retired { "draining".to_string() } else { link.phase().describe() },
                "host_pid": link.host_pid(), "device": link.model().device, "outstanding": link.outstanding(),
            }),
            None => json!({ "socket": m.socket, "phase": m.down_reason, "error": m.last_error }),
        })
        .collect();
    Json(json!({ "hosts": hosts }))
}

/// A host's own counters (model loads, connections, slots, requests): the
/// only host's, or the one named with `?host=` (a socket from /v1/hosts).
#[utoipa::path(get, path = "/v1/host/status", operation_id = "v1_host_status", tag = "operations", params(HostQuery), responses(
    (status = 200, body = HostStatus),
    (status = 400, description = "No such host, or several are known and `host` names none.", body = ErrorBody),
    (status = 503, description = "The host is down, or no host is known.", body = ErrorBody),
))]
pub async fn host_status(State(app): State<AppState>, Query(query): Query<HostQuery>) -> Result<Json<HostStatus>, ApiError> {
    let members = app.fleet.members();
    let chosen: Vec<_> = members.iter().filter(|m| query.host.as_ref().is_none_or(|h| m.socket.as_os_str() == h.as_str())).collect();
    let member = match chosen.as_slice() {
        [one] => one,
        [] if query.host.is_some() => return Err(invalid("host", "no such host socket; see GET /v1/hosts")),
        [] => return Err(ApiError::HostUnavailable { phase: "no model host found".into() }),
        _ => return Err(invalid("host", format!("{} hosts are known: name one with ?host=<socket> (see GET /v1/hosts)", chosen.len()))),
    };
    let link = member.live_link().ok_or_else(|| ApiError::HostUnavailable { phase: member.down_reason.clone() })?;
    Ok(Json(link.status().await?))
}
