//! Liveness (the process answers) and readiness (every model this gateway
//! knows has a ready host).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::error::RETRY_AFTER_SECS;

/// 200 as soon as the gateway listens, host or no host.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "live" }))
}

/// 200 while every model known has a ready host (the models listed);
/// else 503 saying which have none, or why no model is known.
pub async fn ready(State(app): State<AppState>) -> Response {
    match app.fleet.readiness() {
        Ok(models) => Json(json!({ "status": "ready", "models": models })).into_response(),
        Err(why) => {
            let body = json!({ "status": "not_ready", "host_phase": why });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
    }
}
