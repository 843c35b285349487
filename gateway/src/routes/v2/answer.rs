//! The answer to an inference request: plain JSON, or, when the client asks
//! for binary outputs (the binary tensor data extension), a JSON header of
//! `Inference-Header-Content-Length` bytes followed by the output's raw data.
//!
//! Raw data is what a client would otherwise parse back from decimal text:
//! little-endian elements, and for classification strings BYTES elements
//! (u32 little-endian length, then the bytes). Outputs may also go into a
//! client's registered shared-memory region.

use axum::http::HeaderName;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use protocol::{DataType, ModelInfo};
use serde_json::{Value, json};

use super::binary::HEADER_LENGTH;
use super::request::{Delivery, invalid};
use super::shm_io::RegionUse;
use super::tensor::to_json;
use crate::error::ApiError;

/// One output tensor, before it is written as JSON, as bytes, or into a region.
#[derive(Debug)]
pub struct OutputTensor {
    pub name: String,
    /// With the batch dimension first.
    pub shape: Vec<u64>,
    pub data: OutputData,
}

#[derive(Debug, PartialEq)]
pub enum OutputData {
    /// Little-endian elements.
    Typed(DataType, Vec<u8>),
    /// BYTES elements (classification strings).
    Strings(Vec<String>),
}

impl OutputData {
    pub fn datatype(&self) -> &'static str {
        match self {
            OutputData::Typed(d, _) => d.name(),
            OutputData::Strings(_) => "BYTES",
        }
    }

    fn json(&self) -> Value {
        match self {
            OutputData::Typed(d, raw) => to_json(*d, raw),
            OutputData::Strings(v) => json!(v),
        }
    }

    /// The binary form: the bytes as they are; BYTES elements as a u32
    /// little-endian length, then the bytes.
    pub fn raw(self) -> Vec<u8> {
        match self {
            OutputData::Typed(_, raw) => raw,
            OutputData::Strings(v) => v.iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat()).collect(),
        }
    }
}

/// The whole answer. Outputs delivered as binary data follow the JSON
/// header in output order; outputs for a region are written into it, and
/// the answer names the region instead of carrying data.
pub fn respond(id: Option<String>, model: &ModelInfo, outputs: Vec<(OutputTensor, Delivery)>) -> Result<Response, ApiError> {
    let mut described = Vec::with_capacity(outputs.len());
    let mut binary = Vec::new();
    let mut has_binary = false;
    for (tensor, delivery) in outputs {
        let mut output = json!({ "name": tensor.name, "datatype": tensor.data.datatype(), "shape": tensor.shape });
        match delivery {
            Delivery::Json => output["data"] = tensor.data.json(),
            Delivery::Binary => {
                let raw = tensor.data.raw();
                output["parameters"] = json!({ "binary_data_size": raw.len() });
                binary.extend(raw);
                has_binary = true;
            }
            Delivery::SharedMemory(region) => {
                let written = write_region(&region, &tensor.name, tensor.data)?;
                output["parameters"] = json!({
                    "shared_memory_region": region.region_name(),
                    "shared_memory_byte_size": written,
                });
            }
        }
        described.push(output);
    }
    let mut body = json!({ "model_name": model.name, "model_version": model.version, "outputs": described });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if !has_binary {
        return Ok(crate::routes::json_answer::json_answer(&body));
    }
    let header = body.to_string().into_bytes();
    let length = header.len().to_string();
    let headers = [(CONTENT_TYPE, "application/octet-stream".to_string()), (HeaderName::from_static(HEADER_LENGTH), length)];
    Ok((headers, [header, binary].concat()).into_response())
}

/// An output written into the client's region (both transports answer
/// this way); the bytes written.
pub fn write_region(region: &RegionUse, name: &str, data: OutputData) -> Result<usize, ApiError> {
    let raw = data.raw();
    region.write(&raw).map_err(|e| invalid("outputs", format!("{name}: {e}")))?;
    Ok(raw.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits() -> ModelInfo {
        super::super::test_model(&["a", "b"])
    }

    fn fp32(name: &str, values: &[f32]) -> OutputTensor {
        let raw = values.iter().flat_map(|f| f.to_le_bytes()).collect();
        OutputTensor { name: name.into(), shape: vec![1, values.len() as u64], data: OutputData::Typed(DataType::Fp32, raw) }
    }

    async fn body_of(response: Response) -> (axum::http::HeaderMap, Vec<u8>) {
        let headers = response.headers().clone();
        (headers, axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec())
    }

    #[tokio::test]
    async fn binary_outputs_follow_the_json_header_in_output_order() {
        let strings = OutputTensor { name: "C".into(), shape: vec![1, 1], data: OutputData::Strings(vec!["0.75:1:b".into()]) };
        let outputs = vec![(fp32("P", &[0.25, 0.75]), Delivery::Binary), (fp32("J", &[1.0]), Delivery::Json), (strings, Delivery::Binary)];
        let (headers, body) = body_of(respond(Some("x".into()), &digits(), outputs).unwrap()).await;
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        let split: usize = headers[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
        let header: Value = serde_json::from_slice(&body[..split]).unwrap();
        assert_eq!(header["id"], "x");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(header["outputs"][1]["data"], json!([1.0]));
        assert_eq!(header["outputs"][2]["datatype"], "BYTES");
        let expected = [&0.25f32.to_le_bytes()[..], &0.75f32.to_le_bytes(), b"\x08\0\0\x000.75:1:b"].concat();
        assert_eq!(&body[split..], expected);
    }

    #[tokio::test]
    async fn without_binary_the_answer_is_json() {
        let (headers, body) = body_of(respond(None, &digits(), vec![(fp32("P", &[0.5, 0.5]), Delivery::Json)]).unwrap()).await;
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert!(headers.get(HEADER_LENGTH).is_none());
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["outputs"][0]["data"], json!([0.5, 0.5]));
        assert_eq!(body["outputs"][0]["shape"], json!([1, 2]));
        assert!(body.get("id").is_none());
    }
}
