//! `POST /v2/models/{m}[/versions/{v}]/infer`: parse the protocol's JSON,
//! validate it against the model into an [`InferPlan`], run it, answer.
//!
//! PIXELS (UINT8 [n, height, width, channels]) comes as JSON data (flat or
//! nested) or as binary data ([`super::binary`]). IMAGE (encoded images,
//! BYTES [n]) needs raw bytes, which JSON strings cannot carry faithfully,
//! so it comes only as binary data; its images are decoded and resized
//! here as `/v1/.../predict` does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::response::Response;
use bytes::Bytes;
use protocol::ModelInfo;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::binary::{BinaryData, BinaryError, bytes_elements, split_body};
use super::tensor::{Datatype, TensorError, check_count, flatten_uint8};
use super::answer::{OutputKind, respond};
use super::{INPUT_IMAGE, INPUT_PIXELS, ModelPath, OUTPUT_PROBABILITIES, run};
use crate::decode::{Target, decode_to_input};
use crate::error::ApiError;
use crate::host_client::Link;
use crate::upload::read_body;
use crate::{AppState, request_id};

/// The request body, as the protocol defines it; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct InferRequest {
    /// Echoed in the response, so a client can match answers to requests.
    id: Option<String>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: every output as binary data unless it says
    /// otherwise; `timeout`: the client's deadline in microseconds.
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    datatype: String,
    /// Signed so that a `-1` gets a message about dimensions, not about JSON.
    shape: Vec<i64>,
    data: Option<Value>,
    /// `binary_data_size`: the tensor's bytes are in the binary part of the body.
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A request that fits the model, one entry per batch element.
#[derive(Debug)]
struct InferPlan {
    id: Option<String>,
    batch: Batch,
    output: OutputKind,
    /// Send the output's data raw after the JSON header (binary tensor data).
    binary: bool,
    /// The client's own deadline (`parameters.timeout`), if it gave one.
    timeout: Option<Duration>,
}

#[derive(Debug, PartialEq)]
enum Batch {
    /// The model's input already, written to the slots as it is.
    Pixels(Vec<Vec<u8>>),
    /// Encoded images, still to decode and resize.
    Images(Vec<Bytes>),
}

/// Where an input's elements are.
enum Source {
    Json(Value),
    Binary(Bytes),
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { field, problem: problem.into() }
}

#[tracing::instrument(skip_all, fields(model = %path.name))]
pub async fn infer(State(app): State<AppState>, Path(path): Path<ModelPath>, request: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Admission before work: no body is read for a host that cannot serve.
    let link = app.host.ready_link()?;
    path.check(link.model())?;
    // Counted from here: the request named the served model, so its
    // failures (400s included, as Triton counts them) are this model's.
    let answer = answer(&app, &link, started, request).await;
    match &answer {
        Ok((_, elements)) => app.v2_stats.succeeded(*elements, started.elapsed()),
        Err(_) => app.v2_stats.fail.add(1, started.elapsed()),
    }
    answer.map(|(response, _)| response)
}

/// The answer and how many elements it carries; stage times go to the statistics.
async fn answer(app: &AppState, link: &Arc<Link>, started: Instant, request: Request) -> Result<(Response, usize), ApiError> {
    let (model, stats) = (link.model(), &app.v2_stats);
    let tag = request_id::of(&request);
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, app.limits.max_body_bytes, app.limits.body_timeout).await?;
    let input_started = Instant::now();
    let (json, binary) = split_body(&parts.headers, body).map_err(binary_error)?;
    let request: InferRequest = serde_json::from_slice(&json).map_err(|e| invalid("body", format!("not an inference request: {e}")))?;
    let InferPlan { id, batch, output, binary, timeout } = validate(request, model, binary)?;
    let elements = match batch {
        Batch::Pixels(pixels) => pixels,
        Batch::Images(images) => {
            let target = Target { width: model.width, height: model.height, channels: model.channels };
            decode_all(images, target, app.limits.max_pixels).await?
        }
    };
    let input_time = input_started.elapsed();

    // The client may shorten the gateway's budget, never lengthen it.
    let budget = timeout.map_or(app.limits.request_timeout, |t| t.min(app.limits.request_timeout));
    let budget_ms = budget.as_millis() as u64;
    // Already late (decoding took the budget, or it was 0): no slot, no host call.
    if started.elapsed() >= budget {
        return Err(ApiError::DeadlineExceeded { budget_ms });
    }
    let host = run::run_batch(link, &elements, started + budget, budget_ms, &tag).await?;
    let output_started = Instant::now();
    let response = respond(id, output, binary, model, &host.scores);
    let n = elements.len() as u64;
    stats.compute_input.add(1, input_time);
    stats.queue.add(n, host.queue);
    stats.compute_infer.add(n, host.inference);
    stats.compute_output.add(1, output_started.elapsed());
    Ok((response, elements.len()))
}

