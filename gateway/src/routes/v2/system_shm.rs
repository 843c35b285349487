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
use crate::openapi::ErrorBody;
use crate::system_shm::{RegionStatus, Registry};
use crate::upload::read_body;

/// The extension's name in `GET /v2`, listed only when it is on.
pub const EXTENSION: &str = "system_shared_memory";

/// A register body is three small fields; anything much larger is not one.
const MAX_REGISTER_BODY: usize = 64 * 1024;

/// `POST .../register`'s body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    /// The POSIX shared-memory object's name (`shm_open`), e.g. `/input0`.
    key: String,
    /// Where the region starts in the object (default 0).
    #[serde(default)]
    offset: u64,
    byte_size: u64,
}

pub fn registry(app: &AppState) -> Result<&Arc<Registry>, ApiError> {
    app.system_shm.as_ref().ok_or(ApiError::SharedMemoryDisabled)
}

/// 403 when the gateway runs without --system-shared-memory.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Disabled {
    /// The extension is off (start the gateway with --system-shared-memory).
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// `GET /v2/systemsharedmemory/status`: every region.
#[utoipa::path(get, path = "/v2/systemsharedmemory/status", operation_id = "v2_shm_status", tag = "v2", responses((status = 200, body = Vec<RegionStatus>), Disabled))]
pub async fn status_all(State(app): State<AppState>) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(registry(&app)?.status(None)?))
}

/// `GET /v2/systemsharedmemory/region/{name}/status`: 400 if not registered (as Triton).
#[utoipa::path(get, path = "/v2/systemsharedmemory/region/{name}/status", operation_id = "v2_shm_region_status", tag = "v2", params(("name" = String, Path, description = "The name the region is (to be) registered under.")), responses(
    (status = 200, body = Vec<RegionStatus>),
    (status = 400, description = "No region of this name is registered.", body = ErrorBody),
    Disabled,
))]
pub async fn status(State(app): State<AppState>, Path(name): Path<String>) -> Result<Json<Vec<RegionStatus>>, ApiError> {
    Ok(Json(registry(&app)?.status(Some(&name))?))
}

/// `POST /v2/systemsharedmemory/region/{name}/register` (the body needs no Content-Type).
#[utoipa::path(post, path = "/v2/systemsharedmemory/region/{name}/register", operation_id = "v2_shm_register", tag = "v2", params(("name" = String, Path, description = "The name the region is (to be) registered under.")), request_body = RegisterRequest, responses(
    (status = 200, description = "Registered; the body is empty."),
    (status = 400, description = "The body, the name, or the object and window are invalid, or the name is taken.", body = ErrorBody),
    (status = 408, description = "The body did not arrive in time.", body = ErrorBody),
    (status = 413, description = "The body is too large for a register request.", body = ErrorBody),
    Disabled,
))]
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
#[utoipa::path(post, path = "/v2/systemsharedmemory/unregister", operation_id = "v2_shm_unregister_all", tag = "v2", responses(
    (status = 200, description = "Every region unregistered; the body is empty."),
    (status = 409, description = "A region is in use by inferences; none was unregistered.", body = ErrorBody),
    Disabled,
))]
pub async fn unregister_all(State(app): State<AppState>) -> Result<StatusCode, ApiError> {
    registry(&app)?.unregister_all()?;
    tracing::info!("all shared memory regions unregistered");
    Ok(StatusCode::OK)
}

/// `POST /v2/systemsharedmemory/region/{name}/unregister`: an unknown name
/// is no error (as Triton); a region in use is a 409.
#[utoipa::path(post, path = "/v2/systemsharedmemory/region/{name}/unregister", operation_id = "v2_shm_unregister", tag = "v2", params(("name" = String, Path, description = "The name the region is (to be) registered under.")), responses(
    (status = 200, description = "Unregistered (or was not registered); the body is empty."),
    (status = 400, description = "The name is not a valid region name.", body = ErrorBody),
    (status = 409, description = "The region is in use by inferences.", body = ErrorBody),
    Disabled,
))]
pub async fn unregister(State(app): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    registry(&app)?.unregister(&name)?;
    tracing::info!(region = %name, "shared memory region unregistered");
    Ok(StatusCode::OK)
}
