//! The image classifier over v2: its two alternative inputs, PIXELS
//! (UINT8 [n, height, width, channels], the model's input as it is) and
//! IMAGE (BYTES [n], encoded PNG/JPEG/WebP, binary data only, decoded and
//! resized here as `/v1/.../predict` does, or sent to a host that decodes
//! JPEGs on its GPU as there), and its one output,
//! PROBABILITIES (FP32 [n, labels]), optionally as classification strings.

use std::time::Instant;

use bytes::Bytes;
use protocol::{DataType, ImageShape, Payload};
#[cfg(test)]
use protocol::ModelInfo;

use super::answer::{OutputData, OutputTensor};
use super::request::{Delivery, InputData, InputTensor, OutputRequest, Source, batch_size, check_fits, invalid};
use super::images::{self, Prepared};
use super::classification;
use super::run::{self, Ran};
use super::tensor::{Datatype, TensorError, check_count, flatten_typed};
use super::{INPUT_IMAGE, INPUT_PIXELS, OUTPUT_PROBABILITIES};
use crate::decode::Target;
use crate::error::ApiError;
use crate::host_client::Route;

/// What a request is checked against: the model's classifier half, as
/// the handshake described it.
#[derive(Debug, Clone, Copy)]
pub struct Classifier<'m> {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub labels: &'m [String],
    pub max_batch_size: u32,
}

impl<'m> Classifier<'m> {
    pub fn new(input: ImageShape, labels: &'m [String], max_batch_size: u32) -> Self {
        Classifier { width: input.width, height: input.height, channels: input.channels, labels, max_batch_size }
    }

    /// The classifier `model` is; None for a tensor model (for the tests:
    /// the infer route matches on the model's kind itself).
    #[cfg(test)]
    pub fn of(model: &'m ModelInfo) -> Option<Self> {
        let (input, labels) = model.classifier()?;
        Some(Self::new(input, labels, model.max_batch_size))
    }
}

/// A request that fits the classifier, one entry per batch element.
#[derive(Debug)]
pub struct Plan<'m> {
    pub model: Classifier<'m>,
    pub batch: Batch,
    /// `Some(k)`: the top k as "score:index:label" strings instead of every score.
    pub classification: Option<usize>,
    pub delivery: Delivery,
}

#[derive(Debug, PartialEq)]
pub enum Batch {
    /// The model's input already, written to the slots as it is.
    Pixels(Vec<Vec<u8>>),
    /// Encoded images, still to decode and resize.
    Images(Vec<Bytes>),
}

pub fn validate<'m>(inputs: Vec<InputTensor>, model: Classifier<'m>, data: &mut InputData, outputs: Vec<OutputRequest>, default: Delivery) -> Result<Plan<'m>, ApiError> {
    let (classification, delivery) = validate_output(outputs, model, default)?;
    let [input] = <[InputTensor; 1]>::try_from(inputs).map_err(|inputs| {
        invalid("inputs", format!("expected exactly one input ({INPUT_PIXELS} or {INPUT_IMAGE}), got {}", inputs.len()))
    })?;
    let batch = match input.name.as_str() {
        INPUT_PIXELS => Batch::Pixels(pixels(input, model, data)?),
        INPUT_IMAGE => Batch::Images(images(input, model, data)?),
        other => return Err(invalid("inputs", format!("unknown input {other:?}; expected {INPUT_PIXELS} or {INPUT_IMAGE}"))),
    };
    if classification.is_none() {
        let n = match &batch {
            Batch::Pixels(p) => p.len(),
            Batch::Images(i) => i.len(),
        };
        check_fits(OUTPUT_PROBABILITIES, &delivery, (n * model.labels.len() * 4) as u64)?;
    }
    Ok(Plan { model, batch, classification, delivery })
}

/// Decodes (images), runs every element through the host, and builds the output.
pub async fn run(link: &Route, plan: Plan<'_>, deadline: Instant, budget_ms: u64, tag: &str, max_pixels: u64) -> Result<Ran, ApiError> {
    let model = plan.model;
    let decode_started = Instant::now();
    let elements = match plan.batch {
        Batch::Pixels(pixels) => pixels.into_iter().map(|p| Prepared { bytes: p.into(), payload: Payload::Input }).collect(),
        Batch::Images(images) => {
            let target = Target { width: model.width, height: model.height, channels: model.channels };
            images::prepare_all(images, target, max_pixels, link.model().host_decode, INPUT_IMAGE).await?
        }
    };
    let decode = decode_started.elapsed();
    if Instant::now() >= deadline {
        return Err(ApiError::DeadlineExceeded { budget_ms });
    }
    let host = run::classify_all(link, &elements, model.labels.len(), deadline, budget_ms, tag).await?;
    let n = host.each.len() as u64;
    let data = match plan.classification {
        None => OutputData::Typed(DataType::Fp32, host.each.concat().iter().flat_map(|f| f.to_le_bytes()).collect()),
        Some(k) => OutputData::Strings(
            host.each
                .iter()
                .flat_map(|s| classification::top_k(&s.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), k, Some(model.labels)))
                .collect(),
        ),
    };
    let width = plan.classification.unwrap_or(model.labels.len()) as u64;
    let output = OutputTensor { name: OUTPUT_PROBABILITIES.into(), shape: vec![n, width], data };
    Ok(Ran { outputs: vec![(output, plan.delivery)], elements: elements.len(), decode, queue: host.queue, inference: host.inference })
}

