//! `POST /v2/models/{m}[/versions/{v}]/infer`: parse the protocol's JSON,
//! validate it against the model into an [`InferPlan`], run it, answer.
//!
//! JSON tensor data carries PIXELS (UINT8 [n, height, width, channels],
//! flat or nested). IMAGE (encoded images, BYTES) needs raw bytes, which
//! JSON strings cannot carry faithfully; it is refused with a message
//! saying so.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Request, State};
use protocol::ModelInfo;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::tensor::{Datatype, TensorError, check_count, flatten_uint8};
use super::{INPUT_IMAGE, INPUT_PIXELS, ModelPath, OUTPUT_PROBABILITIES, run};
use crate::error::ApiError;
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
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    datatype: String,
    /// Signed so that a `-1` gets a message about dimensions, not about JSON.
    shape: Vec<i64>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputKind {
    /// FP32 [n, classes], every class's score.
    Probabilities,
    /// BYTES [n, k], "score:index:label" of the best k (the classification extension).
    Classification(usize),
}

/// A request that fits the model: one pixel buffer per batch element.
#[derive(Debug)]
struct InferPlan {
    id: Option<String>,
    elements: Vec<Vec<u8>>,
    output: OutputKind,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest { field, problem: problem.into() }
}

#[tracing::instrument(skip_all, fields(model = %path.name))]
pub async fn infer(State(app): State<AppState>, Path(path): Path<ModelPath>, request: Request) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    // Admission before work: no body is read for a host that cannot serve.
    let link = app.host.ready_link()?;
    let model = link.model();
    path.check(model)?;
    let tag = request_id::of(&request);
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, app.limits.max_body_bytes, app.limits.body_timeout).await?;
    let request: InferRequest = serde_json::from_slice(&body).map_err(|e| invalid("body", format!("not an inference request: {e}")))?;
    let plan = validate(request, model)?;

    let budget = app.limits.request_timeout;
    let budget_ms = budget.as_millis() as u64;
    let scores = run::run_batch(&link, &plan.elements, started + budget, budget_ms, &tag).await?;
    Ok(Json(respond(&plan, model, &scores)))
}

fn validate(request: InferRequest, model: &ModelInfo) -> Result<InferPlan, ApiError> {
    let output = validate_outputs(&request.outputs, model)?;
    let [input] = <[InputTensor; 1]>::try_from(request.inputs).map_err(|inputs| {
        invalid("inputs", format!("expected exactly one input ({INPUT_PIXELS} or {INPUT_IMAGE}), got {}", inputs.len()))
    })?;
    let elements = match input.name.as_str() {
        INPUT_PIXELS => pixels(input, model)?,
        INPUT_IMAGE => {
            return Err(invalid(
                "inputs",
                format!("{INPUT_IMAGE} takes encoded images as raw bytes, which JSON data cannot carry; send {INPUT_PIXELS} (UINT8)"),
            ));
        }
        other => return Err(invalid("inputs", format!("unknown input {other:?}; expected {INPUT_PIXELS} or {INPUT_IMAGE}"))),
    };
    Ok(InferPlan { id: request.id, elements, output })
}

/// PIXELS: UINT8 [n, height, width, channels], 1 <= n <= max_batch_size.
fn pixels(input: InputTensor, model: &ModelInfo) -> Result<Vec<Vec<u8>>, ApiError> {
    let tensor_error = |e: TensorError| invalid("inputs", format!("{INPUT_PIXELS}: {e}"));
    let datatype = Datatype::parse(&input.datatype).map_err(tensor_error)?;
    if datatype != Datatype::Uint8 {
        return Err(invalid("inputs", format!("{INPUT_PIXELS}.datatype is {}; expected UINT8", datatype.name())));
    }
    let (h, w, c) = (i64::from(model.height), i64::from(model.width), i64::from(model.channels));
    let batch = match input.shape[..] {
        [n, sh, sw, sc] if (sh, sw, sc) == (h, w, c) && n >= 1 && n <= i64::from(model.max_batch_size) => n as usize,
        _ => {
            return Err(invalid(
                "inputs",
                format!(
                    "{INPUT_PIXELS}.shape is {:?}; expected [n, {h}, {w}, {c}] with n from 1 to {}",
                    input.shape, model.max_batch_size
                ),
            ));
        }
    };
    let data = input.data.ok_or_else(|| invalid("inputs", format!("{INPUT_PIXELS}.data is missing")))?;
    let flat = flatten_uint8(&data).map_err(|e| invalid("inputs", format!("{INPUT_PIXELS}.data: {e}")))?;
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

fn respond(plan: &InferPlan, model: &ModelInfo, scores: &[Vec<f32>]) -> Value {
    let n = scores.len();
    let output = match plan.output {
        OutputKind::Probabilities => json!({
            "name": OUTPUT_PROBABILITIES,
            "datatype": "FP32",
            "shape": [n, model.labels.len()],
            "data": scores.concat(),
        }),
        OutputKind::Classification(k) => json!({
            "name": OUTPUT_PROBABILITIES,
            "datatype": "BYTES",
            "shape": [n, k],
            "data": scores.iter().flat_map(|s| run::classify(s, k, &model.labels)).collect::<Vec<_>>(),
        }),
    };
    let mut body = json!({ "model_name": model.name, "model_version": model.version, "outputs": [output] });
    if let Some(id) = &plan.id {
        body["id"] = json!(id);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> ModelInfo {
        ModelInfo {
            name: "digits".into(),
            version: "1".into(),
            description: String::new(),
            width: 2,
            height: 2,
            channels: 1,
            labels: (0..10).map(|i| i.to_string()).collect(),
            max_batch_size: 4,
            device: "cpu".into(),
        }
    }

    fn parse(body: Value) -> Result<InferPlan, ApiError> {
        validate(serde_json::from_value(body).expect("a well-formed request"), &digits())
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
        assert_eq!(plan.elements, vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
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
}
