//! Encoded images (PNG, JPEG, WebP) as a BYTES input: one image per batch
//! element, raw bytes only (binary data or a region: JSON strings cannot
//! carry them faithfully), decoded and resized by the gateway into a
//! model's pixel input: the classifier's `IMAGE`, or a tensor model's
//! UINT8 [height, width, channels] input.

use bytes::Bytes;
use protocol::{DataType, TensorSpec};

use super::binary::bytes_elements;
use super::request::{InputData, InputTensor, Source, batch_size, invalid};
use crate::decode::{Target, decode_to_input};
use crate::error::ApiError;

/// The pixel layout a tensor model's input takes, if it looks like one:
/// UINT8 [height, width, channels] with 1 (gray) or 3 (RGB) channels.
pub fn pixel_target(spec: &TensorSpec) -> Option<Target> {
    match (spec.datatype, spec.dims.as_slice()) {
        (DataType::Uint8, &[h, w, c]) if c == 1 || c == 3 => {
            Some(Target { height: u32::try_from(h).ok()?, width: u32::try_from(w).ok()?, channels: c as u32 })
        }
        _ => None,
    }
}

/// The encoded images of BYTES input `name`, shape [n] or [n, 1] with
/// 1 <= n <= max_batch_size. `instead`: what else the client could send,
/// for the message when it tried JSON.
pub fn encoded(input: &mut InputTensor, name: &str, max_batch_size: u32, data: &mut InputData, instead: &str) -> Result<Vec<Bytes>, ApiError> {
    let Some(n) = batch_size(&input.shape, &[&[], &[1]], max_batch_size) else {
        return Err(invalid("inputs", format!("{name}.shape is {:?}; expected [n] with n from 1 to {max_batch_size}", input.shape)));
    };
    let raw = match data.source(input, None)? {
        Source::Raw(raw) => raw,
        Source::Json(_) => {
            return Err(invalid(
                "inputs",
                format!(
                    "{name} as BYTES takes encoded images as raw bytes, which JSON data cannot carry; send them as binary data \
                     (Inference-Header-Content-Length, parameters.binary_data_size) or send {instead}"
                ),
            ));
        }
    };
    let elements = bytes_elements(raw).map_err(|e| invalid("inputs", format!("{name}: {e}")))?;
    if elements.len() != n {
        return Err(invalid("inputs", format!("{name} has {} elements; shape {:?} needs {n}", elements.len(), input.shape)));
    }
    Ok(elements)
}

/// Decodes on the blocking pool, like `/v1/.../predict`; a corrupt image is
/// a 400 and an oversized one a 413, as there.
pub async fn decode_all(images: Vec<Bytes>, target: Target, max_pixels: u64, name: &str) -> Result<Vec<Vec<u8>>, ApiError> {
    let name = name.to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, bytes)| match image::guess_format(bytes) {
                Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP)) => {
                    decode_to_input(bytes, f, target, max_pixels).map_err(ApiError::from)
                }
                _ => Err(invalid("inputs", format!("{name} element {i} is not a PNG, JPEG or WebP image"))),
            })
            .collect::<Result<Vec<_>, _>>()
    });
    decoded.await.map_err(|e| ApiError::Internal(format!("decode task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_inputs_are_uint8_hwc_with_one_or_three_channels() {
        let spec = |datatype, dims: &[u64]| TensorSpec { name: "x".into(), datatype, dims: dims.to_vec() };
        let t = pixel_target(&spec(DataType::Uint8, &[32, 24, 3])).unwrap();
        assert_eq!((t.height, t.width, t.channels), (32, 24, 3));
        assert!(pixel_target(&spec(DataType::Uint8, &[8, 8, 1])).is_some());
        assert!(pixel_target(&spec(DataType::Uint8, &[3, 32, 32])).is_none(), "CHW is not a decoded image");
        assert!(pixel_target(&spec(DataType::Fp32, &[32, 32, 3])).is_none());
        assert!(pixel_target(&spec(DataType::Uint8, &[32, 32])).is_none());
    }
}