fn binary_error(e: BinaryError) -> ApiError {
    invalid("body", e.to_string())
}

/// Decodes on the blocking pool, like `/v1/.../predict`; a corrupt image is
/// a 400 and an oversized one a 413, as there.
async fn decode_all(images: Vec<Bytes>, target: Target, max_pixels: u64) -> Result<Vec<Vec<u8>>, ApiError> {
    let decoded = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| match image::guess_format(bytes) {
                Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP)) => {
                    decode_to_input(bytes, f, target, max_pixels).map_err(ApiError::from)
                }
                _ => Err(invalid("inputs", format!("{INPUT_IMAGE} element {i} is not a PNG, JPEG or WebP image"))),
            })
            .collect::<Result<Vec<_>, _>>()
    });
    decoded.await.map_err(|e| ApiError::Internal(format!("decode task: {e}")))?
}

fn validate(request: InferRequest, model: &ModelInfo, mut binary: BinaryData) -> Result<InferPlan, ApiError> {
    let output = validate_outputs(&request.outputs, model)?;
    let binary_output = wants_binary(&request)?;
    let timeout = client_timeout(&request.parameters)?;
    let [input] = <[InputTensor; 1]>::try_from(request.inputs).map_err(|inputs| {
        invalid("inputs", format!("expected exactly one input ({INPUT_PIXELS} or {INPUT_IMAGE}), got {}", inputs.len()))
    })?;
    let batch = match input.name.as_str() {
        INPUT_PIXELS => Batch::Pixels(pixels(input, model, &mut binary)?),
        INPUT_IMAGE => Batch::Images(images(input, model, &mut binary)?),
        other => return Err(invalid("inputs", format!("unknown input {other:?}; expected {INPUT_PIXELS} or {INPUT_IMAGE}"))),
    };
    binary.finish().map_err(binary_error)?;
    Ok(InferPlan { id: request.id, batch, output, binary: binary_output, timeout })
}

/// `parameters.timeout`, in microseconds as Triton's clients send it.
fn client_timeout(parameters: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    match parameters.get("timeout") {
        None => Ok(None),
        Some(t) => match t.as_u64() {
            Some(us) => Ok(Some(Duration::from_micros(us))),
            None => Err(invalid("parameters", format!("parameters.timeout is {t}; expected microseconds, an integer >= 0"))),
        },
    }
}

/// Binary output data: the output's own `parameters.binary_data` when it
/// has one, else the request's `parameters.binary_data_output` (as Triton
/// reads them); JSON when neither is given.
fn wants_binary(request: &InferRequest) -> Result<bool, ApiError> {
    let flag = |parameters: &Map<String, Value>, field: &'static str, key: &str| match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(field, format!("parameters.{key} is {other}; expected true or false"))),
    };
    let default = flag(&request.parameters, "parameters", "binary_data_output")?.unwrap_or(false);
    match request.outputs.first() {
        Some(output) => Ok(flag(&output.parameters, "outputs", "binary_data")?.unwrap_or(default)),
        None => Ok(default),
    }
}

