//! A tensor model over v2: the inputs and outputs its model config names
//! ([`TensorSignature`]), any of the datatypes, JSON, binary or
//! shared-memory data. Each batch element becomes one host call whose slot
//! holds that element's inputs (at the signature's placements) and, when
//! answered, its outputs. An input that is UINT8 [height, width, channels]
//! also takes encoded images as BYTES, decoded and resized here.

use std::time::Instant;

use bytes::Bytes;
use protocol::{DataType, ModelInfo, TensorSignature, TensorSpec};

use super::answer::{OutputData, OutputTensor};
use super::images;
use super::request::{Delivery, InputData, InputTensor, OutputRequest, Source, check_fits, invalid};
use super::classification;
use super::run::{self, Ran};
use super::tensor::{Datatype, check_count, flatten_typed, to_f64};
use crate::decode::Target;
use crate::error::ApiError;
use crate::host_client::Route;
use crate::routes::host_call;

/// A request that fits the model.
#[derive(Debug)]
pub struct Plan {
    /// One slot's input area per batch element.
    pub items: Vec<Vec<u8>>,
    /// Inputs given as encoded images, still to decode into `items`.
    pub images: Vec<PendingImages>,
    pub outputs: Vec<PlannedOutput>,
}

#[derive(Debug)]
pub struct PendingImages {
    /// Index into the signature's inputs.
    pub index: usize,
    pub images: Vec<Bytes>,
    pub target: Target,
}

#[derive(Debug)]
pub struct PlannedOutput {
    /// Index into the signature's outputs.
    pub index: usize,
    pub classification: Option<usize>,
    pub delivery: Delivery,
}

pub fn validate(
    inputs: Vec<InputTensor>,
    model: &ModelInfo,
    signature: &TensorSignature,
    data: &mut InputData,
    outputs: Vec<OutputRequest>,
    default: Delivery,
) -> Result<Plan, ApiError> {
    let outputs = plan_outputs(outputs, signature, default)?;
    let mut batch = None;
    let placements = signature.input_placements();
    let mut given: Vec<Option<Vec<u8>>> = vec![None; signature.inputs.len()];
    let mut pending = Vec::new();
    for mut input in inputs {
        let Some((index, spec)) = signature.input(&input.name) else {
            let names: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(invalid("inputs", format!("unknown input {:?}; the model's inputs are {names:?}", input.name)));
        };
        if given[index].is_some() {
            return Err(invalid("inputs", format!("input {:?} is given twice", spec.name)));
        }
        let target = images::pixel_target(spec).filter(|_| input.datatype == "BYTES");
        let encoded = match target {
            Some(_) => {
                let instead = format!("{} as UINT8 [n, {}]", spec.name, join(&spec.dims));
                Some(images::encoded(&mut input, &spec.name, model.max_batch_size, data, &instead)?)
            }
            None => None,
        };
        let n = match &encoded {
            Some(images) => images.len(),
            None => check_shape(&input, spec, model.max_batch_size)?,
        };
        match batch {
            Some(b) if b != n => {
                return Err(invalid("inputs", format!("{} has batch size {n} but an earlier input has {b}; all inputs need the same", spec.name)));
            }
            _ => batch = Some(n),
        }
        if let (Some(target), Some(images)) = (target, encoded) {
            pending.push(PendingImages { index, images, target });
            given[index] = Some(Vec::new());
            continue;
        }
        let bytes = input_bytes(&mut input, spec, n, data)?;
        given[index] = Some(bytes);
    }
    if let Some(missing) = given.iter().position(Option::is_none) {
        return Err(invalid("inputs", format!("input {:?} is missing; the model needs every input", signature.inputs[missing].name)));
    }
    let n = batch.unwrap_or(0);
    for planned in outputs.iter().filter(|o| o.classification.is_none()) {
        let spec = &signature.outputs[planned.index];
        check_fits(&spec.name, &planned.delivery, n as u64 * spec.byte_size())?;
    }
    let mut items = vec![vec![0u8; signature.input_bytes() as usize]; n];
    for ((bytes, spec), placement) in given.into_iter().flatten().zip(&signature.inputs).zip(&placements) {
        // Empty for an input given as images: it is filled once they are decoded.
        for (item, chunk) in items.iter_mut().zip(bytes.chunks_exact(spec.byte_size().max(1) as usize)) {
            item[placement.range()].copy_from_slice(chunk);
        }
    }
    Ok(Plan { items, images: pending, outputs })
}

