//! The HTTP surface: one file per group of routes.
//!
//! | route | file |
//! |---|---|
//! | `GET /health/live`, `GET /health/ready` | [`health`] |
//! | `GET /v1/models`, `GET /v1/models/{name}`, `GET /v1/hosts`, `GET /v1/host/status` | [`models`] |
//! | `POST /v1/models/{name}/predict` | [`predict`]; a detection or segmentation model's in [`vision`] |
//! | `GET /metrics` | [`crate::metrics`] |
//! | `/v2/...`: the Open Inference Protocol (KServe v2 REST) | [`v2`] |
//! | one image through the host, for predict and v2 infer | [`host_call`] |
//!
//! Bodies may come gzip- or deflate-compressed, and answers go out
//! compressed when asked ([`crate::compression`]).
//!
//! Every request gets an X-Request-Id (the client's, or a new one), echoed
//! in the response and on every log line about it; and is counted and timed.

pub mod health;
pub mod host_call;
pub mod models;
pub mod predict;
pub mod v2;
pub mod vision;

use axum::Router;
use axum::routing::{get, post};

use crate::{AppState, compression, metrics, request_id};
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{name}", get(models::describe))
        .route("/v1/models/{name}/predict", post(predict::predict))
        .route("/v1/hosts", get(models::hosts))
        .route("/v1/host/status", get(models::host_status))
        .route("/metrics", get(metrics::render))
        .merge(v2::routes())
        .fallback(|| async { ApiError::InvalidRequest { field: "path", problem: "no such route".into() }.not_found() })
        // Inner to outer: decompress bodies, refuse unknown encodings first,
        // compress answers.
        .layer(compression::request_decompression())
        .layer(axum::middleware::from_fn(compression::check_content_encoding))
        .layer(compression::response_compression())
        .layer(axum::middleware::from_fn(metrics::track_http))
        .layer(request_id::layers())
        .with_state(state)
}
