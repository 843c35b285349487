//! What is served: model metadata and the host's counters.

use axum::Json;
use axum::extract::{Path, State};
use protocol::{HostStatus, ModelInfo, ModelKind};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

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

pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let link = app.host.link()?;
    Ok(Json(json!({ "models": [describe_model(link.model())] })))
}

pub async fn describe(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let link = app.host.link()?;
    if link.model().name != name {
        return Err(ApiError::ModelNotFound(name));
    }
    let mut body = describe_model(link.model());
    body["ready"] = json!(link.phase().is_ready());
    Ok(Json(body))
}

/// The host's own counters (model loads, connections, slots, requests).
pub async fn host_status(State(app): State<AppState>) -> Result<Json<HostStatus>, ApiError> {
    Ok(Json(app.host.status().await?))
}