/// JSON `data` or `parameters.binary_data_size` bytes; exactly one of them.
fn source(input: &mut InputTensor, binary: &mut BinaryData) -> Result<Source, ApiError> {
    let name = input.name.as_str();
    match (input.data.take(), input.parameters.get("binary_data_size")) {
        (Some(_), Some(_)) => Err(invalid("inputs", format!("{name} has both data and parameters.binary_data_size; expected one"))),
        (Some(data), None) => Ok(Source::Json(data)),
        (None, Some(size)) => {
            let size = size.as_u64().ok_or_else(|| {
                invalid("inputs", format!("{name}.parameters.binary_data_size is {size}; expected a byte count"))
            })?;
            Ok(Source::Binary(binary.take(name, size).map_err(binary_error)?))
        }
        (None, None) => Err(invalid("inputs", format!("{name}.data is missing (or parameters.binary_data_size, for binary data)"))),
    }
}

/// The batch size from a shape of [n, rest...], when `rest` is what the model
/// takes and 1 <= n <= max_batch_size.
fn batch_size(shape: &[i64], rest: &[&[i64]], model: &ModelInfo) -> Option<usize> {
    let (&n, tail) = shape.split_first()?;
    (rest.contains(&tail) && n >= 1 && n <= i64::from(model.max_batch_size)).then_some(n as usize)
}

/// IMAGE: BYTES [n] (or [n, 1]), one encoded image per element, binary only.
fn images(mut input: InputTensor, model: &ModelInfo, binary: &mut BinaryData) -> Result<Vec<Bytes>, ApiError> {
    let datatype = Datatype::parse(&input.datatype).map_err(|e| invalid("inputs", format!("{INPUT_IMAGE}: {e}")))?;
    if datatype != Datatype::Bytes {
        return Err(invalid("inputs", format!("{INPUT_IMAGE}.datatype is {}; expected BYTES", datatype.name())));
    }
    let Some(n) = batch_size(&input.shape, &[&[], &[1]], model) else {
        let max = model.max_batch_size;
        return Err(invalid("inputs", format!("{INPUT_IMAGE}.shape is {:?}; expected [n] with n from 1 to {max}", input.shape)));
    };
    let raw = match source(&mut input, binary)? {
        Source::Binary(raw) => raw,
        Source::Json(_) => {
            return Err(invalid(
                "inputs",
                format!(
                    "{INPUT_IMAGE} takes encoded images as raw bytes, which JSON data cannot carry; send them as binary data \
                     (Inference-Header-Content-Length, parameters.binary_data_size) or send {INPUT_PIXELS} (UINT8)"
                ),
            ));
        }
    };
    let elements = bytes_elements(raw).map_err(|e| invalid("inputs", format!("{INPUT_IMAGE}: {e}")))?;
    if elements.len() != n {
        return Err(invalid("inputs", format!("{INPUT_IMAGE} has {} elements; shape {:?} needs {n}", elements.len(), input.shape)));
    }
    Ok(elements)
}

/// PIXELS: UINT8 [n, height, width, channels], 1 <= n <= max_batch_size.
fn pixels(mut input: InputTensor, model: &ModelInfo, binary: &mut BinaryData) -> Result<Vec<Vec<u8>>, ApiError> {
    let tensor_error = |e: TensorError| invalid("inputs", format!("{INPUT_PIXELS}: {e}"));
    let datatype = Datatype::parse(&input.datatype).map_err(tensor_error)?;
    if datatype != Datatype::Uint8 {
        return Err(invalid("inputs", format!("{INPUT_PIXELS}.datatype is {}; expected UINT8", datatype.name())));
    }
    let (h, w, c) = (i64::from(model.height), i64::from(model.width), i64::from(model.channels));
    let Some(batch) = batch_size(&input.shape, &[&[h, w, c]], model) else {
        return Err(invalid(
            "inputs",
            format!("{INPUT_PIXELS}.shape is {:?}; expected [n, {h}, {w}, {c}] with n from 1 to {}", input.shape, model.max_batch_size),
        ));
    };
    let flat = match source(&mut input, binary)? {
        Source::Json(data) => flatten_uint8(&data).map_err(|e| invalid("inputs", format!("{INPUT_PIXELS}.data: {e}")))?,
        Source::Binary(raw) => raw.to_vec(),
    };
    check_count(flat.len(), &input.shape).map_err(|e| invalid("inputs", format!("{INPUT_PIXELS}.data {e}")))?;
    let per_element = flat.len() / batch;
    Ok(flat.chunks_exact(per_element).map(<[u8]>::to_vec).collect())
}

