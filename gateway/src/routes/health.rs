//! Liveness (the process answers) and readiness (every model this gateway
//! knows has a ready host).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::RETRY_AFTER_SECS;

/// `GET /health/live`'s answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthLive {
    /// Always `live`.
    #[schema(value_type = String, example = "live")]
    status: &'static str,
}

/// `GET /health/ready`'s answer while every known model has a ready host.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReady {
    /// Always `ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    /// The models known, each with a ready host.
    models: Vec<String>,
}

/// `GET /health/ready`'s answer otherwise (with `Retry-After`).
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthNotReady {
    /// Always `not_ready`.
    #[schema(value_type = String, example = "not_ready")]
    status: &'static str,
    /// Which models have no ready host, or why no model is known.
    host_phase: String,
}

/// 200 as soon as the gateway listens, host or no host.
#[utoipa::path(get, path = "/health/live", operation_id = "health_live", tag = "health", responses((status = 200, body = HealthLive)))]
pub async fn live() -> Json<HealthLive> {
    Json(HealthLive { status: "live" })
}

/// 200 while every model known has a ready host (the models listed);
/// else 503 saying which have none, or why no model is known.
#[utoipa::path(get, path = "/health/ready", operation_id = "health_ready", tag = "health", responses(
    (status = 200, description = "Every model known has a ready host.", body = HealthReady),
    (status = 503, description = "Some model has no ready host, or none is known; `Retry-After` says when to ask again.", body = HealthNotReady),
))]
pub async fn ready(State(app): State<AppState>) -> Response {
    match app.fleet.readiness() {
        Ok(models) => Json(HealthReady { status: "ready", models }).into_response(),
        Err(why) => {
            let body = HealthNotReady { status: "not_ready", host_phase: why };
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
    }
}
