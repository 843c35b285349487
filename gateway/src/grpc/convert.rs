//! Protobuf <-> the shared v2 request and answer.
//!
//! A `ModelInferRequest` becomes the same [`InferRequest`] REST parses from
//! JSON, so that one validation ([`ValidRequest::check`]) serves both:
//! typed `contents` become JSON `data` (and so meet REST's range checks and
//! messages), while `raw_input_contents` and BYTES contents become binary
//! data named by `binary_data_size`, as REST's binary extension does.
//! Parameters map one to one. Answers carry every output's data in
//! `raw_output_contents`, as Triton's server does.
//!
//! Metadata, config, statistics and the repository index: [`super::describe`].

use bytes::{Bytes, BytesMut};
use protocol::{DataType, ModelInfo};
use serde_json::{Map, Value};

use super::proto::model_infer_request::InferInputTensor;
use super::proto::model_infer_response::InferOutputTensor;
use super::proto::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice};
use crate::error::{ApiError, invalid};
use crate::routes::v2::answer::{OutputTensor, write_region};
use crate::routes::v2::binary::BinaryData;
use crate::routes::v2::request::{Delivery, InferRequest, InputTensor, RequestedOutput};
use crate::routes::v2::tensor::Datatype;

/// The request as REST would have parsed it, and its raw data in input order.
pub fn request(request: ModelInferRequest) -> Result<(InferRequest, BinaryData), ApiError> {
    let ModelInferRequest { id, parameters, inputs, outputs, raw_input_contents, .. } = request;
    let mut raw = raw_input_contents.into_iter();
    let mut binary: Vec<Bytes> = Vec::new();
    let mut converted = Vec::with_capacity(inputs.len());
    for input in inputs {
        converted.push(input_tensor(input, &mut raw, &mut binary)?);
    }
    let left = raw.len();
    if left > 0 {
        return Err(invalid("inputs", format!("{left} raw_input_contents entries more than the inputs without contents or a shared_memory_region")));
    }
    let outputs = outputs.into_iter().map(|o| RequestedOutput { name: o.name, parameters: json_parameters(o.parameters) }).collect();
    let request = InferRequest { id: (!id.is_empty()).then_some(id), inputs: converted, outputs, parameters: json_parameters(parameters) };
    // One input (the usual case) keeps its buffer as it arrived.
    let data = match binary.len() {
        0 => Bytes::new(),
        1 => binary.pop().unwrap_or_default(),
        _ => binary.iter().fold(BytesMut::new(), |mut all, b| {
            all.extend_from_slice(b);
            all
        }).freeze(),
    };
    Ok((request, BinaryData::new(data)))
}

/// One input: its region (parameters say so), its typed contents, or the
/// next raw_input_contents entry, in that order of precedence.
fn input_tensor(input: InferInputTensor, raw: &mut impl ExactSizeIterator<Item = Bytes>, binary: &mut Vec<Bytes>) -> Result<InputTensor, ApiError> {
    let InferInputTensor { name, datatype, shape, parameters, contents } = input;
    let mut parameters = json_parameters(parameters);
    let mut data = None;
    let typed = contents.filter(|c| !is_empty(c));
    if parameters.contains_key("shared_memory_region") {
        if typed.is_some() {
            return Err(invalid("inputs", format!("{name} gives both contents and shared_memory_region; expected one")));
        }
    } else if let Some(contents) = typed {
        match typed_data(&name, &datatype, contents)? {
            Typed::Json(values) => data = Some(values),
            Typed::Raw(bytes) => {
                parameters.insert("binary_data_size".into(), bytes.len().into());
                binary.push(bytes);
            }
        }
    } else {
        let Some(bytes) = raw.next() else {
            return Err(invalid("inputs", format!("{name} has no contents, no raw_input_contents entry and no shared_memory_region")));
        };
        parameters.insert("binary_data_size".into(), bytes.len().into());
        binary.push(bytes);
    }
    Ok(InputTensor { name, datatype, shape, data, parameters })
}