/// One input's `n` items of data, from JSON, binary data or a region,
/// checked against the spec (count, byte length, BOOL values).
fn input_bytes(input: &mut InputTensor, spec: &TensorSpec, n: usize, data: &mut InputData) -> Result<Vec<u8>, ApiError> {
    let want = n as u64 * spec.byte_size();
    Ok(match data.source(input, Some(want))? {
        Source::Json(json) => {
            let bytes = flatten_typed(spec.datatype, &json).map_err(|e| invalid("inputs", format!("{}.data: {e}", spec.name)))?;
            let elements = bytes.len() / spec.datatype.size() as usize;
            check_count(elements, &input.shape).map_err(|e| invalid("inputs", format!("{}.data {e}", spec.name)))?;
            bytes
        }
        Source::Raw(raw) => {
            if raw.len() as u64 != want {
                return Err(invalid(
                    "inputs",
                    format!("{} has {} bytes of data; shape {:?} of {} needs {want}", spec.name, raw.len(), input.shape, spec.datatype.name()),
                ));
            }
            // JSON bools are checked as they are parsed; raw ones here,
            // since libtorch takes any other byte as a bool that is neither.
            if let (DataType::Bool, Some(index)) = (spec.datatype, raw.iter().position(|&b| b > 1)) {
                return Err(invalid("inputs", format!("{} element {index} is byte {}; BOOL elements are 0 or 1", spec.name, raw[index])));
            }
            raw.to_vec()
        }
    })
}

/// `[n, dims...]` with the model's datatype and 1 <= n <= max_batch_size.
fn check_shape(input: &InputTensor, spec: &TensorSpec, max_batch_size: u32) -> Result<usize, ApiError> {
    let datatype = Datatype::parse(&input.datatype).map_err(|e| invalid("inputs", format!("{}: {e}", spec.name)))?;
    if datatype.tensor() != Some(spec.datatype) {
        return Err(invalid("inputs", format!("{}.datatype is {}; expected {}", spec.name, datatype.name(), spec.datatype.name())));
    }
    let dims: Vec<i64> = spec.dims.iter().map(|&d| d as i64).collect();
    match input.shape.split_first() {
        Some((&n, rest)) if rest == dims.as_slice() && n >= 1 && n <= i64::from(max_batch_size) => Ok(n as usize),
        _ => Err(invalid(
            "inputs",
            format!("{}.shape is {:?}; expected [n, {}] with n from 1 to {max_batch_size}", spec.name, input.shape, join(&spec.dims)),
        )),
    }
}

fn join(dims: &[u64]) -> String {
    dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The requested outputs by index; every output when none is named.
fn plan_outputs(outputs: Vec<OutputRequest>, signature: &TensorSignature, default: Delivery) -> Result<Vec<PlannedOutput>, ApiError> {
    if outputs.is_empty() {
        let mut planned = Vec::with_capacity(signature.outputs.len());
        for index in 0..signature.outputs.len() {
            let delivery = match &default {
                Delivery::Binary => Delivery::Binary,
                _ => Delivery::Json,
            };
            planned.push(PlannedOutput { index, classification: None, delivery });
        }
        return Ok(planned);
    }
    outputs
        .into_iter()
        .map(|o| {
            let Some((index, spec)) = signature.output(&o.name) else {
                let names: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid("outputs", format!("unknown output {:?}; the model's outputs are {names:?}", o.name)));
            };
            // More than an element has is all of them, as Triton does.
            let classification = o.classification.map(|k| (k as usize).min(spec.element_count() as usize));
            Ok(PlannedOutput { index, classification, delivery: o.delivery })
        })
        .collect()
}

