//! Protocol datatypes as libtorch element types, both ways.

use protocol::DataType;
use tch::Kind;

/// libtorch's element type for a protocol datatype.
pub fn kind_of(datatype: DataType) -> Kind {
    match datatype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp16 => Kind::Half,
        DataType::Bf16 => Kind::BFloat16,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
    }
}

/// The protocol datatype of a libtorch element type, if it has one.
pub fn datatype_of(kind: Kind) -> Option<DataType> {
    DataType::ALL.into_iter().find(|&d| kind_of(d) == kind)
}

/// Whether a kind is a floating dtype: what a half-precision model may be
/// given and may return in place of the dtype model.toml declares.
pub fn is_floating(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16)
}
