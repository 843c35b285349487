//! Every error a client can get, and the one place that maps them to HTTP.
//!
//! Bodies are `{"error": "<message>", "type": "<stable machine-readable type>"}`
//! ([`ErrorBody`], as `/openapi.json` describes it).
//! 4xx messages name the field or limit at fault; 5xx messages never carry
//! internals (those go to the log).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use crate::decode::DecodeError;
use crate::failure_log::Failure;
use crate::host_client::{HostCallError, JobCallError};
use crate::system_shm::RegistryError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("invalid {field}: {problem}")]
    InvalidRequest { field: &'static str, problem: String },
    #[error("the body is not a valid {format} image: {detail}")]
    CorruptImage { format: &'static str, detail: String },
    #[error("body of {size} bytes is over the {limit}-byte limit")]
    BodyTooLarge { size: String, limit: usize },
    #[error("image of {width}x{height} pixels is over the {limit}-pixel limit")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("unsupported content type {0:?}: send image/png, image/jpeg or image/webp (raw body or multipart/form-data)")]
    UnsupportedMediaType(String),
    #[error("unsupported Content-Encoding {0:?}: send gzip, deflate or identity")]
    UnsupportedContentEncoding(String),
    #[error("the request body could not be decompressed (Content-Encoding): {0}")]
    CorruptEncoding(String),
    #[error("the system shared memory extension is disabled; start the gateway with --system-shared-memory")]
    SharedMemoryDisabled,
    #[error("{0}")]
    SharedMemory(RegistryError),
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("model {0:?} is not served here")]
    ModelNotFound(String),
    #[error("model {model:?} has no version {version:?} here (served: {served})")]
    VersionNotFound { model: String, version: String, served: String },
    #[error("the model host is not available ({phase}); retry shortly")]
    HostUnavailable { phase: String },
    #[error("the model host is at capacity ({reason}); retry shortly")]
    Overloaded { reason: &'static str },
    #[error("no answer within the {budget_ms} ms deadline")]
    DeadlineExceeded { budget_ms: u64 },
    /// A job parameter out of its range (the host names it, so the field is owned).
    #[error("invalid {field}: {problem}")]
    InvalidParam { field: String, problem: String },
    #[error("job {0:?} is not known here (never submitted, or expired)")]
    JobNotFound(String),
    #[error("the model already has {limit} jobs queued (the host's --job-max-queued); retry later")]
    TooManyJobs { limit: u32 },
    #[error("{field}: {problem}")]
    JobTooLarge { field: String, problem: String },
    #[error("job {id:?} has no result: it is {state}")]
    NoResult { id: String, state: &'static str },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::InvalidParam { .. } | ApiError::CorruptImage { .. } | ApiError::CorruptEncoding(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::JobNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooManyJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::JobTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // The job exists; its state does not allow the request (yet).
            ApiError::NoResult { .. } => StatusCode::CONFLICT,
            // Refused by the operator's configuration, not by what the request says.
            ApiError::SharedMemoryDisabled => StatusCode::FORBIDDEN,
            // A region in use is a conflict with the server's state that
            // resolves itself (retry after the inferences finish); every other
            // registry error is the request's fault, 400 as in Triton.
            ApiError::SharedMemory(RegistryError::InUse { .. }) => StatusCode::CONFLICT,
            ApiError::SharedMemory(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyPixels { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) | ApiError::UnsupportedContentEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::ModelNotFound(_) | ApiError::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::HostUnavailable { .. } | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable identifiers clients may match on.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::InvalidParam { .. } => "invalid_request",
            ApiError::JobNotFound(_) => "job_not_found",
            ApiError::TooManyJobs { .. } => "too_many_jobs",
            ApiError::JobTooLarge { .. } => "job_too_large",
            ApiError::NoResult { .. } => "no_result",
            ApiError::CorruptImage { .. } => "invalid_image",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::TooManyPixels { .. } => "image_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            ApiError::CorruptEncoding(_) => "invalid_content_encoding",
            ApiError::SharedMemoryDisabled => "shared_memory_disabled",
            ApiError::SharedMemory(RegistryError::InUse { .. }) => "shared_memory_in_use",
            ApiError::SharedMemory(_) => "invalid_shared_memory",
            ApiError::ModelNotFound(_) | ApiError::VersionNotFound { .. } => "model_not_found",
            ApiError::BodyTimeout { .. } => "request_timeout",
            ApiError::HostUnavailable { .. } => "host_unavailable",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::DeadlineExceeded { .. } => "deadline_exceeded",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// Every error's body: a message for people and a stable `type` for programs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": "invalid top_k: must be at least 1", "type": "invalid_request"}))]
pub struct ErrorBody {
    /// What went wrong; 4xx messages name the field or limit at fault.
    pub error: String,
    /// One of: invalid_request, invalid_image, body_too_large,
    /// image_too_large, unsupported_media_type, unsupported_content_encoding,
    /// invalid_content_encoding, shared_memory_disabled,
    /// shared_memory_in_use, invalid_shared_memory, model_not_found,
    /// request_timeout, host_unavailable, overloaded, deadline_exceeded,
    /// job_not_found, too_many_jobs, job_too_large, no_result, internal.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: &'static str,
}

/// A 400 naming the request's `field` at fault and what is wrong with it.
pub fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { field, problem: problem.into() }
}

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: &str = "1";

impl From<HostCallError> for ApiError {
    fn from(e: HostCallError) -> Self {
        match e {
            HostCallError::Unavailable { phase } => ApiError::HostUnavailable { phase },
            HostCallError::UnknownModel(name) => ApiError::ModelNotFound(name),
            HostCallError::UnknownVersion { model, version, served } => ApiError::VersionNotFound { model, version, served },
            HostCallError::Overloaded(reason) => ApiError::Overloaded { reason },
            // The gateway fills in the budget; see routes::predict.
            HostCallError::DeadlineExceeded => ApiError::DeadlineExceeded { budget_ms: 0 },
            HostCallError::Rejected(m) | HostCallError::Model(m) => ApiError::Internal(m),
            HostCallError::BadImage(detail) => ApiError::from(DecodeError::Corrupt { format: "JPEG", detail }),
        }
    }
}

impl From<JobCallError> for ApiError {
    fn from(e: JobCallError) -> Self {
        use protocol::JobError;
        match e {
            JobCallError::Host(e) => ApiError::from(e),
            JobCallError::Job(JobError::NotFound(id)) => ApiError::JobNotFound(id),
            JobCallError::Job(JobError::QueueFull { limit }) => ApiError::TooManyJobs { limit },
            JobCallError::Job(JobError::Invalid { field, problem, too_large: true }) => ApiError::JobTooLarge { field, problem },
            JobCallError::Job(JobError::Invalid { field, problem, too_large: false }) => ApiError::InvalidParam { field, problem },
            JobCallError::Job(JobError::NoResult(state)) => ApiError::NoResult { id: String::new(), state: state.name() },
            JobCallError::Job(JobError::NotIterative) => invalid("model", "not an iterative model: send its requests to predict"),
            JobCallError::Job(JobError::NotReady) => ApiError::HostUnavailable { phase: "not ready".into() },
            JobCallError::Job(JobError::Internal(m)) => ApiError::Internal(m),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError::SharedMemory(e)
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Corrupt { format, detail } => ApiError::CorruptImage { format, detail },
            DecodeError::TooManyPixels { width, height, limit } => ApiError::TooManyPixels { width, height, limit },
        }
    }
}

impl ApiError {
    /// The same JSON body with 404, for unknown routes.
    pub fn not_found(self) -> Response {
        let mut r = self.into_response();
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody { error: self.to_string(), kind: self.kind() };
        let failure = match &self {
            ApiError::Internal(detail) => Some(Failure { error: detail.clone(), internal: true }),
            _ if status.is_server_error() => Some(Failure { error: body.error.clone(), internal: false }),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        // Logged, with the request's id, method and route, by failure_log.
        if let Some(failure) = failure {
            response.extensions_mut().insert(failure);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        // The refused body may not have been read to its end (past what
        // upload::discard_rest drains, e.g. a gzip bomb's decompressed
        // bytes), and then hyper closes the connection after this answer:
        // say so, so that the client does not send its next request on it.
        if matches!(self, ApiError::BodyTooLarge { .. }) {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_after_and_internal_hides_details() {
        let r = ApiError::HostUnavailable { phase: "loading".into() }.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let e = ApiError::Internal("segment /x: EIO".into());
        assert_eq!(e.to_string(), "internal error");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn shared_memory_errors_are_400_except_in_use() {
        let e = ApiError::from(RegistryError::InUse { region: "input0".into(), users: 2 });
        assert_eq!((e.status(), e.kind()), (StatusCode::CONFLICT, "shared_memory_in_use"));
        assert!(e.to_string().contains("\"input0\"") && e.to_string().contains("2 inference"), "{e}");
        let e = ApiError::from(RegistryError::Duplicate("input0".into()));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(ApiError::SharedMemoryDisabled.to_string().contains("--system-shared-memory"));
    }

    /// The `type`s that `/openapi.json` lists are every one `kind` gives.
    #[test]
    fn every_type_is_documented() {
        let source = include_str!("error.rs");
        let kind = &source[source.find("pub fn kind(&self)").unwrap()..];
        let kind = &kind[..kind.find("\n    }\n").unwrap()];
        let given: Vec<&str> = kind.split("=> \"").skip(1).filter_map(|s| s.split('"').next()).collect();
        assert!(given.len() >= 16, "{given:?}");
        let schema = serde_json::to_value(<ErrorBody as utoipa::PartialSchema>::schema()).unwrap();
        let documented = schema["properties"]["type"]["description"].as_str().unwrap();
        for kind in given {
            assert!(documented.contains(kind), "{kind} is missing from ErrorBody's doc comment");
        }
    }

    #[test]
    fn client_errors_name_the_limit() {
        let e = ApiError::TooManyPixels { width: 50000, height: 50000, limit: 40_000_000 };
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.to_string().contains("40000000"));
    }
}