/// Runs every element through the host at once and cuts the outputs out
/// of the answered slots.
pub async fn run(link: &Route, signature: &TensorSignature, mut plan: Plan, deadline: Instant, budget_ms: u64, tag: &str, max_pixels: u64) -> Result<Ran, ApiError> {
    let decode_started = Instant::now();
    let placements = signature.input_placements();
    for PendingImages { index, images, target } in std::mem::take(&mut plan.images) {
        let pixels = images::decode_all(images, target, max_pixels, &signature.inputs[index].name).await?;
        for (item, pixels) in plan.items.iter_mut().zip(pixels) {
            item[placements[index].range()].copy_from_slice(&pixels);
        }
    }
    let decode = decode_started.elapsed();
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded { budget_ms });
    }
    let answers = run::fan_out(&plan.items, tag, |item, tag| host_call::run_tensors(link, item, deadline, budget_ms, tag)).await?;
    let (queue, inference, rows) = (answers.queue, answers.inference, answers.each);
    let placements = signature.output_placements();
    let n = rows.len() as u64;
    let outputs = plan
        .outputs
        .into_iter()
        .map(|planned| {
            let spec = &signature.outputs[planned.index];
            let range = placements[planned.index].range();
            let raw: Vec<u8> = rows.iter().flat_map(|row| row[range.clone()].iter().copied()).collect();
            let tensor = match planned.classification {
                None => {
                    let shape = std::iter::once(n).chain(spec.dims.iter().copied()).collect();
                    OutputTensor { name: spec.name.clone(), shape, data: OutputData::Typed(spec.datatype, raw) }
                }
                Some(k) => {
                    let per_item = spec.byte_size() as usize;
                    let strings = raw.chunks_exact(per_item.max(1)).flat_map(|item| classification::top_k(&to_f64(spec.datatype, item), k, None)).collect();
                    OutputTensor { name: spec.name.clone(), shape: vec![n, k as u64], data: OutputData::Strings(strings) }
                }
            };
            (tensor, planned.delivery)
        })
        .collect();
    let elements = rows.len();
    Ok(Ran { outputs, elements, decode, queue, inference })
}

#[cfg(test)]
mod tests {
    use super::super::request::{ValidRequest, read_for_test};
    use super::*;
    use serde_json::{Value, json};

    fn model() -> (ModelInfo, TensorSignature) {
        let spec = |name: &str, datatype, dims: &[u64]| TensorSpec { name: name.into(), datatype, dims: dims.to_vec() };
        let signature = TensorSignature {
            inputs: vec![spec("x", DataType::Fp32, &[2]), spec("flag", DataType::Bool, &[1])],
            outputs: vec![spec("y", DataType::Int64, &[3]), spec("mask", DataType::Bool, &[2])],
        };
        let mut model = super::super::test_model(&[]);
        model.kind = protocol::ModelKind::Tensors(signature.clone());
        (model, signature)
    }

    fn parse_with(body: Value, data: &'static [u8]) -> Result<Plan, ApiError> {
        let ValidRequest { inputs: request_inputs, outputs, default, data: mut inputs, .. } = read_for_test(body, data)?;
        let (model, signature) = model();
        let plan = validate(request_inputs, &model, &signature, &mut inputs, outputs, default)?;
        inputs.finish()?;
        Ok(plan)
    }

