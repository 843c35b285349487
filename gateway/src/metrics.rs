//! Prometheus metrics, all named `splitserve_*`: the gateway's own
//! (`splitserve_gateway_*`, recorded as requests pass) and each host's
//! (`splitserve_host_*`, fetched over the control channel at each scrape,
//! labelled `model`, `version` and `host`: the control socket's path, so
//! the label set is bounded by the sockets this gateway has known).
//! An iterative model's host adds its jobs and steps ([`export_jobs`]); a
//! host on a GPU adds Triton's `nv_gpu_*` gauges ([`export_memory`]).
//! Exposition by metrics-exporter-prometheus; durations in seconds.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use protocol::HostStatus;
use service::telemetry;

use crate::{AppState, failure_log};

pub const HTTP_REQUESTS: &str = "splitserve_gateway_http_requests_total";
pub const HTTP_DURATION: &str = "splitserve_gateway_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "splitserve_gateway_http_requests_in_flight";
pub const BODY_BYTES: &str = "splitserve_gateway_http_request_body_bytes";
pub const STAGE_SECONDS: &str = "splitserve_gateway_stage_seconds";
/// gRPC calls by method and status code (the code a unary call ends with,
/// or a stream's at its start), and their durations.
pub const GRPC_REQUESTS: &str = "splitserve_gateway_grpc_requests_total";
pub const GRPC_DURATION: &str = "splitserve_gateway_grpc_request_duration_seconds";
/// Finished spans never exported, by reason (`queue_full`, `export_failed`);
/// present only while traces are exported.
pub const SPANS_DROPPED: &str = "splitserve_gateway_spans_dropped_total";

/// Latency buckets from 100 us to 30 s.
const SECONDS_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Body size buckets from 1 KiB to 64 MiB.
const BYTES_BUCKETS: &[f64] = &[1024.0, 8192.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0];

/// The process-wide recorder (installed once; tests build many routers).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
                .expect("bucket lists are non-empty constants")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, which this crate never does.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Middleware: count, time and track every request by route and status,
/// and log it if it failed (`failure_log`: one middleware, which has the
/// route already, rather than a second one that looks it up again).
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    if telemetry::enabled() {
        // The request's span (request_id.rs) was made before routing.
        let span = tracing::Span::current();
        span.record("http.route", route.as_str());
        telemetry::context::rename(&span, format!("{} {route}", request.method()));
    }
    let asked = failure_log::Asked::of(&request);
    let started = Instant::now();
    let in_flight = InFlightGauge::enter();
    let response = next.run(request).await;
    drop(in_flight);
    asked.log_if_failed(&response, &route);
    let status = response.status().as_u16().to_string();
    counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status).increment(1);
    histogram!(HTTP_DURATION, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// One request counted in [`HTTP_IN_FLIGHT`] for as long as this lives: the
/// decrement is in `Drop`, so a handler future dropped mid-flight (the
/// client closed its connection, the grace period ran out) still leaves.
struct InFlightGauge;

impl InFlightGauge {
    fn enter() -> Self {
        gauge!(HTTP_IN_FLIGHT).increment(1.0);
        InFlightGauge
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    }
}

/// A predict request's stages: decode, queue, inference, total.
pub fn record_stages(decode: Duration, queue: Duration, inference: Duration, total: Duration) {
    for (stage, d) in [("decode", decode), ("queue", queue), ("inference", inference), ("total", total)] {
        histogram!(STAGE_SECONDS, "stage" => stage).record(d.as_secs_f64());
    }
}

pub fn record_body(bytes: usize) {
    histogram!(BODY_BYTES).record(bytes as f64);
}

/// `GET /metrics`: refresh every host's figures (asked all at once), then
/// render everything. A host that is away keeps its last counters, with
/// `splitserve_host_up` 0.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format (0.0.4): the gateway's `splitserve_` metrics and every host's.", body = String, content_type = "text/plain"),
))]
pub async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let members = app.fleet.members();
    let scrapes = members.iter().map(|m| async move {
        let host = m.socket.display().to_string();
        let Some(link) = m.live_link() else {
            if let Some((model, version)) = &m.last_model {
                let labels = [("model", model.clone()), ("version", version.clone()), ("host", host)];
                gauge!("splitserve_host_up", &labels).set(0.0);
                gauge!("splitserve_host_ready", &labels).set(0.0);
            }
            return;
        };
        let labels = [("model", link.model().name.clone()), ("version", link.model().version.clone()), ("host", host)];
        let up = match link.status().await {
            Ok(status) => {
                export_host(&status, &labels);
                1.0
            }
            Err(_) => 0.0,
        };
        gauge!("splitserve_host_up", &labels).set(up);
        gauge!("splitserve_host_ready", &labels).set(if link.phase().is_ready() && !m.retired { 1.0 } else { 0.0 });
        gauge!("splitserve_gateway_host_outstanding", &labels).set(link.outstanding() as f64);
    });
    futures::future::join_all(scrapes).await;
    if telemetry::enabled() {
        for (reason, spans) in telemetry::DROPPED.by_reason() {
            counter!(SPANS_DROPPED, "reason" => reason).absolute(spans);
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], app.metrics.render())
}

