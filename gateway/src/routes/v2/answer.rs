//! The answer to an inference request: plain JSON, or, when the client asks
//! for binary outputs (the binary tensor data extension), a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the output's raw data.
//!
//! Raw data is what a client would otherwise parse back from decimal text:
//! FP32 little-endian for the probabilities, and for classification strings
//! BYTES elements (u32 little-endian length, then the bytes).

use axum::http::HeaderName;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use protocol::ModelInfo;
use serde_json::{Value, json};

use super::binary::HEADER_LENGTH;
use super::{OUTPUT_PROBABILITIES, run};

/// What to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// FP32 [n, classes], every class's score.
    Probabilities,
    /// BYTES [n, k], "score:index:label" of the best k (the classification extension).
    Classification(usize),
}

/// The output's tensor, before it is written as JSON or as bytes.
enum Tensor {
    Fp32(Vec<f32>),
    Bytes(Vec<String>),
}

impl Tensor {
    fn json(&self) -> Value {
        match self {
            Tensor::Fp32(v) => json!(v),
            Tensor::Bytes(v) => json!(v),
        }
    }

    fn raw(&self) -> Vec<u8> {
        match self {
            Tensor::Fp32(v) => v.iter().flat_map(|f| f.to_le_bytes()).collect(),
            Tensor::Bytes(v) => v.iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat()).collect(),
        }
    }
}

/// The whole answer; `binary` puts the output's data after the JSON header.
pub fn respond(id: Option<String>, output: OutputKind, binary: bool, model: &ModelInfo, scores: &[Vec<f32>]) -> Response {
    let n = scores.len();
    let (datatype, shape, tensor) = match output {
        OutputKind::Probabilities => ("FP32", [n, model.labels.len()], Tensor::Fp32(scores.concat())),
        OutputKind::Classification(k) => {
            let strings = scores.iter().flat_map(|s| run::classify(s, k, &model.labels)).collect();
            ("BYTES", [n, k], Tensor::Bytes(strings))
        }
    };
    let mut output = json!({ "name": OUTPUT_PROBABILITIES, "datatype": datatype, "shape": shape });
    let raw = if binary {
        let raw = tensor.raw();
        output["parameters"] = json!({ "binary_data_size": raw.len() });
        Some(raw)
    } else {
        output["data"] = tensor.json();
        None
    };
    let mut body = json!({ "model_name": model.name, "model_version": model.version, "outputs": [output] });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    match raw {
        None => axum::Json(body).into_response(),
        Some(raw) => {
            let header = body.to_string().into_bytes();
            let length = header.len().to_string();
            let headers = [(CONTENT_TYPE, "application/octet-stream".to_string()), (HeaderName::from_static(HEADER_LENGTH), length)];
            (headers, [header, raw].concat()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> ModelInfo {
        super::super::test_model(&["a", "b"])
    }

    async fn body_of(response: Response) -> (axum::http::HeaderMap, Vec<u8>) {
        let headers = response.headers().clone();
        (headers, axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn binary_outputs_follow_the_json_header() {
        let scores = [vec![0.25, 0.75]];
        let (headers, body) = body_of(respond(Some("x".into()), OutputKind::Probabilities, true, &digits(), &scores)).await;
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        let split: usize = headers[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
        let header: Value = serde_json::from_slice(&body[..split]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(&body[split..], [0.25f32.to_le_bytes(), 0.75f32.to_le_bytes()].concat());

        let (_, body) = body_of(respond(None, OutputKind::Classification(1), true, &digits(), &scores)).await;
        assert!(body.ends_with(b"\x08\0\0\x000.75:1:b"), "{}", String::from_utf8_lossy(&body));
    }

    #[tokio::test]
    async fn without_binary_the_answer_is_json() {
        let (headers, body) = body_of(respond(None, OutputKind::Probabilities, false, &digits(), &[vec![0.5, 0.5]])).await;
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert!(headers.get(HEADER_LENGTH).is_none());
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["outputs"][0]["data"], json!([0.5, 0.5]));
    }
}