/// At most one requested output, PROBABILITIES, optionally as classification.
fn validate_outputs(outputs: &[RequestedOutput], model: &ModelInfo) -> Result<OutputKind, ApiError> {
    let requested = match outputs {
        [] => return Ok(OutputKind::Probabilities),
        [one] => one,
        more => return Err(invalid("outputs", format!("expected at most one output ({OUTPUT_PROBABILITIES}), got {}", more.len()))),
    };
    if requested.name != OUTPUT_PROBABILITIES {
        return Err(invalid("outputs", format!("unknown output {:?}; expected {OUTPUT_PROBABILITIES}", requested.name)));
    }
    match requested.parameters.get("classification") {
        None => Ok(OutputKind::Probabilities),
        Some(k) => match k.as_u64() {
            // More than there are classes is every class, as Triton does.
            Some(k) if k >= 1 => Ok(OutputKind::Classification((k as usize).min(model.labels.len()))),
            _ => Err(invalid(
                "outputs",
                format!("{OUTPUT_PROBABILITIES}.parameters.classification is {k}; expected an integer from 1 to {}", model.labels.len()),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digits() -> ModelInfo {
        super::super::test_model(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    }

    fn parse(body: Value) -> Result<InferPlan, ApiError> {
        parse_with(body, b"")
    }

    /// With binary data after a JSON header.
    fn parse_with(body: Value, data: &'static [u8]) -> Result<InferPlan, ApiError> {
        let json = body.to_string();
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(super::super::binary::HEADER_LENGTH, json.len().into());
        let (_, binary) = split_body(&headers, Bytes::from([json.as_bytes(), data].concat())).unwrap();
        validate(serde_json::from_value(body).expect("a well-formed request"), &digits(), binary)
    }

    fn problem(body: Value) -> String {
        match parse(body) {
            Err(ApiError::InvalidRequest { problem, .. }) => problem,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn pixels_are_split_per_element_from_nested_data() {
        let plan = parse(json!({"id": "a", "inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [2, 2, 2, 1],
            "data": [[[[1], [2]], [[3], [4]]], [[[5], [6]], [[7], [8]]]]}]}))
        .unwrap();
        assert_eq!(plan.batch, Batch::Pixels(vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]));
        assert_eq!(plan.output, OutputKind::Probabilities);
        assert_eq!(plan.id.as_deref(), Some("a"));
    }

    #[test]
    fn mistakes_name_the_field_and_the_expected_value() {
        let pixels = |datatype: &str, shape: Value, data: Value| {
            json!({"inputs": [{"name": "PIXELS", "datatype": datatype, "shape": shape, "data": data}]})
        };
        assert!(problem(pixels("FP32", json!([1, 2, 2, 1]), json!([0, 0, 0, 0]))).contains("PIXELS.datatype is FP32; expected UINT8"));
        assert!(problem(pixels("uint8", json!([1, 2, 2, 1]), json!([0, 0, 0, 0]))).contains("unknown datatype \"uint8\""));
        assert!(problem(pixels("UINT8", json!([1, 3, 2, 1]), json!(vec![0; 6]))).contains("expected [n, 2, 2, 1] with n from 1 to 4"));
        assert!(problem(pixels("UINT8", json!([5, 2, 2, 1]), json!(vec![0; 20]))).contains("n from 1 to 4"));
        assert!(problem(pixels("UINT8", json!([0, 2, 2, 1]), json!([]))).contains("n from 1 to 4"));
        assert!(problem(pixels("UINT8", json!([1, 2, 2, 1]), json!([0, 0, 0]))).contains("has 3 elements; shape [1, 2, 2, 1] needs 4"));
        assert!(problem(pixels("UINT8", json!([1, 2, 2, 1]), json!([0, 0, 0, 300]))).contains("element 3 is 300"));
        assert!(problem(json!({"inputs": [{"name": "X", "datatype": "UINT8", "shape": [1], "data": [0]}]})).contains("unknown input \"X\""));
        assert!(problem(json!({"inputs": []})).contains("exactly one input"));
        assert!(problem(json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["x"]}]})).contains("IMAGE"));
        let ok_input = json!([{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]);
        assert!(problem(json!({"inputs": ok_input, "outputs": [{"name": "LOGITS"}]})).contains("unknown output \"LOGITS\""));
        let zero = json!({"inputs": ok_input, "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 0}}]});
        assert!(problem(zero).contains("expected an integer from 1 to 10"));
    }

    #[test]
    fn classification_is_capped_at_the_number_of_classes() {
        let input = json!([{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]);
        let plan = parse(json!({"inputs": input, "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 50}}]})).unwrap();
        assert_eq!(plan.output, OutputKind::Classification(10));
    }

    #[test]
    fn binary_data_carries_pixels_and_images() {
        let pixels = json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [2, 2, 2, 1],
            "parameters": {"binary_data_size": 8}}]});
        let plan = parse_with(pixels, b"\x01\x02\x03\x04\x05\x06\x07\x08").unwrap();
        assert_eq!(plan.batch, Batch::Pixels(vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]));
        let images = json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [2, 1],
            "parameters": {"binary_data_size": 11}}]});
        let plan = parse_with(images, b"\x02\0\0\0hi\x01\0\0\0x").unwrap();
        assert_eq!(plan.batch, Batch::Images(vec![Bytes::from_static(b"hi"), Bytes::from_static(b"x")]));
    }

    #[test]
    fn binary_outputs_are_asked_for_per_request_or_per_output() {
        let input = json!([{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]);
        let with = |parameters: Value, outputs: Value| parse(json!({"inputs": input, "parameters": parameters, "outputs": outputs}));
        assert!(!with(json!({}), json!([])).unwrap().binary);
        assert!(with(json!({"binary_data_output": true}), json!([])).unwrap().binary);
        let output = |binary: bool| json!([{"name": "PROBABILITIES", "parameters": {"binary_data": binary}}]);
        assert!(with(json!({}), output(true)).unwrap().binary);
        assert!(!with(json!({"binary_data_output": true}), output(false)).unwrap().binary);
        match with(json!({"binary_data_output": "yes"}), json!([])) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("binary_data_output is \"yes\"; expected true or false")),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn the_timeout_is_in_microseconds() {
        let input = json!([{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]);
        let with = |parameters: Value| parse(json!({"inputs": input, "parameters": parameters}));
        assert_eq!(with(json!({})).unwrap().timeout, None);
        assert_eq!(with(json!({"timeout": 1500})).unwrap().timeout, Some(Duration::from_micros(1500)));
        match with(json!({"timeout": -1})) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("parameters.timeout is -1; expected microseconds")),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn binary_sizes_must_add_up() {
        let problem_with = |body: Value, data: &'static [u8]| match parse_with(body, data) {
            Err(ApiError::InvalidRequest { problem, .. }) => problem,
            other => panic!("expected a 400, got {other:?}"),
        };
        let pixels = |size: u64| json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1],
            "parameters": {"binary_data_size": size}}]});
        assert!(problem_with(pixels(4), b"12345").contains("1 bytes of binary data after"));
        assert!(problem_with(pixels(6), b"12345").contains("binary_data_size of PIXELS is 6 but only 5"));
        assert!(problem_with(pixels(3), b"123").contains("has 3 elements; shape [1, 2, 2, 1] needs 4"));
        let images = |shape: Value| json!({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": shape,
            "parameters": {"binary_data_size": 5}}]});
        assert!(problem_with(images(json!([2])), b"\x01\0\0\0h").contains("IMAGE has 1 elements; shape [2] needs 2"));
        assert!(problem_with(images(json!([1, 32])), b"\x01\0\0\0h").contains("expected [n] with n from 1 to 4"));
        let both = json!({"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0],
            "parameters": {"binary_data_size": 4}}]});
        assert!(problem_with(both, b"1234").contains("both data and parameters.binary_data_size"));
    }
}