    fn problem(body: Value) -> String {
        match parse_with(body, b"") {
            Err(ApiError::InvalidRequest { problem, .. }) => problem,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn inputs_land_at_their_placements_per_item() {
        let body = json!({"inputs": [
            {"name": "flag", "datatype": "BOOL", "shape": [2, 1], "data": [true, false]},
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
        ]});
        let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        let plan = parse_with(body, Box::leak(floats.clone().into_boxed_slice())).unwrap();
        assert_eq!(plan.items.len(), 2);
        assert_eq!(plan.items[0].len(), 128, "x at 0, flag at 64, aligned");
        assert_eq!(&plan.items[0][..8], &floats[..8]);
        assert_eq!(plan.items[0][64], 1);
        assert_eq!(&plan.items[1][..8], &floats[8..]);
        assert_eq!(plan.items[1][64], 0);
        assert_eq!(plan.outputs.iter().map(|o| o.index).collect::<Vec<_>>(), vec![0, 1], "every output by default");
    }

    #[test]
    fn mistakes_name_the_input_and_what_the_model_wants() {
        let x = json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]});
        let flag = json!({"name": "flag", "datatype": "BOOL", "shape": [1, 1], "data": [true]});
        assert!(problem(json!({"inputs": [x]})).contains("input \"flag\" is missing"));
        assert!(problem(json!({"inputs": [x, x, flag]})).contains("\"x\" is given twice"));
        assert!(problem(json!({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}]})).contains("unknown input \"z\""));
        let wrong_type = json!({"name": "x", "datatype": "FP64", "shape": [1, 2], "data": [1.0, 2.0]});
        assert!(problem(json!({"inputs": [wrong_type, flag]})).contains("x.datatype is FP64; expected FP32"));
        let wrong_shape = json!({"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]});
        assert!(problem(json!({"inputs": [wrong_shape, flag]})).contains("x.shape is [1, 3]; expected [n, 2] with n from 1 to 4"));
        let short = json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0]});
        assert!(problem(json!({"inputs": [short, flag]})).contains("has 1 elements; shape [1, 2] needs 2"));
        let two = json!({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]});
        assert!(problem(json!({"inputs": [two, flag]})).contains("batch size 1 but an earlier input has 2"));
        let bad_bool = json!({"name": "flag", "datatype": "BOOL", "shape": [1, 1], "data": [2]});
        assert!(problem(json!({"inputs": [x, bad_bool]})).contains("BOOL elements are true or false"));
        assert!(problem(json!({"inputs": [x, flag], "outputs": [{"name": "q"}]})).contains("unknown output \"q\""));
        let body = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 4}}, flag]});
        match parse_with(body, b"1234") {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("x has 4 bytes of data; shape [1, 2] of FP32 needs 8"), "{problem}"),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn raw_bools_are_zero_or_one() {
        // libtorch takes any other byte as a bool that is neither (warm-up
        // avoids them for that reason): 2 must not reach the model.
        let x = json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]});
        let flag = json!({"name": "flag", "datatype": "BOOL", "shape": [2, 1], "parameters": {"binary_data_size": 2}});
        let two = json!({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]});
        match parse_with(json!({"inputs": [two, flag]}), b"\x01\x02") {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("flag element 1 is byte 2; BOOL elements are 0 or 1"), "{problem}"),
            other => panic!("expected a 400, got {other:?}"),
        }
        let flag = json!({"name": "flag", "datatype": "BOOL", "shape": [1, 1], "parameters": {"binary_data_size": 1}});
        assert!(parse_with(json!({"inputs": [x, flag]}), b"\x01").is_ok());
    }

    #[test]
    fn requested_outputs_and_classification() {
        let x = json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]});
        let flag = json!({"name": "flag", "datatype": "BOOL", "shape": [1, 1], "data": [true]});
        let plan = parse_with(json!({"inputs": [x, flag], "outputs": [{"name": "mask"}, {"name": "y", "parameters": {"classification": 9}}]}), b"").unwrap();
        assert_eq!(plan.outputs.iter().map(|o| (o.index, o.classification)).collect::<Vec<_>>(), vec![(1, None), (0, Some(3))]);
    }

    #[test]
    fn a_pixel_input_takes_encoded_images_as_bytes() {
        let spec = |name: &str, datatype, dims: &[u64]| TensorSpec { name: name.into(), datatype, dims: dims.to_vec() };
        let signature = TensorSignature {
            inputs: vec![spec("image", DataType::Uint8, &[2, 2, 1]), spec("t", DataType::Fp32, &[1])],
            outputs: vec![spec("y", DataType::Fp32, &[1])],
        };
        let mut model = super::super::test_model(&[]);
        model.kind = protocol::ModelKind::Tensors(signature.clone());
        let mut png = Vec::new();
        image::GrayImage::from_raw(2, 2, vec![1, 2, 3, 4]).unwrap().write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let element: &'static [u8] = Box::leak([&(png.len() as u32).to_le_bytes()[..], &png].concat().into_boxed_slice());
        let t = json!({"name": "t", "datatype": "FP32", "shape": [1, 1], "data": [0.5]});
        let body = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": element.len()}}, t]});
        let ValidRequest { inputs: request_inputs, outputs, default, data: mut inputs, .. } = read_for_test(body, element).unwrap();
        let plan = validate(request_inputs, &model, &signature, &mut inputs, outputs, default).unwrap();
        assert_eq!((plan.items.len(), plan.images.len(), plan.images[0].index), (1, 1, 0));
        assert_eq!((plan.images[0].target.height, plan.images[0].target.width, plan.images[0].target.channels), (2, 2, 1));
        assert_eq!(plan.images[0].images[0].as_ref(), &png[..]);

        let json_bytes = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}, t]});
        let ValidRequest { inputs: request_inputs, outputs, default, data: mut inputs, .. } = read_for_test(json_bytes, b"").unwrap();
        match validate(request_inputs, &model, &signature, &mut inputs, outputs, default) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("send image as UINT8 [n, 2, 2, 1]"), "{problem}"),
            other => panic!("expected a 400, got {other:?}"),
        }
    }
}
