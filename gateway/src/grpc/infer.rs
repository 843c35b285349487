//! ModelInfer and ModelStreamInfer: protobuf in, the shared v2 path
//! ([`crate::routes::v2::infer::execute`]), protobuf out.
//!
//! A call the client drops (cancelled, past its deadline, connection gone)
//! drops its future here, and with it its host calls, which the host then
//! skips, as for REST.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Status, Streaming};

use super::convert;
use super::proto::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use crate::AppState;
use crate::routes::v2::infer::{Stage, counted, execute, stats_of};
use crate::routes::v2::request::ValidRequest;
use crate::routes::v2::shm_io::SharedMemory;

/// Requests of one stream in the gateway at once; the stream's next
/// requests wait in HTTP/2 flow control meanwhile. Answers leave in
/// request order whatever order they finish in.
pub const STREAM_IN_FLIGHT: usize = 128;

/// One inference. `timeout`: the client's `grpc-timeout`, which shortens
/// the gateway's budget as the request's `timeout` parameter does.
pub async fn one(app: AppState, request: ModelInferRequest, timeout: Option<Duration>) -> Result<ModelInferResponse, Status> {
    let started = Instant::now();
    let link = app.fleet.route(&request.model_name, (!request.model_version.is_empty()).then_some(request.model_version.as_str())).map_err(crate::error::ApiError::from)?;
    let stats = stats_of(&app, &link);
    let tag = tag(&request.id);
    let answer = async {
        let input_started = Instant::now();
        let (request, binary) = convert::request(request)?;
        let shm = SharedMemory(app.system_shm.as_deref());
        let mut valid = ValidRequest::check(request, binary, shm, app.limits.max_body_bytes as u64)?;
        valid.timeout = match (valid.timeout, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let stage = Stage { app: &app, link: &link, stats: &stats, started, input_started, tag: &tag };
        execute(stage, valid, convert::response).await
    }
    .await;
    counted(&stats, started, answer).map_err(Status::from)
}

/// The bidirectional stream: each request runs as it arrives (up to
/// [`STREAM_IN_FLIGHT`] at once), each answer carries its request's id, and
/// an error is an answer with `error_message` (the stream goes on), as in
/// Triton. A broken message ends the stream with its status.
pub fn stream(app: AppState, requests: Streaming<ModelInferRequest>) -> Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>> {
    let answers = requests
        .map(move |request| {
            let app = app.clone();
            async move {
                let request = request?;
                let (id, model_name, model_version) = (request.id.clone(), request.model_name.clone(), request.model_version.clone());
                Ok(match one(app, request, None).await {
                    Ok(response) => ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) },
                    Err(status) => ModelStreamInferResponse {
                        error_message: status.message().to_string(),
                        infer_response: Some(ModelInferResponse { id, model_name, model_version, ..Default::default() }),
                    },
                })
            }
        })
        .buffered(STREAM_IN_FLIGHT);
    Box::pin(answers)
}

/// The id a request is logged and tagged with at the host: the client's
/// (bounded), else one made up here, as REST does with X-Request-Id.
fn tag(id: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if id.is_empty() {
        format!("{}-g{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    } else {
        protocol::request_tag(id)
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC HTTP/2 spec writes it; anything else is ignored, as gRPC servers do.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_timeout(value)
}

fn parse_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        assert_eq!(parse_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }
}