enum Typed {
    /// Numbers or booleans, checked by REST's JSON path.
    Json(Value),
    /// BYTES elements, each a u32 little-endian length and the bytes.
    Raw(Bytes),
}

fn is_empty(c: &InferTensorContents) -> bool {
    c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty()
}

/// The contents field each datatype takes, as the protocol assigns them;
/// None for FP16 and BF16, which travel raw only.
fn field_for(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 => "uint_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

/// The one non-empty field of `contents`, named, as JSON values or BYTES.
fn typed_data(name: &str, datatype: &str, c: InferTensorContents) -> Result<Typed, ApiError> {
    let given: Vec<(&'static str, Typed)> = [
        ("bool_contents", (!c.bool_contents.is_empty()).then(|| Typed::Json(c.bool_contents.into()))),
        ("int_contents", (!c.int_contents.is_empty()).then(|| Typed::Json(c.int_contents.into()))),
        ("int64_contents", (!c.int64_contents.is_empty()).then(|| Typed::Json(c.int64_contents.into()))),
        ("uint_contents", (!c.uint_contents.is_empty()).then(|| Typed::Json(c.uint_contents.into()))),
        ("uint64_contents", (!c.uint64_contents.is_empty()).then(|| Typed::Json(c.uint64_contents.into()))),
        ("fp32_contents", (!c.fp32_contents.is_empty()).then(|| Typed::Json(c.fp32_contents.iter().map(|&f| f64::from(f)).collect()))),
        ("fp64_contents", (!c.fp64_contents.is_empty()).then(|| Typed::Json(c.fp64_contents.into()))),
        ("bytes_contents", (!c.bytes_contents.is_empty()).then(|| Typed::Raw(length_prefixed(&c.bytes_contents)))),
    ]
    .into_iter()
    .filter_map(|(field, typed)| typed.map(|t| (field, t)))
    .collect();
    let [(field, typed)] = <[_; 1]>::try_from(given).map_err(|given| {
        let fields: Vec<&str> = given.iter().map(|(f, _)| *f).collect();
        invalid("inputs", format!("{name}.contents gives {}; expected one field", fields.join(" and ")))
    })?;
    // An unknown datatype is left to the shared validation to name.
    let want = match Datatype::parse(datatype) {
        Ok(Datatype::Bytes) => Some("bytes_contents"),
        Ok(Datatype::Tensor(t)) => field_for(t),
        Ok(_) | Err(_) => return Ok(typed),
    };
    match want {
        Some(want) if want == field => Ok(typed),
        Some(want) => Err(invalid("inputs", format!("{name}.contents gives {field}; datatype {datatype} takes {want}"))),
        None => Err(invalid("inputs", format!("{name}: datatype {datatype} has no contents field; send it in raw_input_contents"))),
    }
}

fn length_prefixed(elements: &[Vec<u8>]) -> Bytes {
    let mut all = BytesMut::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        all.extend_from_slice(&(e.len() as u32).to_le_bytes());
        all.extend_from_slice(e);
    }
    all.freeze()
}

/// Parameters as the JSON REST reads them: the same keys, the same checks.
fn json_parameters(parameters: std::collections::HashMap<String, InferParameter>) -> Map<String, Value> {
    parameters
        .into_iter()
        .map(|(key, p)| {
            let value = match p.parameter_choice {
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(i)) => i.into(),
                Some(ParameterChoice::Uint64Param(u)) => u.into(),
                Some(ParameterChoice::DoubleParam(d)) => d.into(),
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
                None => Value::Null,
            };
            (key, value)
        })
        .collect()
}

fn parameter(choice: ParameterChoice) -> InferParameter {
    InferParameter { parameter_choice: Some(choice) }
}

