//! The Open Inference Protocol (KServe v2 REST) for the model the host serves.
//!
//! | route | file |
//! |---|---|
//! | `GET /v2`, `GET /v2/health/{live,ready}`, `GET /v2/models/{m}[/versions/{v}]/ready` | [`health`] |
//! | `GET /v2/models/{m}[/versions/{v}]`, `.../config` | [`metadata`] |
//! | `POST /v2/models/{m}[/versions/{v}]/infer` | [`infer`] (parse, validate), [`run`] (host calls) |
//! | datatypes, shapes, JSON data | [`tensor`] |
//! | binary tensor data in request bodies | [`binary`] |
//! | the answer, JSON or with binary output data | [`answer`] |
//! | `GET /v2/models/{m}[/versions/{v}]/stats` | [`stats`] |
//! | `POST /v2/repository/index` (read-only) | [`repository`] |
//! | `/v2/systemsharedmemory/...` (status, register, unregister) | [`system_shm`] |
//!
//! The classifier is described as two alternative inputs, [`INPUT_IMAGE`]
//! (encoded images, BYTES) and [`INPUT_PIXELS`] (the model's uint8 input),
//! and one output, [`OUTPUT_PROBABILITIES`]. Errors are the gateway's
//! [`ApiError`], whose body `{"error": ...}` is what the protocol asks for
//! (plus the stable `type` every gateway error carries).

pub mod answer;
pub mod binary;
pub mod classification;
pub mod classifier;
pub mod health;
pub mod images;
pub mod infer;
pub mod metadata;
pub mod repository;
pub mod request;
pub mod run;
pub mod shm_io;
pub mod stats;
pub mod system_shm;
pub mod tensor;
pub mod tensor_model;

use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// One encoded PNG, JPEG or WebP per batch element.
pub const INPUT_IMAGE: &str = "IMAGE";
/// The model's input as it is: uint8, [n, height, width, channels].
pub const INPUT_PIXELS: &str = "PIXELS";
/// Every class's score, in label order: FP32 [n, labels].
pub const OUTPUT_PROBABILITIES: &str = "PROBABILITIES";
/// What the model is to the protocol: a TorchScript module run by libtorch.
pub const PLATFORM: &str = "pytorch_libtorch";
/// The protocol extensions implemented here, and only those: clients use
/// this list to decide what to send.
/// (`binary_tensor_data` both ways: inputs in request bodies, outputs when
/// the request asks with `binary_data_output` or `binary_data`.)
pub const EXTENSIONS: &[&str] = &["model_configuration", "classification", "binary_tensor_data", "statistics"];

/// Every v2 route with its description. The protocol puts each model route
/// twice, with and without `/versions/{version}`: one handler each, as the
/// document describes each path once (the `_version` one calls the other).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::server_metadata))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(metadata::model))
        .routes(routes!(metadata::model_version))
        .routes(routes!(health::model_ready))
        .routes(routes!(health::model_version_ready))
        .routes(routes!(metadata::config))
        .routes(routes!(metadata::config_version))
        .routes(routes!(stats::model))
        .routes(routes!(stats::model_version))
        .routes(routes!(infer::infer))
        .routes(routes!(infer::infer_version))
        .routes(routes!(repository::index))
        .routes(routes!(system_shm::status_all))
        .routes(routes!(system_shm::status))
        .routes(routes!(system_shm::register))
        .routes(routes!(system_shm::unregister_all))
        .routes(routes!(system_shm::unregister))
}

/// The model named by a v2 path; the version is optional in every route.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// `{name}` in a v2 route's path, for the document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ModelName {
    /// The model's name, as `GET /v1/models` lists it.
    #[param(example = "digits")]
    name: String,
}

/// `{name}` and `{version}` in a v2 route's path, for the document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ModelVersion {
    /// The model's name, as `GET /v1/models` lists it.
    #[param(example = "digits")]
    name: String,
    /// One of the model's versions, as `GET /v2/models/{name}` lists them.
    #[param(example = "1")]
    version: String,
}

/// A 2x2 grayscale model with these labels, for the unit tests of this module.
#[cfg(test)]
pub(crate) fn test_model(labels: &[&str]) -> protocol::ModelInfo {
    protocol::ModelInfo {
        name: "digits".into(),
        version: "1".into(),
        description: String::new(),
        kind: protocol::ModelKind::Classifier {
            input: protocol::ImageShape { width: 2, height: 2, channels: 1 },
            labels: labels.iter().map(|l| l.to_string()).collect(),
        },
        max_batch_size: 4,
        device: "cpu".into(),
        host_decode: None,
    }
}
