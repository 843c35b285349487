//! The inference request body as the protocol defines it, and what every
//! model kind reads the same way: where each input's bytes are (JSON data,
//! binary data after the header, or a registered shared-memory region),
//! the client's timeout, and how each requested output is delivered.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::binary::{BinaryData, BinaryError};
use super::shm_io::{self, RegionUse, SharedMemory};
use crate::error::ApiError;

/// The request body; unknown fields are ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InferRequest {
    /// Echoed in the response, so a client can match answers to requests.
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    /// The outputs wanted, and how; all of them as JSON when left out.
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
    /// `binary_data_output`: every output as binary data unless it says
    /// otherwise; `timeout`: the client's deadline in microseconds.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct InputTensor {
    /// The model's input name, as its metadata lists it.
    pub name: String,
    /// `FP32`, `UINT8`, `BYTES`, ...
    pub datatype: String,
    /// Signed so that a `-1` gets a message about dimensions, not about JSON.
    pub shape: Vec<i64>,
    /// The elements, row-major, flat or nested (strings for BYTES).
    #[schema(value_type = Option<Vec<Value>>)]
    pub data: Option<Value>,
    /// `binary_data_size`: the bytes are in the binary part of the body;
    /// `shared_memory_region` (+ `_byte_size`, `_offset`): in a region.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data`, `classification` (top k as strings), or
    /// `shared_memory_region` (+ `_byte_size`, `_offset`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

pub use crate::error::invalid;

pub fn binary_error(e: BinaryError) -> ApiError {
    invalid("body", e.to_string())
}

/// Where an input's elements are.
pub enum Source {
    Json(Value),
    /// Raw little-endian bytes: binary data, or copied out of a region.
    Raw(Bytes),
}

/// A v2 request read and checked once, at the edge: everything a model
/// kind's plan needs, and nothing it must parse again.
pub struct ValidRequest<'a> {
    /// The client's `id`, echoed in the answer.
    pub id: Option<String>,
    /// `parameters.timeout` (microseconds in the request), if given.
    pub timeout: Option<Duration>,
    pub inputs: Vec<InputTensor>,
    /// The outputs asked for, each with its delivery (regions resolved).
    pub outputs: Vec<OutputRequest>,
    /// How outputs the request does not list are delivered.
    pub default: Delivery,
    /// Each input's data: JSON, binary data, or a region.
    pub data: InputData<'a>,
}

impl<'a> ValidRequest<'a> {
    /// Parses the JSON header and checks the request-wide parameters;
    /// `binary` is the data after the header.
    pub fn read(json: &[u8], binary: BinaryData, shm: SharedMemory<'a>, max_unsized_region: u64) -> Result<Self, ApiError> {
        let request: InferRequest =
            serde_json::from_slice(json).map_err(|e| invalid("body", format!("not an inference request: {e}")))?;
        Self::check(request, binary, shm, max_unsized_region)
    }

    /// Checks a request already parsed by its transport: REST's JSON
    /// (above), or gRPC's protobuf ([`crate::grpc::convert`]), which puts
    /// raw contents in `binary` and names them with `binary_data_size`.
    pub fn check(request: InferRequest, binary: BinaryData, shm: SharedMemory<'a>, max_unsized_region: u64) -> Result<Self, ApiError> {
        let timeout = client_timeout(&request.parameters)?;
        let default_binary = flag(&request.parameters, "parameters", "binary_data_output")?.unwrap_or(false);
        let outputs = output_requests(&request.outputs, default_binary, &shm)?;
        let default = if default_binary { Delivery::Binary } else { Delivery::Json };
        let data = InputData::new(binary, shm, max_unsized_region);
        Ok(ValidRequest { id: request.id, timeout, inputs: request.inputs, outputs, default, data })
    }
}

/// Hands out each input's source, consuming the binary data in input
/// order and holding every region used until the answer is written.
pub struct InputData<'a> {
    binary: BinaryData,
    shm: SharedMemory<'a>,
    regions: Vec<RegionUse>,
    /// Most bytes copied out of a region for an input of no fixed size
    /// (the body limit: a region is no way around it).
    max_unsized_region: u64,
}

impl<'a> InputData<'a> {
    pub fn new(binary: BinaryData, shm: SharedMemory<'a>, max_unsized_region: u64) -> Self {
        Self { binary, shm, regions: Vec::new(), max_unsized_region }
    }

