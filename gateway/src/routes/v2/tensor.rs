//! Open Inference Protocol tensors at the byte level: datatype names,
//! shapes, and JSON `data` (flat or nested) flattened into bytes.
//!
//! Plain functions with no HTTP in them, so that every client mistake is a
//! [`TensorError`] the caller maps to a 400, and all of it is unit-tested.

use half::{bf16, f16};
use protocol::DataType;
use serde_json::Value;
use thiserror::Error;

/// The datatypes the protocol names: the ones a model can take
/// ([`DataType`], whose names are the single source), and the rest, which
/// the classifier uses (BYTES) or which deserve a "wrong datatype" message
/// rather than "unknown datatype" (UINT16..UINT64, which libtorch lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Tensor(DataType),
    Uint16,
    Uint32,
    Uint64,
    Bytes,
}

/// The names that are not [`DataType`]s.
const OTHER_NAMES: [(Datatype, &str); 4] =
    [(Datatype::Uint16, "UINT16"), (Datatype::Uint32, "UINT32"), (Datatype::Uint64, "UINT64"), (Datatype::Bytes, "BYTES")];

impl Datatype {
    /// The protocol's names are upper case and exact.
    pub fn parse(name: &str) -> Result<Datatype, TensorError> {
        DataType::from_name(name)
            .map(Datatype::Tensor)
            .or_else(|| OTHER_NAMES.iter().find(|(_, n)| *n == name).map(|(d, _)| *d))
            .ok_or_else(|| TensorError::UnknownDatatype(name.into()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Datatype::Tensor(d) => d.name(),
            other => OTHER_NAMES.iter().find(|(d, _)| *d == other).map_or("?", |(_, n)| n),
        }
    }

    /// The element type a model can take, if it is one.
    pub fn tensor(self) -> Option<DataType> {
        match self {
            Datatype::Tensor(d) => Some(d),
            _ => None,
        }
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum TensorError {
    #[error("unknown datatype {0:?} (the protocol's names are BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64, BYTES)")]
    UnknownDatatype(String),
    #[error("dimension {index} is {value}; dimensions must be 0 or more")]
    NegativeDimension { index: usize, value: i64 },
    #[error("shape {0:?} has more elements than fit in 64 bits")]
    TooManyElements(Vec<i64>),
    #[error("has {found} elements; shape {shape:?} needs {want}")]
    CountMismatch { found: u64, want: u64, shape: Vec<i64> },
    #[error("element {index} is {found}; {datatype} elements are {expected}")]
    WrongElement { index: usize, found: String, datatype: &'static str, expected: &'static str },
}

/// How many elements a shape holds, refusing negative dimensions and
/// products that overflow (a client can send `[4294967296, 4294967296, 2]`).
pub fn element_count(shape: &[i64]) -> Result<u64, TensorError> {
    let mut dims = Vec::with_capacity(shape.len());
    for (index, &value) in shape.iter().enumerate() {
        dims.push(u64::try_from(value).map_err(|_| TensorError::NegativeDimension { index, value })?);
    }
    // A zero anywhere empties the tensor, whatever came before it.
    if dims.contains(&0) {
        return Ok(0);
    }
    dims.iter().try_fold(1u64, |count, &dim| count.checked_mul(dim)).ok_or_else(|| TensorError::TooManyElements(shape.to_vec()))
}

/// `data` of any tensor datatype in row-major order, as the little-endian
/// bytes the model takes: the protocol allows the flat form and the nested
/// one, and any mix of nesting depths flattens the same way (recursion is
/// bounded by serde_json's own nesting limit, 128). Integers must fit
/// their type; floats must stay finite in theirs; BOOL takes true/false.
pub fn flatten_typed(datatype: DataType, data: &Value) -> Result<Vec<u8>, TensorError> {
    let mut out = Vec::new();
    let mut index = 0;
    push_typed(datatype, data, &mut out, &mut index)?;
    Ok(out)
}

fn push_typed(datatype: DataType, value: &Value, out: &mut Vec<u8>, index: &mut usize) -> Result<(), TensorError> {
    if let Value::Array(items) = value {
        return items.iter().try_for_each(|item| push_typed(datatype, item, out, index));
    }
    let wrong = |expected| TensorError::WrongElement { index: *index, found: short(value), datatype: datatype.name(), expected };
    let int = |min: i128, max: i128| -> Result<i128, TensorError> {
        let v = value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from));
        v.filter(|v| (min..=max).contains(v)).ok_or_else(|| wrong(int_range(datatype)))
    };
    let float = || value.as_f64().ok_or_else(|| wrong("numbers"));
    let finite = |ok: bool| if ok { Ok(()) } else { Err(wrong("numbers within the type's finite range")) };
    match datatype {
        DataType::Bool => out.push(u8::from(value.as_bool().ok_or_else(|| wrong("true or false"))?)),
        DataType::Uint8 => out.push(int(0, 255)? as u8),
        DataType::Int8 => out.extend((int(-128, 127)? as i8).to_le_bytes()),
        DataType::Int16 => out.extend((int(i16::MIN.into(), i16::MAX.into())? as i16).to_le_bytes()),
        DataType::Int32 => out.extend((int(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes()),
        DataType::Int64 => out.extend((int(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes()),
        DataType::Fp16 => {
            let v = f16::from_f64(float()?);
            finite(v.is_finite())?;
            out.extend(v.to_le_bytes());
        }
        DataType::Bf16 => {
            let v = bf16::from_f64(float()?);
            finite(v.is_finite())?;
            out.extend(v.to_le_bytes());
        }
        DataType::Fp32 => {
            let v = float()? as f32;
            finite(v.is_finite())?;
            out.extend(v.to_le_bytes());
        }
        DataType::Fp64 => out.extend(float()?.to_le_bytes()),
    }
    *index += 1;
    Ok(())
}

/// What an integer element of `datatype` must be, for error messages.
fn int_range(datatype: DataType) -> &'static str {
    match datatype {
        DataType::Uint8 => "integers from 0 to 255",
        DataType::Int8 => "integers from -128 to 127",
        DataType::Int16 => "integers from -32768 to 32767",
        DataType::Int32 => "integers from -2147483648 to 2147483647",
        DataType::Int64 => "integers from -9223372036854775808 to 9223372036854775807",
        _ => "numbers",
    }
}

/// Little-endian elements of `datatype` as a flat JSON array (the
/// protocol's `data`). FP16 and BF16 are written as the f32 they widen to.
pub fn to_json(datatype: DataType, raw: &[u8]) -> Value {
    let size = datatype.size() as usize;
    let elements = raw.chunks_exact(size);
    let values: Vec<Value> = match datatype {
        DataType::Bool => elements.map(|b| Value::Bool(b[0] != 0)).collect(),
        DataType::Uint8 => elements.map(|b| b[0].into()).collect(),
        DataType::Int8 => elements.map(|b| (b[0] as i8).into()).collect(),
        DataType::Int16 => elements.map(|b| i16::from_le_bytes([b[0], b[1]]).into()).collect(),
        DataType::Int32 => elements.map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")).into()).collect(),
        DataType::Int64 => elements.map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")).into()).collect(),
        DataType::Fp16 => elements.map(|b| float(f16::from_le_bytes([b[0], b[1]]).to_f32())).collect(),
        DataType::Bf16 => elements.map(|b| float(bf16::from_le_bytes([b[0], b[1]]).to_f32())).collect(),
        DataType::Fp32 => elements.map(|b| float(f32::from_le_bytes(b.try_into().expect("4 bytes")))).collect(),
        DataType::Fp64 => elements.map(|b| f64_value(f64::from_le_bytes(b.try_into().expect("8 bytes")))).collect(),
    };
    Value::Array(values)
}

/// Elements as f64, for ranking (the classification extension).
pub fn to_f64(datatype: DataType, raw: &[u8]) -> Vec<f64> {
    match to_json(datatype, raw) {
        Value::Array(values) => values.iter().map(|v| v.as_bool().map_or_else(|| v.as_f64().unwrap_or(f64::NAN), f64::from)).collect(),
        _ => Vec::new(),
    }
}

/// JSON has no NaN or infinity; a model that outputs one gets `null` there,
/// as serde_json writes it.
fn float(v: f32) -> Value {
    f64_value(f64::from(v))
}

fn f64_value(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A JSON value for an error message, cut so that a huge string is not echoed.
fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// Checks that `data` has exactly as many elements as `shape` asks for.
pub fn check_count(found: usize, shape: &[i64]) -> Result<(), TensorError> {
    let want = element_count(shape)?;
    if found as u64 != want {
        return Err(TensorError::CountMismatch { found: found as u64, want, shape: shape.to_vec() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flatten_uint8(data: &Value) -> Result<Vec<u8>, TensorError> {
        flatten_typed(DataType::Uint8, data)
    }

    /// What a UINT8 element out of range is.
    fn not_uint8(index: usize, found: String) -> TensorError {
        TensorError::WrongElement { index, found, datatype: "UINT8", expected: "integers from 0 to 255" }
    }

    #[test]
    fn datatype_names_round_trip_and_are_exact() {
        let tensors = DataType::ALL.map(|d| (Datatype::Tensor(d), d.name()));
        for (d, name) in tensors.into_iter().chain(OTHER_NAMES) {
            assert_eq!(Datatype::parse(name), Ok(d));
            assert_eq!(d.name(), name);
        }
        assert_eq!(Datatype::parse("uint8"), Err(TensorError::UnknownDatatype("uint8".into())));
        assert!(Datatype::parse("FLOAT32").is_err());
        assert!(Datatype::parse("").is_err());
    }

    #[test]
    fn shape_products_refuse_negatives_and_overflow() {
        assert_eq!(element_count(&[]), Ok(1));
        assert_eq!(element_count(&[2, 32, 32, 1]), Ok(2048));
        assert_eq!(element_count(&[0, 32]), Ok(0));
        assert_eq!(element_count(&[1, -1]), Err(TensorError::NegativeDimension { index: 1, value: -1 }));
        let huge = [4_294_967_296, 4_294_967_296, 2];
        assert_eq!(element_count(&huge), Err(TensorError::TooManyElements(huge.to_vec())));
        assert_eq!(element_count(&[i64::MAX, 2]), Ok(u64::MAX - 1));
        assert_eq!(element_count(&[i64::MAX, 3]), Err(TensorError::TooManyElements(vec![i64::MAX, 3])));
        // Zero anywhere makes the product zero, even after dimensions that overflow.
        assert_eq!(element_count(&[i64::MAX, i64::MAX, 0]), Ok(0));
    }

    #[test]
    fn nested_and_flat_data_flatten_alike() {
        let flat = json!([1, 2, 3, 4, 5, 6]);
        let nested = json!([[[1], [2]], [[3], [4]], [[5], [6]]]);
        let ragged = json!([1, [2, [3, [4]]], 5, [[6]]]);
        for data in [flat, nested, ragged] {
            assert_eq!(flatten_uint8(&data), Ok(vec![1, 2, 3, 4, 5, 6]), "{data}");
        }
        assert_eq!(flatten_uint8(&json!([])), Ok(vec![]));
        assert_eq!(flatten_uint8(&json!(7)), Ok(vec![7]));
    }

    #[test]
    fn non_uint8_elements_are_named_by_position() {
        assert_eq!(flatten_uint8(&json!([0, 255, 256])), Err(not_uint8(2, "256".into())));
        assert_eq!(flatten_uint8(&json!([[1], [-1]])), Err(not_uint8(1, "-1".into())));
        assert_eq!(flatten_uint8(&json!([1.5])), Err(not_uint8(0, "1.5".into())));
        assert_eq!(flatten_uint8(&json!(["a"])), Err(not_uint8(0, "\"a\"".into())));
        let long = "x".repeat(1000);
        let Err(TensorError::WrongElement { found, .. }) = flatten_uint8(&json!([long])) else { panic!("accepted a string") };
        assert!(found.len() < 50, "{found}");
    }

    #[test]
    fn every_datatype_parses_and_renders_back() {
        let cases = [
            (DataType::Bool, json!([true, [false]]), json!([true, false])),
            (DataType::Uint8, json!([0, 255]), json!([0, 255])),
            (DataType::Int8, json!([-128, 127]), json!([-128, 127])),
            (DataType::Int16, json!([-32768, 32767]), json!([-32768, 32767])),
            (DataType::Int32, json!([[-2147483648], [2147483647]]), json!([-2147483648i64, 2147483647])),
            (DataType::Int64, json!([i64::MIN, i64::MAX]), json!([i64::MIN, i64::MAX])),
            (DataType::Fp16, json!([1.5, -0.25]), json!([1.5, -0.25])),
            (DataType::Bf16, json!([2.0, -3.0]), json!([2.0, -3.0])),
            (DataType::Fp32, json!([0.5, 1e-3]), json!([0.5, 1e-3f32 as f64])),
            (DataType::Fp64, json!([0.1, -1e300]), json!([0.1, -1e300])),
        ];
        for (datatype, data, back) in cases {
            let raw = flatten_typed(datatype, &data).unwrap_or_else(|e| panic!("{datatype:?}: {e}"));
            assert_eq!(raw.len() as u64, 2 * datatype.size(), "{datatype:?}");
            assert_eq!(to_json(datatype, &raw), back, "{datatype:?}");
        }
        assert_eq!(flatten_typed(DataType::Int16, &json!([258])).unwrap(), vec![2, 1], "little-endian");
    }

    #[test]
    fn typed_elements_out_of_range_are_named() {
        let problem = |datatype, data: Value| flatten_typed(datatype, &data).unwrap_err().to_string();
        assert_eq!(problem(DataType::Int8, json!([1, 128])), "element 1 is 128; INT8 elements are integers from -128 to 127");
        assert!(problem(DataType::Int64, json!([1.5])).contains("INT64 elements are integers"));
        assert!(problem(DataType::Uint8, json!([-1])).contains("from 0 to 255"));
        assert!(problem(DataType::Bool, json!([1])).contains("BOOL elements are true or false"));
        assert!(problem(DataType::Fp16, json!([70000.0])).contains("finite range"));
        assert!(problem(DataType::Fp32, json!([1e39])).contains("finite range"));
        assert!(problem(DataType::Fp64, json!(["1"])).contains("FP64 elements are numbers"));
    }

    #[test]
    fn counts_must_match_the_shape() {
        assert_eq!(check_count(6, &[2, 3]), Ok(()));
        assert_eq!(check_count(5, &[2, 3]), Err(TensorError::CountMismatch { found: 5, want: 6, shape: vec![2, 3] }));
        assert!(check_count(1, &[-2]).is_err());
    }
}