/// The answer: each output's data in `raw_output_contents` (empty for one
/// written into a region, which the output's parameters name instead).
pub fn response(id: Option<String>, model: &ModelInfo, outputs: Vec<(OutputTensor, Delivery)>) -> Result<ModelInferResponse, ApiError> {
    let mut described = Vec::with_capacity(outputs.len());
    let mut raw = Vec::with_capacity(outputs.len());
    for (tensor, delivery) in outputs {
        let OutputTensor { name, shape, data } = tensor;
        let mut output = InferOutputTensor {
            name,
            datatype: data.datatype().to_string(),
            shape: shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        };
        match delivery {
            Delivery::Json | Delivery::Binary => raw.push(Bytes::from(data.raw())),
            Delivery::SharedMemory(region) => {
                let written = write_region(&region, &output.name, data)?;
                output.parameters.insert("shared_memory_region".into(), parameter(ParameterChoice::StringParam(region.region_name().into())));
                output.parameters.insert("shared_memory_byte_size".into(), parameter(ParameterChoice::Int64Param(written as i64)));
                raw.push(Bytes::new());
            }
        }
        described.push(output);
    }
    Ok(ModelInferResponse {
        model_name: model.name.clone(),
        model_version: model.version.clone(),
        id: id.unwrap_or_default(),
        outputs: described,
        raw_output_contents: raw,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: &[i64], contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.into(), datatype: datatype.into(), shape: shape.to_vec(), contents, ..Default::default() }
    }

    fn problem(request: ModelInferRequest) -> String {
        match super::request(request) {
            Err(ApiError::InvalidRequest { problem, .. }) => problem,
            other => panic!("expected a 400, got {}", other.is_ok()),
        }
    }

    #[test]
    fn raw_contents_become_binary_data_in_input_order() {
        let request = ModelInferRequest {
            inputs: vec![input("a", "UINT8", &[1, 2], None), input("b", "BOOL", &[1], Some(InferTensorContents { bool_contents: vec![true], ..Default::default() })), input("c", "UINT8", &[1], None)],
            raw_input_contents: vec![Bytes::from_static(b"xy"), Bytes::from_static(b"z")],
            ..Default::default()
        };
        let (request, mut binary) = super::request(request).unwrap();
        assert_eq!(request.inputs[0].parameters["binary_data_size"], 2);
        assert_eq!(request.inputs[1].data, Some(serde_json::json!([true])));
        assert_eq!(request.inputs[2].parameters["binary_data_size"], 1);
        assert_eq!(&binary.take("a", 2).unwrap()[..], b"xy");
        assert_eq!(&binary.take("c", 1).unwrap()[..], b"z");
        assert!(binary.finish().is_ok());
    }

    #[test]
    fn contents_must_be_the_datatypes_field() {
        let fp32 = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
        let wrong = ModelInferRequest { inputs: vec![input("x", "INT8", &[1], Some(fp32.clone()))], ..Default::default() };
        assert_eq!(problem(wrong), "x.contents gives fp32_contents; datatype INT8 takes int_contents");
        let half = ModelInferRequest { inputs: vec![input("x", "FP16", &[1], Some(fp32))], ..Default::default() };
        assert!(problem(half).contains("send it in raw_input_contents"));
        let missing = ModelInferRequest { inputs: vec![input("x", "FP32", &[1], None)], ..Default::default() };
        assert!(problem(missing).contains("x has no contents, no raw_input_contents entry"));
        let extra = ModelInferRequest { raw_input_contents: vec![Bytes::new()], ..Default::default() };
        assert!(problem(extra).contains("1 raw_input_contents entries more"));
    }

    #[test]
    fn bytes_contents_are_length_prefixed() {
        let bytes = InferTensorContents { bytes_contents: vec![b"hi".to_vec(), b"x".to_vec()], ..Default::default() };
        let request = ModelInferRequest { inputs: vec![input("IMAGE", "BYTES", &[2], Some(bytes))], ..Default::default() };
        let (request, mut binary) = super::request(request).unwrap();
        assert_eq!(request.inputs[0].parameters["binary_data_size"], 11);
        assert_eq!(&binary.take("IMAGE", 11).unwrap()[..], b"\x02\0\0\0hi\x01\0\0\0x");
    }
}
