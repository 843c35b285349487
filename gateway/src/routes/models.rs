//! What is served: model metadata and the hosts' counters.

use axum::Json;
use axum::extract::{Path, Query, State};
use protocol::{HostStatus, ModelInfo, ModelKind};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, invalid};

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
        ModelKind::Classifier { input, labels } => {
            body["kind"] = json!("image_classifier");
            body["input"] = json!({ "width": input.width, "height": input.height, "channels": input.channels, "dtype": "uint8" });
            body["labels"] = json!(labels);
        }
    }
    body
}

/// Every model and version with a connected host, each with how many
/// hosts serve it and how many of those are ready.
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
pub async fn describe(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let link = app.fleet.find(&name, None)?;
    let mut body = describe_model(link.model());
    body["ready"] = json!(link.phase().is_ready());
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
pub struct HostQuery {
    /// The host's control socket path, as `GET /v1/hosts` lists it.
    host: Option<String>,
}

/// Every host socket this gateway knows, its model and state.
pub async fn hosts(State(app): State<AppState>) -> Json<Value> {
    let hosts: Vec<Value> = app
        .fleet
        .members()
        .iter()
        .map(|m| match m.live_link() {
            Some(link) => json!({
                "socket": m.socket, "model": link.model().name, "version": link.model().version,
                "phase": if m.retired { "draining" } else { link.phase().name() },
                "host_pid": link.host_pid(), "device": link.model().device, "outstanding": link.outstanding(),
            }),
            None => json!({ "socket": m.socket, "phase": m.down_reason, "error": m.last_error }),
        })
        .collect();
    Json(json!({ "hosts": hosts }))
}

/// A host's own counters (model loads, connections, slots, requests): the
/// only host's, or the one named with `?host=` (a socket from /v1/hosts).
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
