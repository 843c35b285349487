//! Liveness (the process answers) and readiness (a ready host is connected).

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

/// 200 while connected to a ready host; else 503 with the host's phase.
pub async fn ready(State(app): State<AppState>) -> Response {
    match app.host.ready_link() {
        Ok(link) => {
            let m = link.model();
            Json(json!({
                "status": "ready",
                "model": m.name,
                "version": m.version,
                "device": m.device,
                "host_pid": link.host_pid(),
            }))
            .into_response()
        }
        Err(_) => {
            let body = json!({ "status": "not_ready", "host_phase": app.host.phase_name() });
            let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
    }
}
