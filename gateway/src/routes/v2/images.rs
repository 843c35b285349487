//! Encoded images (PNG, JPEG, WebP) as a BYTES input: one image per batch
//! element, raw bytes only (binary data or a region: JSON strings cannot
//! carry them faithfully), decoded and resized by the gateway into a
//! model's pixel input: the classifier's `IMAGE`, or a tensor model's
//! UINT8 [height, width, channels] input. A classifier's host that decodes
//! JPEGs on its GPU gets those it takes as they are, as `/v1/.../predict`
//! sends them ([`prepare_all`]).

use bytes::Bytes;
use protocol::{DataType, HostDecode, Payload, TensorSpec};

use super::binary::bytes_elements;
use super::request::{InputData, InputTensor, Source, batch_size, invalid};
use crate::decode::host_side::send_to_host;
use crate::decode::{Target, decode_to_input, decodes_in_place};
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

/// Decodes as `/v1/.../predict` does; a corrupt image is a 400 and an
/// oversized one a 413, as there.
pub async fn decode_all(images: Vec<Bytes>, target: Target, max_pixels: u64, name: &str) -> Result<Vec<Vec<u8>>, ApiError> {
    let prepared = prepare_all(images, target, max_pixels, None, name).await?;
    Ok(prepared.into_iter().map(|p| p.bytes.into()).collect())
}

/// One element as it goes into its slot.
#[derive(Debug, PartialEq)]
pub struct Prepared {
    /// The model's input pixels, or the JPEG itself (`payload` says which).
    pub bytes: Bytes,
    pub payload: Payload,
}

/// Each image ready for the host: decoded and resized here, or, for a host
/// that offers to decode (`offer`), a JPEG it takes as it is, with its
/// EXIF orientation (see [`send_to_host`]). On the blocking pool, unless
/// the request is one small JPEG ([`decodes_in_place`], as on
/// `/v1/.../predict`).
pub async fn prepare_all(images: Vec<Bytes>, target: Target, max_pixels: u64, offer: Option<HostDecode>, name: &str) -> Result<Vec<Prepared>, ApiError> {
    if let [image] = images.as_slice()
        && decodes_in_place(image)
    {
        return Ok(vec![prepare(image.clone(), target, max_pixels, offer.as_ref(), name, 0)?]);
    }
    let name = name.to_string();
    let prepared = tokio::task::spawn_blocking(move || {
        images.into_iter().enumerate().map(|(i, bytes)| prepare(bytes, target, max_pixels, offer.as_ref(), &name, i)).collect::<Result<Vec<_>, _>>()
    });
    prepared.await.map_err(|e| ApiError::Internal(format!("decode task: {e}")))?
}

fn prepare(bytes: Bytes, target: Target, max_pixels: u64, offer: Option<&HostDecode>, name: &str, i: usize) -> Result<Prepared, ApiError> {
    let format = match image::guess_format(&bytes) {
        Ok(f @ (image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP)) => f,
        _ => return Err(invalid("inputs", format!("{name} element {i} is not a PNG, JPEG or WebP image"))),
    };
    if let (image::ImageFormat::Jpeg, Some(offer)) = (format, offer)
        && let Some(to_host) = send_to_host(&bytes, offer, max_pixels)?
    {
        let len = bytes.len() as u32;
        return Ok(Prepared { bytes, payload: Payload::Jpeg { len, orientation: to_host.orientation } });
    }
    let pixels = decode_to_input(&bytes, format, target, max_pixels)?;
    Ok(Prepared { bytes: pixels.into(), payload: Payload::Input })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(format: image::ImageFormat) -> Bytes {
        let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 15, y as u8 * 20, 90])));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner().into()
    }

    #[test]
    fn a_jpeg_goes_to_a_host_that_offers_to_decode_it_and_the_rest_are_decoded_here() {
        let target = Target { width: 4, height: 4, channels: 3 };
        let offer = |policy| HostDecode { policy, max_bytes: 1 << 20, max_pixels: 1 << 20 };
        let always = offer(protocol::DecodePolicy::Always);
        let (jpeg, png) = (encoded(image::ImageFormat::Jpeg), encoded(image::ImageFormat::Png));

        let sent = prepare(jpeg.clone(), target, 1 << 20, Some(&always), "IMAGE", 0).unwrap();
        assert_eq!(sent, Prepared { bytes: jpeg.clone(), payload: Payload::Jpeg { len: jpeg.len() as u32, orientation: 1 } });

        let pixels = |p: Prepared| (p.payload, p.bytes.len());
        assert_eq!(pixels(prepare(jpeg.clone(), target, 1 << 20, None, "IMAGE", 0).unwrap()), (Payload::Input, 48), "no offer");
        let large_only = offer(protocol::DecodePolicy::Auto { min_pixels: 1_000_000 });
        assert_eq!(pixels(prepare(jpeg, target, 1 << 20, Some(&large_only), "IMAGE", 0).unwrap()), (Payload::Input, 48), "under auto's size");
        assert_eq!(pixels(prepare(png, target, 1 << 20, Some(&always), "IMAGE", 0).unwrap()), (Payload::Input, 48), "not a JPEG");
        let e = prepare(Bytes::from_static(b"GIF89a"), target, 1 << 20, Some(&always), "IMAGE", 3).unwrap_err();
        assert!(e.to_string().contains("IMAGE element 3"), "{e}");
    }

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
