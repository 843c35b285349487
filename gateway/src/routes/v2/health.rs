//! Server metadata, liveness and readiness, in the protocol's form.
//!
//! Not-ready answers are the gateway's 503 `host_unavailable` (with
//! `Retry-After`), so a v2 client and a v1 client see the same reason.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{EXTENSIONS, ModelPath, system_shm};
use crate::AppState;
use crate::error::ApiError;
use crate::host_client::HostCallError;
use crate::openapi::{ErrorBody, LookupErrors};

/// `GET /v2`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    #[schema(value_type = String, example = "split-serve")]
    name: &'static str,
    /// This gateway's version.
    #[schema(value_type = String)]
    version: &'static str,
    /// The protocol extensions this gateway implements.
    #[schema(value_type = Vec<String>)]
    extensions: Vec<&'static str>,
}

/// `GET /v2/health/live`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2Live {
    live: bool,
}

/// `GET /v2/health/ready`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2Ready {
    ready: bool,
}

/// A model's readiness: the version requests go to.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReady {
    name: String,
    version: String,
    ready: bool,
}

/// The server's name, this gateway's version and the implemented
/// extensions (system shared memory only when the operator turned it on).
#[utoipa::path(get, path = "/v2", operation_id = "v2_server_metadata", tag = "v2", responses((status = 200, body = ServerMetadata)))]
pub async fn server_metadata(State(app): State<AppState>) -> Json<ServerMetadata> {
    Json(ServerMetadata { name: SERVER_NAME, version: env!("CARGO_PKG_VERSION"), extensions: extensions(&app) })
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
#[utoipa::path(get, path = "/v2/health/live", operation_id = "v2_live", tag = "v2", responses((status = 200, body = V2Live)))]
pub async fn live() -> Json<V2Live> {
    Json(V2Live { live: true })
}

/// 200 while every model this gateway knows has a ready host; else 503
/// naming those that have none.
#[utoipa::path(get, path = "/v2/health/ready", operation_id = "v2_ready", tag = "v2", responses(
    (status = 200, body = V2Ready),
    (status = 503, description = "Some model has no ready host; `Retry-After` says when to ask again.", body = ErrorBody),
))]
pub async fn ready(State(app): State<AppState>) -> Result<Json<V2Ready>, ApiError> {
    app.fleet.readiness().map_err(|phase| HostCallError::Unavailable { phase })?;
    Ok(Json(V2Ready { ready: true }))
}

/// 200 when the named model (at the named version, or any) has a ready
/// host; 503 while its hosts load, warm or restart; 404 for a model no
/// host has served.
#[utoipa::path(get, path = "/v2/models/{name}/ready", operation_id = "v2_model_ready", tag = "v2", params(super::ModelName), responses((status = 200, body = ModelReady), LookupErrors))]
pub async fn model_ready(State(app): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<ModelReady>, ApiError> {
    let link = app.fleet.route(&path.name, path.version.as_deref())?;
    let model = link.model();
    Ok(Json(ModelReady { name: model.name.clone(), version: model.version.clone(), ready: true }))
}

/// [`model_ready`] at a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", operation_id = "v2_model_version_ready", tag = "v2", params(super::ModelVersion), responses((status = 200, body = ModelReady), LookupErrors))]
pub async fn model_version_ready(app: State<AppState>, path: Path<ModelPath>) -> Result<Json<ModelReady>, ApiError> {
    model_ready(app, path).await
}