/// IMAGE: BYTES [n] (or [n, 1]), one encoded image per element, binary only.
fn images(mut input: InputTensor, model: Classifier, data: &mut InputData) -> Result<Vec<Bytes>, ApiError> {
    let datatype = Datatype::parse(&input.datatype).map_err(|e| invalid("inputs", format!("{INPUT_IMAGE}: {e}")))?;
    if datatype != Datatype::Bytes {
        return Err(invalid("inputs", format!("{INPUT_IMAGE}.datatype is {}; expected BYTES", datatype.name())));
    }
    images::encoded(&mut input, INPUT_IMAGE, model.max_batch_size, data, &format!("{INPUT_PIXELS} (UINT8)"))
}

/// PIXELS: UINT8 [n, height, width, channels], 1 <= n <= max_batch_size.
fn pixels(mut input: InputTensor, model: Classifier, data: &mut InputData) -> Result<Vec<Vec<u8>>, ApiError> {
    let tensor_error = |e: TensorError| invalid("inputs", format!("{INPUT_PIXELS}: {e}"));
    let datatype = Datatype::parse(&input.datatype).map_err(tensor_error)?;
    if datatype != Datatype::Tensor(DataType::Uint8) {
        return Err(invalid("inputs", format!("{INPUT_PIXELS}.datatype is {}; expected UINT8", datatype.name())));
    }
    let (h, w, c) = (i64::from(model.height), i64::from(model.width), i64::from(model.channels));
    let Some(batch) = batch_size(&input.shape, &[&[h, w, c]], model.max_batch_size) else {
        return Err(invalid(
            "inputs",
            format!("{INPUT_PIXELS}.shape is {:?}; expected [n, {h}, {w}, {c}] with n from 1 to {}", input.shape, model.max_batch_size),
        ));
    };
    let want = (batch as u64) * u64::from(model.height) * u64::from(model.width) * u64::from(model.channels);
    let flat = match data.source(&mut input, Some(want))? {
        Source::Json(data) => flatten_typed(DataType::Uint8, &data).map_err(|e| invalid("inputs", format!("{INPUT_PIXELS}.data: {e}")))?,
        Source::Raw(raw) => raw.to_vec(),
    };
    check_count(flat.len(), &input.shape).map_err(|e| invalid("inputs", format!("{INPUT_PIXELS}.data {e}")))?;
    let per_element = flat.len() / batch;
    Ok(flat.chunks_exact(per_element).map(<[u8]>::to_vec).collect())
}

/// At most one requested output, PROBABILITIES, optionally as classification.
fn validate_output(outputs: Vec<OutputRequest>, model: Classifier, default: Delivery) -> Result<(Option<usize>, Delivery), ApiError> {
    let mut outputs = outputs.into_iter();
    let requested = match (outputs.next(), outputs.next()) {
        (None, _) => return Ok((None, default)),
        (Some(one), None) => one,
        (Some(_), Some(_)) => {
            return Err(invalid("outputs", format!("expected at most one output ({OUTPUT_PROBABILITIES}), got {}", outputs.len() + 2)));
        }
    };
    if requested.name != OUTPUT_PROBABILITIES {
        return Err(invalid("outputs", format!("unknown output {:?}; expected {OUTPUT_PROBABILITIES}", requested.name)));
    }
    // More than there are classes is every class, as Triton does.
    let classification = requested.classification.map(|k| (k as usize).min(model.labels.len()));
    Ok((classification, requested.delivery))
}

#[cfg(test)]
mod tests {
    use super::super::request::{ValidRequest, read_for_test};
    use super::*;
    use serde_json::{Value, json};

    fn digits() -> Classifier<'static> {
        let model = Box::leak(Box::new(super::super::test_model(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])));
        Classifier::of(model).expect("test_model is a classifier")
    }

    fn parse(body: Value) -> Result<Plan<'static>, ApiError> {
        parse_with(body, b"")
    }

    /// As the infer route reads a request, with binary data after a JSON header.
    fn parse_with(body: Value, data: &'static [u8]) -> Result<Plan<'static>, ApiError> {
        let ValidRequest { inputs: request_inputs, outputs, default, data: mut inputs, .. } = read_for_test(body, data)?;
        let plan = validate(request_inputs, digits(), &mut inputs, outputs, default)?;
        inputs.finish()?;
        Ok(plan)
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
        assert_eq!(plan.classification, None);
        assert!(matches!(plan.delivery, Delivery::Json));
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
        assert!(problem(zero).contains("expected an integer of 1 or more"));
        let twice = json!({"inputs": ok_input, "outputs": [{"name": "PROBABILITIES"}, {"name": "PROBABILITIES"}]});
        assert!(problem(twice).contains("requested twice"));
        let shm = json!({"inputs": ok_input, "outputs": [{"name": "PROBABILITIES", "parameters": {"shared_memory_region": "r",
            "shared_memory_byte_size": 40}}]});
        assert!(problem(shm).contains("system shared memory is disabled"));
    }

    #[test]
    fn classification_is_capped_at_the_number_of_classes() {
        let input = json!([{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]);
        let plan = parse(json!({"inputs": input, "outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 50}}]})).unwrap();
        assert_eq!(plan.classification, Some(10));
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
        let binary = |plan: Result<Plan, ApiError>| matches!(plan.unwrap().delivery, Delivery::Binary);
        assert!(!binary(with(json!({}), json!([]))));
        assert!(binary(with(json!({"binary_data_output": true}), json!([]))));
        let output = |binary: bool| json!([{"name": "PROBABILITIES", "parameters": {"binary_data": binary}}]);
        assert!(binary(with(json!({}), output(true))));
        assert!(!binary(with(json!({"binary_data_output": true}), output(false))));
        match with(json!({"binary_data_output": "yes"}), json!([])) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("binary_data_output is \"yes\"; expected true or false")),
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
        assert!(problem_with(both, b"1234").contains("more than one of data, parameters.binary_data_size"));
    }
}
