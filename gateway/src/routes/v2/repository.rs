//! `POST /v2/repository/index`: Triton's model repository extension, read
//! only. One entry per host this gateway knows: name, version, state
//! (`READY`, `LOADING`, `UNAVAILABLE`) and the reason it is not ready.
//!
//! The load and unload calls are not offered, on purpose: hosts are
//! started and stopped by systemd or Kubernetes, which own their
//! lifecycle (restart on failure, resources, ordering); a gateway that
//! could start one would be a second, weaker supervisor.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;

/// One entry of the repository index, as [`entries`] builds it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RepositoryEntry {
    name: String,
    version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    state: String,
    /// Why it is not ready; empty when it is.
    reason: String,
}

/// Every host's model, version and state. The body (Triton's `{"ready": bool}`) is not read.
#[utoipa::path(post, path = "/v2/repository/index", operation_id = "v2_repository_index", tag = "v2", responses((status = 200, body = Vec<RepositoryEntry>)))]
pub async fn index(State(app): State<AppState>) -> Json<Value> {
    Json(json!(entries(&app)))
}

/// The index, as both transports answer it.
pub fn entries(app: &AppState) -> Vec<Value> {
    let mut entries = Vec::new();
    for member in app.fleet.members() {
        let entry = match (member.live_link(), &member.last_model) {
            (Some(link), _) => {
                let (model, phase) = (link.model(), link.phase());
                let state = match phase.name() {
                    "ready" if !member.retired => "READY",
                    "starting" | "loading" | "warming" => "LOADING",
                    _ => "UNAVAILABLE",
                };
                let reason = if state == "READY" { String::new() } else if member.retired { "draining".into() } else { phase.name().to_string() };
                json!({ "name": model.name, "version": model.version, "state": state, "reason": reason })
            }
            (None, Some((name, version))) => json!({ "name": name, "version": version, "state": "UNAVAILABLE", "reason": member.down_reason }),
            // Never reached: nothing is known of its model.
            (None, None) => continue,
        };
        entries.push(entry);
    }
    entries
}