    /// JSON `data`, `parameters.binary_data_size` bytes, or a region:
    /// exactly one of them. `want`: the bytes the input's shape needs, when
    /// fixed; a region's size is checked against it (or against the limit
    /// for inputs of no fixed size) before anything is copied, since a
    /// client's region may be far larger than memory.
    pub fn source(&mut self, input: &mut InputTensor, want: Option<u64>) -> Result<Source, ApiError> {
        let name = input.name.as_str();
        let region = shm_io::region_of(&self.shm, "inputs", name, &input.parameters)?;
        let binary_size = input.parameters.get("binary_data_size");
        match (input.data.take(), binary_size, region) {
            (Some(data), None, None) => Ok(Source::Json(data)),
            (None, Some(size), None) => {
                let size = size.as_u64().ok_or_else(|| {
                    invalid("inputs", format!("{name}.parameters.binary_data_size is {size}; expected a byte count"))
                })?;
                Ok(Source::Raw(self.binary.take(name, size).map_err(binary_error)?))
            }
            (None, None, Some(region)) => {
                let size = region.byte_size();
                match want {
                    Some(want) if size != want => {
                        let (shape, datatype) = (&input.shape, &input.datatype);
                        return Err(invalid("inputs", format!("{name} has {size} bytes of data; shape {shape:?} of {datatype} needs {want}")));
                    }
                    None if size > self.max_unsized_region => {
                        let limit = self.max_unsized_region;
                        return Err(invalid("inputs", format!("{name}.parameters.shared_memory_byte_size is {size}, over the {limit}-byte limit")));
                    }
                    _ => {}
                }
                let bytes = region.read().map_err(|e| invalid("inputs", format!("{name}: {e}")))?;
                self.regions.push(region);
                Ok(Source::Raw(Bytes::from(bytes)))
            }
            (None, None, None) => Err(invalid(
                "inputs",
                format!("{name}.data is missing (or parameters.binary_data_size or shared_memory_region)"),
            )),
            _ => Err(invalid(
                "inputs",
                format!("{name} gives more than one of data, parameters.binary_data_size and shared_memory_region; expected one"),
            )),
        }
    }

    /// Every binary byte must belong to some input. The regions the inputs
    /// came from, to hold until the answer is written.
    pub fn finish(self) -> Result<Vec<RegionUse>, ApiError> {
        self.binary.finish().map_err(binary_error)?;
        Ok(self.regions)
    }
}

/// How an output's data goes back to the client.
#[derive(Debug)]
pub enum Delivery {
    /// `data` in the JSON answer.
    Json,
    /// Raw bytes after the JSON header (the binary tensor data extension).
    Binary,
    /// Written into the client's region; the answer names the region.
    SharedMemory(RegionUse),
}

/// One output the client asked for.
#[derive(Debug)]
pub struct OutputRequest {
    pub name: String,
    /// `parameters.classification`: the top k as "score:index:label" strings.
    pub classification: Option<u64>,
    pub delivery: Delivery,
}

/// The request's outputs, checked for duplicates and well-formed
/// parameters; names are the model's to check. Regions are resolved now,
/// so that an unknown or too small region fails before the model runs.
fn output_requests(outputs: &[RequestedOutput], default_binary: bool, shm: &SharedMemory) -> Result<Vec<OutputRequest>, ApiError> {
    let mut requests: Vec<OutputRequest> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let name = output.name.as_str();
        if requests.iter().any(|r| r.name == name) {
            return Err(invalid("outputs", format!("output {name:?} is requested twice")));
        }
        let classification = match output.parameters.get("classification") {
            None => None,
            Some(k) => Some(k.as_u64().filter(|&k| k >= 1).ok_or_else(|| {
                invalid("outputs", format!("{name}.parameters.classification is {k}; expected an integer of 1 or more"))
            })?),
        };
        let binary = flag(&output.parameters, "outputs", "binary_data")?.unwrap_or(default_binary);
        let delivery = match shm_io::region_of(shm, "outputs", name, &output.parameters)? {
            Some(region) => Delivery::SharedMemory(region),
            None if binary => Delivery::Binary,
            None => Delivery::Json,
        };
        requests.push(OutputRequest { name: name.to_string(), classification, delivery });
    }
    Ok(requests)
}

