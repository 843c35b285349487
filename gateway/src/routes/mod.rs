//! The HTTP surface: one file per group of routes.
//!
//! | route | file |
//! |---|---|
//! | `GET /health/live`, `GET /health/ready` | [`health`] |
//! | `GET /v1/models`, `GET /v1/models/{name}`, `GET /v1/hosts`, `GET /v1/host/status` | [`models`] |
//! | `POST /v1/models/{name}/predict` | [`predict`]; a detection or segmentation model's in [`vision`] |
//! | `POST /v1/models/{name}/jobs`, `/v1/jobs/{id}[/result,/cancel]` | [`jobs`] (iterative models); `/v1/jobs/{id}/events` in [`job_events`] |
//! | `GET /metrics` | [`crate::metrics`] |
//! | `GET /openapi.json`, `GET /docs` | [`crate::openapi`] |
//! | `/v2/...`: the Open Inference Protocol (KServe v2 REST) | [`v2`] |
//! | one image through the host, for predict and v2 infer | [`host_call`] |
//!
//! Bodies may come gzip- or deflate-compressed, and answers go out
//! compressed when asked ([`crate::compression`]).
//!
//! Every request gets an X-Request-Id (the client's, or a new one), echoed
//! in the response and on the log line of a request that fails
//! ([`crate::failure_log`]); and is counted and timed.

pub mod health;
pub mod host_call;
pub mod job_events;
pub mod jobs;
pub mod json_answer;
pub mod models;
pub mod predict;
pub mod v2;
pub mod vision;

use axum::Router;
use tower::ServiceBuilder;
use tower_http::decompression::DecompressionBody;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{AppState, compression, metrics, openapi, request_id};
use crate::error::ApiError;

pub fn router(state: AppState) -> Router {
    openapi::serve(documented())
        .fallback(|| async { ApiError::InvalidRequest { field: "path", problem: "no such route".into() }.not_found() })
        // One `layer` call for the whole stack: axum boxes each route once
        // per call and clones every box on every request, so six calls cost
        // a raw-pixels request about 50 allocations more than one.
        .layer(
            ServiceBuilder::new()
                // Outer to inner: the request's id; its metrics and failure
                // log line; compress answers, refuse unknown encodings, then
                // decompress bodies.
                .layer(request_id::layers())
                .layer(axum::middleware::from_fn(metrics::track_http))
                .layer(compression::response_compression())
                .layer(axum::middleware::from_fn(compression::check_content_encoding))
                .layer(compression::request_decompression())
                // The routes take axum's body; decompression hands on its own.
                .map_request(|request: axum::http::Request<DecompressionBody<axum::body::Body>>| request.map(axum::body::Body::new)),
        )
        .with_state(state)
}

/// Every route, each registered with its OpenAPI description (`routes!`
/// reads the handler's `#[utoipa::path]`): a route cannot be added here
/// without one.
pub fn documented() -> OpenApiRouter<AppState> {
    openapi::router()
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(models::list))
        .routes(routes!(models::describe))
        .routes(routes!(predict::predict))
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::status))
        .routes(routes!(jobs::result))
        .routes(routes!(jobs::cancel))
        .routes(routes!(job_events::events))
        .routes(routes!(models::hosts))
        .routes(routes!(models::host_status))
        .routes(routes!(metrics::render))
        .merge(v2::routes())
}

/// The whole router, for router tests: over a host socket in `dir` that
/// nobody listens on (so every model route answers as with no host).
#[cfg(test)]
pub(crate) fn test_app(dir: &tempfile::TempDir) -> Router {
    use clap::Parser;
    let socket = dir.path().join("host.sock");
    let socket = socket.to_str().expect("a UTF-8 temp path");
    let config = crate::Config::try_parse_from(["gateway", "--host-socket", socket]).expect("valid flags");
    router(AppState::new(&config).expect("a gateway state"))
}
