//! Tensor models: what a model that takes and gives named tensors looks
//! like to both sides, and where each tensor lives in a slot.
//!
//! One slot holds one batch item (the host batches items across requests):
//!
//! ```text
//! gateway writes:  | input 0 | pad | input 1 | pad | ...      (config order)
//! host overwrites: | output 0 | pad | output 1 | pad | ...    (config order)
//! ```
//! Each tensor starts at a multiple of [`TENSOR_ALIGN`], little-endian,
//! row-major. The host has copied the inputs out before it writes the
//! outputs, and writes them before it answers; the gateway reads them while
//! handling that answer, before any later message could lease the slot to
//! another request, so the overwrite never races.

use serde::{Deserialize, Serialize};

/// Every tensor in a slot starts at a multiple of this (one cache line).
pub const TENSOR_ALIGN: u64 = 64;
/// Most inputs or outputs a tensor model may declare.
pub const MAX_TENSORS: usize = 64;
/// Most dimensions (besides the batch one) a tensor may have.
pub const MAX_DIMS: usize = 8;

/// The element types a TorchScript model can take or give, by the Open
/// Inference Protocol's names. (BYTES has no tensor form in libtorch; the
/// gateway uses it only for encoded images.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    Bool,
    Uint8,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
}

impl DataType {
    pub const ALL: [DataType; 10] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
    ];

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }

    /// The protocol's name ("FP32"), as in model configs and requests.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    pub fn from_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// One named input or output of one batch item: the batch dimension is
/// not in `dims` (the model sees `[batch, dims...]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Fixed sizes, each >= 1.
    pub dims: Vec<u64>,
}

impl TensorSpec {
    pub fn element_count(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of one batch item of this tensor.
    pub fn byte_size(&self) -> u64 {
        self.element_count() * self.datatype.size()
    }
}

/// A tensor model's inputs and outputs, in config order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Where one tensor lies in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub len: u64,
}

impl Placement {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
}

/// Back-to-back placements, each aligned.
fn place(specs: &[TensorSpec]) -> Vec<Placement> {
    let mut at = 0;
    specs
        .iter()
        .map(|s| {
            let p = Placement { offset: at, len: s.byte_size() };
            at = aligned_end(at, p.len);
            p
        })
        .collect()
}

/// The bytes `place` spans, without building the placements (the gateway
/// asks for this on every answer).
fn span(specs: &[TensorSpec]) -> u64 {
    specs.iter().fold(0, |at, s| aligned_end(at, s.byte_size()))
}

fn aligned_end(offset: u64, len: u64) -> u64 {
    (offset + len).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
}

impl TensorSignature {
    /// Where each input goes in a slot, in `inputs` order.
    pub fn input_placements(&self) -> Vec<Placement> {
        place(&self.inputs)
    }

    /// Where the host puts each output, in `outputs` order.
    pub fn output_placements(&self) -> Vec<Placement> {
        place(&self.outputs)
    }

    /// Bytes of a slot's inputs (with alignment padding).
    pub fn input_bytes(&self) -> u64 {
        span(&self.inputs)
    }

    /// Bytes of a slot's outputs (with alignment padding).
    pub fn output_bytes(&self) -> u64 {
        span(&self.outputs)
    }

    /// The slot size a tensor model needs: room for either side.
    pub fn slot_bytes(&self) -> u64 {
        self.input_bytes().max(self.output_bytes()).max(1)
    }

    pub fn input(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.inputs.iter().enumerate().find(|(_, s)| s.name == name)
    }

    pub fn output(&self, name: &str) -> Option<(usize, &TensorSpec)> {
        self.outputs.iter().enumerate().find(|(_, s)| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, dims: &[u64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, dims: dims.to_vec() }
    }

    #[test]
    fn names_round_trip_and_sizes() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_name(d.name()), Some(d));
        }
        assert_eq!(DataType::from_name("fp32"), None);
        assert_eq!(DataType::from_name("BYTES"), None);
        assert_eq!(DataType::Bf16.size(), 2);
        assert_eq!(DataType::Fp64.size(), 8);
    }

    #[test]
    fn placements_are_aligned_and_disjoint() {
        let sig = TensorSignature {
            inputs: vec![spec("a", DataType::Fp32, &[3, 5]), spec("b", DataType::Bool, &[1]), spec("c", DataType::Int64, &[2])],
            outputs: vec![spec("y", DataType::Fp16, &[1000])],
        };
        let p = sig.input_placements();
        assert_eq!(p, vec![
            Placement { offset: 0, len: 60 },
            Placement { offset: 64, len: 1 },
            Placement { offset: 128, len: 16 },
        ]);
        assert_eq!(sig.input_bytes(), 192);
        assert_eq!(sig.output_placements(), vec![Placement { offset: 0, len: 2000 }]);
        assert_eq!(sig.output_bytes(), 2048);
        assert_eq!(sig.slot_bytes(), 2048);
        assert_eq!(sig.input("b").map(|(i, _)| i), Some(1));
        assert!(sig.output("nope").is_none());
    }
}
