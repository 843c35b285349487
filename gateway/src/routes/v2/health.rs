//! Server metadata, liveness and readiness, in the protocol's form.
//!
//! Not-ready answers are the gateway's 503 `host_unavailable` (with
//! `Retry-After`), so a v2 client and a v1 client see the same reason.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{EXTENSIONS, ModelPath, system_shm};
use crate::AppState;
use crate::error::ApiError;
use crate::host_client::HostCallError;

/// The server's name, this gateway's version and the implemented
/// extensions (system shared memory only when the operator turned it on).
pub async fn server_metadata(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": extensions(&app) }))
}

/// What `GET /v2` and gRPC's ServerMetadata call the server.
pub const SERVER_NAME: &str = "split-serve";

/// The extensions this gateway offers, as both transports list them.
pub fn extensions(app: &AppState) -> Vec<&'static str> {
    let mut extensions = EXTENSIONS.to_vec();
    if app.system_shm.is_some() {
        extensions.push(system_shm::EXTENSION);
    }
    extensions
}

/// 200 as soon as the gateway listens, like `/health/live`.
pub async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// 200 while every model this gateway knows has a ready host; else 503
/// naming those that have none.
pub async fn ready(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    app.fleet.readiness().map_err(|phase| HostCallError::Unavailable { phase })?;
    Ok(Json(json!({ "ready": true })))
}

/// 200 when the named model (at the named version, or any) has a ready
/// host; 503 while its hosts load, warm or restart; 404 for a model no
/// host has served.
pub async fn model_ready(State(app): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    let link = app.fleet.route(&path.name, path.version.as_deref())?;
    let model = link.model();
    Ok(Json(json!({ "name": model.name, "version": model.version, "ready": true })))
}
