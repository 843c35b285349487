//! Open Inference Protocol tensors at the byte level: datatype names,
//! shapes, and JSON `data` (flat or nested) flattened into bytes.
//!
//! Plain functions with no HTTP in them, so that every client mistake is a
//! [`TensorError`] the caller maps to a 400, and all of it is unit-tested.

use serde_json::Value;
use thiserror::Error;

/// The datatypes the protocol names. Only UINT8, FP32 and BYTES are used by
/// the classifier, but a known name in the wrong place deserves a "wrong
/// datatype" message rather than "unknown datatype".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

const NAMES: [(Datatype, &str); 14] = [
    (Datatype::Bool, "BOOL"),
    (Datatype::Uint8, "UINT8"),
    (Datatype::Uint16, "UINT16"),
    (Datatype::Uint32, "UINT32"),
    (Datatype::Uint64, "UINT64"),
    (Datatype::Int8, "INT8"),
    (Datatype::Int16, "INT16"),
    (Datatype::Int32, "INT32"),
    (Datatype::Int64, "INT64"),
    (Datatype::Fp16, "FP16"),
    (Datatype::Bf16, "BF16"),
    (Datatype::Fp32, "FP32"),
    (Datatype::Fp64, "FP64"),
    (Datatype::Bytes, "BYTES"),
];

impl Datatype {
    /// The protocol's names are upper case and exact.
    pub fn parse(name: &str) -> Result<Datatype, TensorError> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(d, _)| *d).ok_or_else(|| TensorError::UnknownDatatype(name.into()))
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(d, _)| *d == self).map_or("?", |(_, n)| n)
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
    #[error("element {index} is {found}; UINT8 elements are integers from 0 to 255")]
    NotUint8 { index: usize, found: String },
    #[error("has {found} elements; shape {shape:?} needs {want}")]
    CountMismatch { found: u64, want: u64, shape: Vec<i64> },
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

/// UINT8 `data` in row-major order: the protocol allows the flat form and
/// the nested one, and any mix of nesting depths flattens the same way.
pub fn flatten_uint8(data: &Value) -> Result<Vec<u8>, TensorError> {
    let mut out = Vec::new();
    push_uint8(data, &mut out)?;
    Ok(out)
}

/// Recursion depth is bounded by serde_json's own nesting limit (128).
fn push_uint8(value: &Value, out: &mut Vec<u8>) -> Result<(), TensorError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| push_uint8(item, out)),
        Value::Number(n) => match n.as_u64().and_then(|v| u8::try_from(v).ok()) {
            Some(byte) => {
                out.push(byte);
                Ok(())
            }
            None => Err(TensorError::NotUint8 { index: out.len(), found: n.to_string() }),
        },
        other => Err(TensorError::NotUint8 { index: out.len(), found: short(other) }),
    }
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

    #[test]
    fn datatype_names_round_trip_and_are_exact() {
        for (d, name) in NAMES {
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
        assert_eq!(flatten_uint8(&json!([0, 255, 256])), Err(TensorError::NotUint8 { index: 2, found: "256".into() }));
        assert_eq!(flatten_uint8(&json!([[1], [-1]])), Err(TensorError::NotUint8 { index: 1, found: "-1".into() }));
        assert_eq!(flatten_uint8(&json!([1.5])), Err(TensorError::NotUint8 { index: 0, found: "1.5".into() }));
        assert_eq!(flatten_uint8(&json!(["a"])), Err(TensorError::NotUint8 { index: 0, found: "\"a\"".into() }));
        let long = "x".repeat(1000);
        let Err(TensorError::NotUint8 { found, .. }) = flatten_uint8(&json!([long])) else { panic!("accepted a string") };
        assert!(found.len() < 50, "{found}");
    }

    #[test]
    fn counts_must_match_the_shape() {
        assert_eq!(check_count(6, &[2, 3]), Ok(()));
        assert_eq!(check_count(5, &[2, 3]), Err(TensorError::CountMismatch { found: 5, want: 6, shape: vec![2, 3] }));
        assert!(check_count(1, &[-2]).is_err());
    }
}
