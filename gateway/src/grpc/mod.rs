//! The Open Inference Protocol over gRPC: KServe v2's
//! `inference.GRPCInferenceService` as Triton's clients speak it, and
//! `grpc.health.v1.Health` for Kubernetes `grpc:` probes.
//!
//! - [`service`]: one method per RPC, each answering from the same
//!   functions as its REST route.
//! - [`infer`]: ModelInfer and ModelStreamInfer over the shared v2 path.
//! - [`convert`]: protobuf requests and answers <-> the shared v2 types.
//! - [`describe`]: metadata, config, statistics, index as messages.
//! - [`status`]: [`ApiError`] -> gRPC status, the one mapping.
//!
//! The server is hyper's HTTP/2 on our own accept loop (as [`crate::serve`]
//! for HTTP/1) rather than tonic's: its keep-alive pings and stream limit
//! are set here, and the client's `grpc-timeout` becomes the request's
//! budget (a `DEADLINE_EXCEEDED` naming it) instead of a bare cancel.

pub mod convert;
pub mod describe;
pub mod infer;
pub mod service;
pub mod status;

/// The messages and service generated from gateway/grpc-proto/proto
/// (Triton's names and field numbers); the client half is for tests and bench.
pub use gateway_grpc_proto as proto;

use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use axum::http;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::{Code, Status};
use tonic_health::ServingStatus;

use crate::AppState;
use crate::error::ApiError;
use ::service::telemetry;
use tracing::Instrument;
use proto::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The service's name, as health checks ask for it.
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// What the operator set for gRPC.
#[derive(Debug, Clone, Copy)]
pub struct GrpcLimits {
    /// Largest message either way (RESOURCE_EXHAUSTED above it).
    pub max_message_bytes: usize,
    /// A unary request's message not received within this is refused
    /// (DEADLINE_EXCEEDED): a client that opens a call and never sends.
    pub body_timeout: Duration,
    /// HTTP/2 pings on every connection this often; a peer that does not
    /// answer within `keepalive_timeout` is dropped.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Streams (calls) one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// After shutdown begins, how long open calls may take.
    pub grace: Duration,
}

/// The gRPC services, as one router.
fn router(app: AppState, limits: GrpcLimits, health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) -> axum::Router {
    let inference = GrpcInferenceServiceServer::new(service::Service { app })
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    tonic::service::Routes::new(inference)
        .add_service(health)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(limits, unary_message_in_time))
        .layer(axum::middleware::from_fn(track_grpc))
}

/// The methods counted by name; any other path is `other`, so that a
/// client cannot grow the label set.
const METHODS: &[&str] = &[
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelInfer", "ModelStreamInfer",
    "ModelStatistics", "RepositoryIndex", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "Check", "Watch",
];

/// Middleware: count and time every call by method and gRPC code. A
/// unary call's error travels in the headers (trailers-only); a success's
/// code, 0, in the trailers, which a stream's too: both count as headers say.
/// With traces exported, each call is a server span (RPC semantic
/// conventions), a child of the `traceparent` the client's metadata carries.
async fn track_grpc(request: Request, next: Next) -> Response {
    let last = request.uri().path().rsplit('/').next().unwrap_or_default();
    let method: &'static str = METHODS.iter().copied().find(|m| *m == last).unwrap_or("other");
    let span = telemetry::span(|| call_span(&request, method));
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let code = response.headers().get("grpc-status").and_then(|c| c.to_str().ok()).unwrap_or("0").to_string();
    if telemetry::enabled() {
        span.record("rpc.grpc.status_code", code.parse::<i64>().unwrap_or(2));
        // The codes the conventions count as a server's failure.
        if matches!(code.as_str(), "2" | "4" | "12" | "13" | "14" | "15") {
            span.record("otel.status_code", "error");
        }
    }
    metrics::counter!(crate::metrics::GRPC_REQUESTS, "method" => method, "code" => code).increment(1);
    metrics::histogram!(crate::metrics::GRPC_DURATION, "method" => method).record(started.elapsed().as_secs_f64());
    response
}

/// One call's server span. The service is named from the path (health
/// checks are their own service), the method from the bounded list.
fn call_span(request: &Request, method: &'static str) -> tracing::Span {
    let service = request.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
    let service = if service == "grpc.health.v1.Health" { service } else { SERVICE_NAME };
    let span = tracing::info_span!(
        "grpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    telemetry::context::adopt_client_parent(&span, header("traceparent"), header("tracestate"));
    span
}

/// A unary call's message must arrive whole within the body timeout and
/// fit the limit, checked before tonic decodes it; the stream RPC's body is
/// its stream, left alone.
async fn unary_message_in_time(State(limits): State<GrpcLimits>, request: Request, next: Next) -> Response {
    if request.uri().path().ends_with("/ModelStreamInfer") {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // 5 bytes of gRPC framing (compression flag, length) per message.
    let limit = limits.max_message_bytes + 5;
    let error = match tokio::time::timeout(limits.body_timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => return client_mistake(next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Status::from(ApiError::BodyTooLarge { size: format!("more than {}", limits.max_message_bytes), limit: limits.max_message_bytes })
        }
        Ok(Err(_)) => Status::cancelled("the request stream broke off before its message was whole"),
        Err(_) => Status::from(ApiError::BodyTimeout { ms: limits.body_timeout.as_millis() as u64 }),
    };
    error.into_http()
}

/// tonic answers a message that is not protobuf with INTERNAL, gRPC's
/// 500; it is the client's mistake (house rule: never a 5xx for one), so
/// INVALID_ARGUMENT, with tonic's message, which names what is wrong.
fn client_mistake(mut response: Response) -> Response {
    let undecodable = response.headers().get("grpc-status").is_some_and(|c| c == "13")
        && response.headers().get("grpc-message").is_some_and(|m| m.as_bytes().starts_with(b"failed%20to%20decode") || m.as_bytes().starts_with(b"failed to decode"));
    if undecodable {
        response.headers_mut().insert("grpc-status", http::HeaderValue::from(Code::InvalidArgument as i32));
    }
    response
}

/// Health follows the fleet: SERVING while every model has a ready host
/// (the same test as ServerReady and `/v2/health/ready`), for the server
/// ("") and the inference service by name.
async fn follow_readiness(app: AppState, reporter: tonic_health::server::HealthReporter) {
    let mut last = None;
    loop {
        let status = if app.fleet.readiness().is_ok() { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Serves gRPC on `listener` until `shutdown` resolves, then stops
/// accepting, sends GOAWAY on every connection, and lets open calls finish
/// for at most `limits.grace`.
pub async fn serve(listener: TcpListener, app: AppState, limits: GrpcLimits, shutdown: impl Future<Output = ()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let readiness = tokio::spawn(follow_readiness(app.clone(), reporter));
    let router = router(app, limits, health);
    let mut http = http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.keepalive_interval))
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams);
    let graceful = GracefulShutdown::new();
    crate::serve::accept_until(&listener, "gRPC", shutdown, |stream| {
        let service = TowerToHyperService::new(router.clone());
        crate::serve::spawn_connection("gRPC", graceful.watch(http.serve_connection(TokioIo::new(stream), service)));
    })
    .await;
    drop(listener);
    readiness.abort();
    tracing::info!("gRPC: stopped accepting; GOAWAY sent to open connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("gRPC calls finished"),
        () = tokio::time::sleep(limits.grace) => tracing::warn!(grace_secs = limits.grace.as_secs(), "gRPC grace period over; calls still open"),
    }
}
