//! Triton's `system_shared_memory` extension: register, list and unregister
//! the regions that inference inputs and outputs may name. The registry
//! itself is [`crate::system_shm`]; it exists only when the operator
//! started the gateway with `--system-shared-memory`, and without it every
//! route here answers 403 `shared_memory_disabled`.
//!
//! Shapes as Triton's HTTP endpoint (and its Python client) use them:
//! status is `[{"name", "key", "offset", "byte_size"}]`; register takes
//! `{"key", "offset", "byte_size"}` (no Content-Type needed); register and
//! unregister answer 200 with an empty body.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::system_shm::{RegionStatus, Registry};
use crate::upload::read_body;

/// The extension's name in `GET /v2`, listed only when it is on.
pub const EXTENSION: &str = "system_shared_memory";

/// A register body is three small fields; anything much larger is not one.
const MAX_REGISTER_BODY: usize = 64 * 1024;

/// `POST .../register`'s body.
#[derive(Debug, Deserialize)]
struct RegisterRequest {
    key: String,
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

pub fn registry(app: &AppState) -> Result<&Arc<Registry>, ApiError> {
    app.system_shm.as_ref().ok_or(ApiError::SharedMemoryDisabled)
}

/// `GET /v2/systemsharedmemory/status`: every region.
pub async fn status_all(State(app): State<AppState>) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(registry(&app)?.status(None)?))
}

/// `GET /v2/systemsharedmemory/region/{name}/status`: 400 if not registered (as Triton).
pub async fn status(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(registry(&app)?.status(Some(&name))?))
}

/// `POST /v2/systemsharedmemory/region/{name}/register`.
pub async fn register(
    State(app): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let registry = registry(&app)?;
    let limit = MAX_REGISTER_BODY.min(app.limits.max_body_bytes);
    let body = read_body(body, &headers, limit, app.limits.body_timeout).await?;
    let request: RegisterRequest = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidRequest {
        field: "register body",
        problem: format!("{e}; expected {{\"key\": string, \"offset\": u64, \"byte_size\": u64}}"),
    })?;
    let status = registry.register(&name, &request.key, request.offset, request.byte_size)?;
    tracing::info!(region = %status.name, key = %status.key, offset = status.offset, byte_size = status.byte_size, "shared memory region registered");
    Ok(StatusCode::OK)
}

/// `POST /v2/systemsharedmemory/unregister`: every region, or none if any
/// is in use (409).
pub async fn unregister_all(State(app): State<AppState>) -> Result<StatusCode, ApiError> {
    registry(&app)?.unregister_all()?;
    tracing::info!("all shared memory regions unregistered");
    Ok(StatusCode::OK)
}

/// `POST /v2/systemsharedmemory/region/{name}/unregister`: an unknown name
/// is no error (as Triton); a region in use is a 409.
pub async fn unregister(State(app): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    registry(&app)?.unregister(&name)?;
    tracing::info!(region = %name, "shared memory region unregistered");
    Ok(StatusCode::OK)
}
