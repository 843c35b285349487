//! The one place a client-visible error becomes a gRPC status, beside
//! [`ApiError::status`] for HTTP: the same message text as REST's
//! `"error"`, and a code per kind of mistake.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::system_shm::RegistryError;

impl ApiError {
    /// The gRPC code for this error (REST's status, translated).
    pub fn grpc_code(&self) -> Code {
        match self {
            ApiError::InvalidRequest { .. }
            | ApiError::InvalidParam { .. }
            | ApiError::CorruptImage { .. }
            | ApiError::CorruptEncoding(_)
            | ApiError::TooManyPixels { .. }
            | ApiError::UnsupportedMediaType(_)
            | ApiError::UnsupportedContentEncoding(_) => Code::InvalidArgument,
            ApiError::SharedMemoryDisabled => Code::PermissionDenied,
            // Resolves itself once the inferences that use the region end.
            ApiError::SharedMemory(RegistryError::InUse { .. }) => Code::FailedPrecondition,
            ApiError::SharedMemory(_) => Code::InvalidArgument,
            // As gRPC's own message size limit answers.
            ApiError::BodyTooLarge { .. } => Code::ResourceExhausted,
            ApiError::ModelNotFound(_) | ApiError::VersionNotFound { .. } => Code::NotFound,
            ApiError::BodyTimeout { .. } | ApiError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            ApiError::HostUnavailable { .. } => Code::Unavailable,
            ApiError::Overloaded { .. } => Code::ResourceExhausted,
            // The job API is REST only (docs/jobs.md); listed for completeness.
            ApiError::JobNotFound(_) => Code::NotFound,
            ApiError::TooManyJobs { .. } | ApiError::JobTooLarge { .. } => Code::ResourceExhausted,
            ApiError::NoResult { .. } => Code::FailedPrecondition,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = e.grpc_code();
        if let ApiError::Internal(detail) = &e {
            tracing::error!(%detail, "internal error");
        } else if matches!(code, Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded) {
            tracing::warn!(error = %e, "request failed");
        }
        let message = e.to_string();
        match e {
            // What REST says with Retry-After: google.rpc.RetryInfo, which
            // gRPC clients' retry policies read.
            ApiError::HostUnavailable { .. } | ApiError::Overloaded { .. } => {
                let delay = Duration::from_secs(RETRY_AFTER_SECS.parse().unwrap_or(1));
                Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(delay)))
            }
            _ => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_rests_and_unavailable_says_when_to_retry() {
        let e = crate::error::invalid("inputs", "PIXELS.datatype is FP32; expected UINT8");
        let rest = e.to_string();
        let status = Status::from(e);
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, rest.as_str()));
        let status = Status::from(ApiError::HostUnavailable { phase: "loading".into() });
        assert_eq!(status.code(), Code::Unavailable);
        let retry = status.get_error_details().retry_info().cloned().expect("retry info");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));
        assert_eq!(Status::from(ApiError::Overloaded { reason: "slots" }).code(), Code::ResourceExhausted);
        assert_eq!(Status::from(ApiError::Internal("secret".into())).message(), "internal error");
    }
}