/// A host's counters, as of this scrape. Counters are set absolutely:
/// the host owns them, and they restart from 0 with a new host process.
fn export_host(s: &HostStatus, host: &[(&'static str, String); 3]) {
    let with = |extra: (&'static str, String)| {
        let mut labels = host.to_vec();
        labels.push(extra);
        labels
    };
    gauge!("splitserve_host_pid", host).set(f64::from(s.pid));
    gauge!("splitserve_host_connections", host).set(f64::from(s.connections));
    gauge!("splitserve_host_leased_slots", host).set(f64::from(s.leased_slots));
    gauge!("splitserve_host_queue_depth", host).set(s.queue_depth as f64);
    counter!("splitserve_host_model_loads_total", host).absolute(u64::from(s.model_loads));
    counter!("splitserve_host_requests_total", host).absolute(s.requests_done);
    counter!("splitserve_host_batches_total", host).absolute(s.batches_done);
    gauge!("splitserve_host_copy_seconds_total", host).set(s.copy_seconds_total);
    gauge!("splitserve_host_inference_seconds_total", host).set(s.inference_seconds_total);
    for (shape, n) in &s.batches_by_size {
        counter!("splitserve_host_batches_by_size_total", &with(("batch_size", shape.to_string()))).absolute(*n);
    }
    for (reason, n) in &s.refused {
        counter!("splitserve_host_refused_total", &with(("reason", reason.clone()))).absolute(*n);
    }
    if let Some(jobs) = &s.jobs {
        export_jobs(jobs, host);
    }
    export_memory(&s.memory, host);
    for (reason, n) in &s.spans_dropped {
        counter!("splitserve_host_spans_dropped_total", &with(("reason", reason.clone()))).absolute(*n);
    }
    if let protocol::Phase::Ready(t) = s.phase {
        for (milestone, ms) in
            [("device_ready", t.device_ready_ms), ("weights_loaded", t.weights_loaded_ms), ("warmup_done", t.warmup_done_ms)]
        {
            gauge!("splitserve_host_startup_seconds", &with(("milestone", milestone.to_string()))).set(ms / 1e3);
        }
    }
}

/// A host's memory, and its GPU's figures under Triton's names (so that
/// Triton's dashboards read them), labelled with the host's labels and
/// the GPU's NVML index and UUID. A host without a GPU (or NVML) has no
/// `nv_gpu_*` series.
fn export_memory(m: &protocol::HostMemory, host: &[(&'static str, String); 3]) {
    gauge!("splitserve_host_resident_memory_bytes", host).set(m.resident_bytes as f64);
    gauge!("splitserve_host_model_device_bytes", host).set(m.model_bytes as f64);
    let Some(gpu) = &m.gpu else { return };
    let mut labels = host.to_vec();
    labels.push(("gpu", gpu.index.to_string()));
    labels.push(("gpu_uuid", gpu.uuid.clone()));
    gauge!("nv_gpu_memory_used_bytes", &labels).set(gpu.memory_used_bytes as f64);
    gauge!("nv_gpu_memory_total_bytes", &labels).set(gpu.memory_total_bytes as f64);
    gauge!("nv_gpu_utilization", &labels).set(gpu.utilization);
    gauge!("nv_gpu_power_usage", &labels).set(gpu.power_watts);
}

/// An iterative model's jobs (in the host's table, by state) and steps:
/// `rate(splitserve_host_job_steps_total)` is steps per second, and its
/// ratio to `rate(splitserve_host_job_step_batches_total)` the mean number
/// of jobs whose steps ran together.
fn export_jobs(j: &protocol::jobs::JobCounts, host: &[(&'static str, String); 3]) {
    for (state, n) in [("queued", j.queued), ("running", j.running), ("succeeded", j.succeeded), ("failed", j.failed), ("canceled", j.canceled)] {
        let mut labels = host.to_vec();
        labels.push(("state", state.to_string()));
        gauge!("splitserve_host_jobs", &labels).set(n as f64);
    }
    counter!("splitserve_host_job_steps_total", host).absolute(j.steps_total);
    counter!("splitserve_host_job_step_batches_total", host).absolute(j.step_batches_total);
    gauge!("splitserve_host_job_step_seconds_total", host).set(j.step_seconds_total);
    for (size, n) in &j.step_batches_by_size {
        let mut labels = host.to_vec();
        labels.push(("batch_size", size.to_string()));
        counter!("splitserve_host_job_step_batches_by_size_total", &labels).absolute(*n);
    }
}