/// An output going into a region must fit it: checked before the model
/// runs, so that a too small region costs no inference. (Classification
/// strings have no size known in advance; their write is checked instead.)
pub fn check_fits(name: &str, delivery: &Delivery, needed: u64) -> Result<(), ApiError> {
    match delivery {
        Delivery::SharedMemory(region) if region.byte_size() < needed => Err(invalid(
            "outputs",
            format!("{name} needs {needed} bytes but its shared_memory_byte_size is {}", region.byte_size()),
        )),
        _ => Ok(()),
    }
}

fn flag(parameters: &Map<String, Value>, field: &'static str, key: &str) -> Result<Option<bool>, ApiError> {
    match parameters.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(field, format!("parameters.{key} is {other}; expected true or false"))),
    }
}

/// `parameters.timeout`, in microseconds as Triton's clients send it.
pub fn client_timeout(parameters: &Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    match parameters.get("timeout") {
        None => Ok(None),
        Some(t) => match t.as_u64() {
            Some(us) => Ok(Some(Duration::from_micros(us))),
            None => Err(invalid("parameters", format!("parameters.timeout is {t}; expected microseconds, an integer >= 0"))),
        },
    }
}

/// The batch size from a shape of [n, rest...], when `rest` is one of
/// `items` and 1 <= n <= max_batch_size.
pub fn batch_size(shape: &[i64], items: &[&[i64]], max_batch_size: u32) -> Option<usize> {
    let (&n, tail) = shape.split_first()?;
    (items.contains(&tail) && n >= 1 && n <= i64::from(max_batch_size)).then_some(n as usize)
}

/// A body read as the infer route reads it (JSON header, then `data` as
/// binary data), for the validation tests of each model kind.
#[cfg(test)]
pub(crate) fn read_for_test(body: Value, data: &'static [u8]) -> Result<ValidRequest<'static>, ApiError> {
    let json = body.to_string();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(super::binary::HEADER_LENGTH, json.len().into());
    let (json, binary) = super::binary::split_body(&headers, Bytes::from([json.as_bytes(), data].concat())).expect("a header inside the body");
    ValidRequest::read(&json, binary, SharedMemory::disabled(), u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A region of `size` bytes registered as "r" (the object goes with the Shmem).
    fn registered(size: usize) -> (shared_memory::Shmem, crate::system_shm::Registry) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let key = format!("/gateway-request-test.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let object = shared_memory::ShmemConf::new().os_id(&key).size(size).create().expect("creating a test object");
        let registry = crate::system_shm::Registry::default();
        registry.register("r", &key, 0, size as u64).unwrap();
        (object, registry)
    }

    fn region_input(byte_size: u64) -> InputTensor {
        let body = json!({"name": "x", "datatype": "FP32", "shape": [1, 2],
            "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": byte_size}});
        serde_json::from_value(body).unwrap()
    }

    fn no_binary() -> BinaryData {
        super::super::binary::split_body(&axum::http::HeaderMap::new(), Bytes::new()).unwrap().1
    }

    #[test]
    fn a_region_is_sized_before_it_is_copied() {
        let (_object, registry) = registered(4096);
        let mut data = InputData::new(no_binary(), SharedMemory(Some(&registry)), 1024);
        // The size the shape needs is checked before the copy, not after:
        // a client's region may be far larger than any body.
        match data.source(&mut region_input(4096), Some(8)) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("x has 4096 bytes of data; shape [1, 2] of FP32 needs 8"), "{problem}"),
            other => panic!("expected a 400, got {}", other.is_ok()),
        }
        // An input of no fixed size (encoded images) may be no larger than a body.
        match data.source(&mut region_input(2048), None) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("2048") && problem.contains("1024"), "{problem}"),
            other => panic!("expected a 400, got {}", other.is_ok()),
        }
        assert!(matches!(data.source(&mut region_input(8), Some(8)), Ok(Source::Raw(b)) if b.len() == 8));
        assert!(matches!(data.source(&mut region_input(1024), None), Ok(Source::Raw(b)) if b.len() == 1024));
        assert_eq!(data.finish().unwrap().len(), 2, "only the regions read are held");
    }

    #[test]
    fn the_timeout_is_in_microseconds() {
        assert_eq!(client_timeout(&Map::new()).unwrap(), None);
        let with = |t: Value| client_timeout(json!({"timeout": t}).as_object().unwrap());
        assert_eq!(with(json!(1500)).unwrap(), Some(Duration::from_micros(1500)));
        match with(json!(-1)) {
            Err(ApiError::InvalidRequest { problem, .. }) => assert!(problem.contains("parameters.timeout is -1; expected microseconds")),
            other => panic!("expected a 400, got {other:?}"),
        }
    }
}
