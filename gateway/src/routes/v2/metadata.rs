//! Model metadata (the protocol's form) and model configuration (Triton's
//! model-config JSON, the `model_configuration` extension).
//!
//! Both describe the same signature: for the classifier IMAGE or PIXELS in,
//! PROBABILITIES out; for a tensor model its config's inputs and outputs;
//! with the batch as the first dimension (`-1` in metadata; left out of the
//! config's `dims`, as Triton does when `max_batch_size` > 0).

use axum::Json;
use axum::extract::{Path, State};
use protocol::{ModelInfo, ModelKind, TensorSpec};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{INPUT_IMAGE, INPUT_PIXELS, ModelName, ModelPath, ModelVersion, OUTPUT_PROBABILITIES, PLATFORM};
use crate::AppState;
use crate::error::ApiError;
use crate::openapi::LookupErrors;

/// Model metadata, as [`describe`] builds it (the JSON gRPC converts too).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelMetadata {
    name: String,
    /// Every version with a connected host, oldest first.
    versions: Vec<String>,
    /// Always `pytorch_libtorch`.
    platform: String,
    inputs: Vec<MetadataTensor>,
    outputs: Vec<MetadataTensor>,
}

/// An input or output in the metadata: the batch dimension is -1.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MetadataTensor {
    name: String,
    /// `FP32`, `UINT8`, `BYTES`, ...
    datatype: String,
    shape: Vec<i64>,
    /// `{"optional": true}` for the classifier's alternative inputs.
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
}

/// Triton's model configuration (the `model_configuration` extension), as
/// [`triton_config`] builds it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ModelConfig {
    name: String,
    platform: String,
    max_batch_size: u32,
    input: Vec<ConfigTensor>,
    output: Vec<ConfigTensor>,
    /// `{"device": {"string_value": ...}}`
    #[schema(value_type = Object)]
    parameters: Value,
}

/// An input or output in Triton's configuration: dims without the batch.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConfigTensor {
    name: String,
    /// `TYPE_FP32`, `TYPE_UINT8`, `TYPE_STRING`, ...
    data_type: String,
    dims: Vec<i64>,
    /// `FORMAT_NHWC` for the classifier's pixels.
    format: Option<String>,
    #[schema(value_type = Option<Object>)]
    reshape: Option<Value>,
    optional: Option<bool>,
}

/// Metadata needs a connected host (it describes the host's model), not a
/// ready one: a client may look before warm-up ends. `versions` lists every
/// version of the model that has a connected host.
#[utoipa::path(get, path = "/v2/models/{name}", operation_id = "v2_model_metadata", tag = "v2", params(ModelName), responses((status = 200, body = ModelMetadata), LookupErrors))]
pub async fn model(State(app): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    describe(&app, &path.name, path.version.as_deref()).map(Json)
}

/// [`model`] at a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", operation_id = "v2_model_version_metadata", tag = "v2", params(ModelVersion), responses((status = 200, body = ModelMetadata), LookupErrors))]
pub async fn model_version(app: State<AppState>, path: Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    model(app, path).await
}

