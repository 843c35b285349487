//! `GET /v2/models/{m}[/versions/{v}]/stats`: Triton's statistics extension,
//! kept by this gateway process (each gateway counts what it served; a
//! restart starts from zero).
//!
//! Stages, as Triton names them: `success`/`fail` are whole requests (wall
//! time at the gateway), `queue` and `compute_infer` come from the host's
//! per-element timings (an element's `compute_infer` is its whole batch's
//! forward pass, as Triton counts it per request), `compute_input` is
//! parsing and decoding, `compute_output` is writing the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ModelName, ModelPath, ModelVersion};
use crate::AppState;
use crate::error::ApiError;
use crate::openapi::LookupErrors;

/// The statistics extension's answer, as [`ModelStats::json`] builds it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StatsAnswer {
    model_stats: Vec<ModelStatistics>,
}

/// One model version's counters (this gateway process's).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ModelStatistics {
    name: String,
    version: String,
    /// Milliseconds since the epoch of the last success; 0 before any.
    last_inference: u64,
    /// Batch elements answered.
    inference_count: u64,
    /// Successful requests.
    execution_count: u64,
    inference_stats: InferenceStats,
}

/// Each stage's count and cumulative nanoseconds, as Triton names them.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct InferenceStats {
    success: StageStats,
    fail: StageStats,
    queue: StageStats,
    compute_input: StageStats,
    compute_infer: StageStats,
    compute_output: StageStats,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StageStats {
    count: u64,
    ns: u64,
}

/// A stage's count and cumulative time; relaxed atomics, as the numbers are
/// only read together loosely (Triton's are not a snapshot either).
#[derive(Debug, Default)]
pub struct Stage {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Stage {
    pub fn add(&self, count: u64, time: Duration) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        json!({ "count": self.count.load(Ordering::Relaxed), "ns": self.ns.load(Ordering::Relaxed) })
    }
}

/// Counters per model and version served through this gateway (bounded
/// by the hosts it has known).
#[derive(Debug, Default)]
pub struct StatsByModel(RwLock<HashMap<String, HashMap<String, Arc<ModelStats>>>>);

impl StatsByModel {
    /// The counters of `name` at `version`, made on first use. Every v2
    /// request asks: the usual case is a shared lock and borrowed keys.
    pub fn of(&self, name: &str, version: &str) -> Arc<ModelStats> {
        let known = self.0.read().expect("stats lock poisoned").get(name).and_then(|v| v.get(version)).cloned();
        known.unwrap_or_else(|| {
            let mut table = self.0.write().expect("stats lock poisoned");
            table.entry(name.to_string()).or_default().entry(version.to_string()).or_default().clone()
        })
    }
}

/// One model version's counters, shared by every handler of this process.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub success: Stage,
    pub fail: Stage,
    pub queue: Stage,
    pub compute_input: Stage,
    pub compute_infer: Stage,
    pub compute_output: Stage,
    /// Batch elements answered (Triton's inference_count).
    inferences: AtomicU64,
    /// Successful v2 requests: one execution each from the gateway's view,
    /// whatever batches the host put their elements in.
    executions: AtomicU64,
    /// Milliseconds since the epoch of the last success; 0 before any.
    last_inference_ms: AtomicU64,
}

impl ModelStats {
    /// A request whose `elements` were all answered, in `wall` time.
    pub fn succeeded(&self, elements: usize, wall: Duration) {
        self.success.add(1, wall);
        self.inferences.fetch_add(elements as u64, Ordering::Relaxed);
        self.executions.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms.store(now.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn json(&self, name: &str, version: &str) -> Value {
        json!({ "model_stats": [{
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms.load(Ordering::Relaxed),
            "inference_count": self.inferences.load(Ordering::Relaxed),
            "execution_count": self.executions.load(Ordering::Relaxed),
            "inference_stats": {
                "success": self.success.json(),
                "fail": self.fail.json(),
                "queue": self.queue.json(),
                "compute_input": self.compute_input.json(),
                "compute_infer": self.compute_infer.json(),
                "compute_output": self.compute_output.json(),
            },
        }]})
    }
}

/// A model's statistics (at the named version, or the one requests without
/// a version go to); 404 for a model or version no host serves.
#[utoipa::path(get, path = "/v2/models/{name}/stats", operation_id = "v2_model_stats", tag = "v2", params(ModelName), responses((status = 200, body = StatsAnswer), LookupErrors))]
pub async fn model(State(app): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    of_model(&app, &path.name, path.version.as_deref()).map(Json)
}

/// [`model`] at a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/stats", operation_id = "v2_model_version_stats", tag = "v2", params(ModelVersion), responses((status = 200, body = StatsAnswer), LookupErrors))]
pub async fn model_version(app: State<AppState>, path: Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    model(app, path).await
}

/// A model's statistics, as both transports answer them.
pub fn of_model(app: &AppState, name: &str, version: Option<&str>) -> Result<Value, ApiError> {
    let link = app.fleet.find(name, version)?;
    let model = link.model();
    Ok(app.v2_stats.of(&model.name, &model.version).json(&model.name, &model.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_in_tritons_shape() {
        let stats = ModelStats::default();
        stats.succeeded(3, Duration::from_micros(5));
        stats.succeeded(1, Duration::from_micros(1));
        stats.fail.add(1, Duration::from_nanos(7));
        stats.queue.add(4, Duration::from_micros(2));
        let json = stats.json("digits", "1");
        let model = &json["model_stats"][0];
        assert_eq!((&model["name"], &model["version"]), (&json!("digits"), &json!("1")));
        assert_eq!((&model["inference_count"], &model["execution_count"]), (&json!(4), &json!(2)));
        assert!(model["last_inference"].as_u64().unwrap() > 0);
        let stages = &model["inference_stats"];
        assert_eq!(stages["success"], json!({"count": 2, "ns": 6000}));
        assert_eq!(stages["fail"], json!({"count": 1, "ns": 7}));
        assert_eq!(stages["queue"], json!({"count": 4, "ns": 2000}));
        assert_eq!(stages["compute_output"], json!({"count": 0, "ns": 0}));
    }
}