/// The metadata, as both transports answer it (gRPC converts this JSON).
pub fn describe(app: &AppState, name: &str, version: Option<&str>) -> Result<Value, ApiError> {
    let link = app.fleet.find(name, version)?;
    let m = link.model();
    let mut versions: Vec<String> = app.fleet.models().into_keys().filter(|(name, _)| *name == m.name).map(|(_, v)| v).collect();
    versions.sort_by(|a, b| crate::host_client::compare_versions(a, b));
    let (inputs, outputs) = match &m.kind {
        ModelKind::Tensors(signature) | ModelKind::Vision(protocol::VisionModel { signature, .. }) => {
            (signature.inputs.iter().map(metadata_tensor).collect(), signature.outputs.iter().map(metadata_tensor).collect())
        }
        ModelKind::Classifier { input, labels } => {
            let (h, w, c) = (i64::from(input.height), i64::from(input.width), i64::from(input.channels));
            (
                // Alternatives: each one optional (JSON allows the
                // parameter; gRPC's TensorMetadata has no field for it).
                vec![
                    json!({ "name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1], "parameters": { "optional": true } }),
                    json!({ "name": INPUT_PIXELS, "datatype": "UINT8", "shape": [-1, h, w, c], "parameters": { "optional": true } }),
                ],
                vec![json!({ "name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, labels.len()] })],
            )
        }
        // Described, not served: v2 has no job shape (docs/jobs.md).
        ModelKind::Iterative(i) => iterative_tensors(i),
    };
    Ok(json!({ "name": m.name, "versions": versions, "platform": PLATFORM, "inputs": inputs, "outputs": outputs }))
}

/// An iterative model's parameters as INT64 inputs and its image as the
/// output, for clients that list models; its requests go to the job API.
fn iterative_tensors(i: &protocol::IterativeModel) -> (Vec<Value>, Vec<Value>) {
    let o = i.output;
    (
        i.params.iter().map(|p| json!({ "name": p.name, "datatype": "INT64", "shape": [-1, 1] })).collect(),
        vec![json!({ "name": "image", "datatype": "UINT8", "shape": [-1, o.height, o.width, o.channels] })],
    )
}

/// A tensor model's input or output: the batch dimension is -1.
fn metadata_tensor(spec: &TensorSpec) -> Value {
    let shape: Vec<i64> = std::iter::once(-1).chain(spec.dims.iter().map(|&d| d as i64)).collect();
    json!({ "name": spec.name, "datatype": spec.datatype.name(), "shape": shape })
}

/// Triton's form: `TYPE_` + the datatype, dims without the batch dimension.
fn config_tensor(spec: &TensorSpec) -> Value {
    json!({ "name": spec.name, "data_type": format!("TYPE_{}", spec.datatype.name()), "dims": spec.dims })
}

/// Triton's model configuration of the model.
#[utoipa::path(get, path = "/v2/models/{name}/config", operation_id = "v2_model_config", tag = "v2", params(ModelName), responses((status = 200, body = ModelConfig), LookupErrors))]
pub async fn config(State(app): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    configuration(&app, &path.name, path.version.as_deref()).map(Json)
}

/// [`config`] at a version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/config", operation_id = "v2_model_version_config", tag = "v2", params(ModelVersion), responses((status = 200, body = ModelConfig), LookupErrors))]
pub async fn config_version(app: State<AppState>, path: Path<ModelPath>) -> Result<Json<Value>, ApiError> {
    config(app, path).await
}

/// Triton's model config, as both transports answer it.
pub fn configuration(app: &AppState, name: &str, version: Option<&str>) -> Result<Value, ApiError> {
    Ok(triton_config(app.fleet.find(name, version)?.model()))
}

/// IMAGE is one string per batch element: Triton spells that `dims: [1]`
/// reshaped to `[]`, which matches the metadata's shape `[-1]`. IMAGE and
/// PIXELS are alternatives: `optional`, as Triton marks inputs a request
/// may leave out, so that generic clients do not send both.
fn triton_config(m: &ModelInfo) -> Value {
    let (input, labels) = match &m.kind {
        ModelKind::Classifier { input, labels } => (input, labels),
        ModelKind::Tensors(signature) | ModelKind::Vision(protocol::VisionModel { signature, .. }) => return json!({
            "name": m.name,
            "platform": PLATFORM,
            "max_batch_size": m.max_batch_size,
            "input": signature.inputs.iter().map(config_tensor).collect::<Vec<_>>(),
            "output": signature.outputs.iter().map(config_tensor).collect::<Vec<_>>(),
            "parameters": { "device": { "string_value": m.device } },
        }),
        ModelKind::Iterative(i) => {
            let (inputs, outputs) = iterative_tensors(i);
            return json!({
                "name": m.name,
                "platform": PLATFORM,
                "max_batch_size": m.max_batch_size,
                "input": inputs.iter().map(|t| json!({ "name": t["name"], "data_type": "TYPE_INT64", "dims": [1] })).collect::<Vec<_>>(),
                "output": outputs.iter().map(|t| json!({ "name": t["name"], "data_type": "TYPE_UINT8", "dims": &t["shape"].as_array().map(|s| s[1..].to_vec()) })).collect::<Vec<_>>(),
                "parameters": { "device": { "string_value": m.device }, "jobs": { "string_value": format!("/v1/models/{}/jobs", m.name) } },
            });
        }
    };
    json!({
        "name": m.name,
        "platform": PLATFORM,
        "max_batch_size": m.max_batch_size,
        "input": [
            { "name": INPUT_IMAGE, "data_type": "TYPE_STRING", "dims": [1], "reshape": { "shape": [] }, "optional": true },
            { "name": INPUT_PIXELS, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [input.height, input.width, input.channels], "optional": true },
        ],
        "output": [
            { "name": OUTPUT_PROBABILITIES, "data_type": "TYPE_FP32", "dims": [labels.len()] },
        ],
        "parameters": { "device": { "string_value": m.device } },
    })
}
