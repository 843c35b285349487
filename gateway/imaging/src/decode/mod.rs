//! Encoded image -> the model's input pixels (uint8, height x width x
//! channels), on the CPU.
//!
//! The pixel count is checked from the image header before any pixel
//! memory exists, and the decoder runs under allocation limits, so a small
//! file that claims 50000x50000 pixels costs nothing.
//!
//! JPEG goes through [`jpeg`]: libjpeg-turbo decodes only as many pixels
//! as the model's input needs (DCT-domain scaling); CMYK JPEGs, PNG and
//! WebP go through the `image` crate.
//!
//! EXIF orientation is applied before the resize, so a phone photo taken
//! sideways reaches the model upright.
//!
//! A host that decodes JPEGs on its GPU may be sent the file instead
//! ([`host_side`]); only its header is read here then.
//!
//! Alpha: a transparent background is filled with whatever contrasts with
//! the opaque pixels (white under dark ink, black under light ink), so
//! "black digit on transparent" and "white digit on transparent" both work.

pub mod host_side;
pub mod jpeg;

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use thiserror::Error;

/// The model's input, as the host described it in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub width: u32,
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u32,
}

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("not a valid {format} image: {detail}")]
    Corrupt { format: &'static str, detail: String },
    #[error("image of {width}x{height} pixels is over the {limit}-pixel limit")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
}

pub fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        _ => "image",
    }
}

/// Decodes `bytes` as `format`, turns it upright (EXIF orientation) and
/// resizes to `target`.
pub fn decode_to_input(bytes: &[u8], format: ImageFormat, target: Target, max_pixels: u64) -> Result<Vec<u8>, DecodeError> {
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: format_name(format), detail: e.to_string() };
    let (decoder, orientation) = open_checked(bytes, format, max_pixels)?;
    let scaled = match format {
        ImageFormat::Jpeg => jpeg::decode_scaled(bytes, stored_size_for(target, orientation), target.channels)
            .map_err(|detail| DecodeError::Corrupt { format: "JPEG", detail })?,
        _ => None,
    };
    let (flat, (width, height)) = match scaled {
        Some(jpeg::Decoded { pixels, width, height }) => {
            let image = match target.channels {
                1 => image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
                _ => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
            };
            let image = image.ok_or_else(|| DecodeError::Corrupt { format: "JPEG", detail: "decoded buffer size".into() })?;
            upright(image, orientation, target.channels)
        }
        None => upright(DynamicImage::from_decoder(decoder).map_err(corrupt)?, orientation, target.channels),
    };
    resize(flat, (width, height), target)
}

/// JPEGs of at most this many pixels (256 x 256 and a little more) are
/// small enough to decode on a request's own task: at 224 x 224
/// libjpeg-turbo takes about a quarter of a millisecond, less than handing
/// the work to tokio's blocking pool and back costs in wake-ups on an idle
/// machine; on a busy one the pool's queue was most of the decode's time
/// (H200, 512 clients: 2.49 ms per image against 0.62 ms in place).
const IN_PLACE_MAX_PIXELS: u64 = 70_000;

/// Whether `bytes` are a JPEG small enough to decode without leaving the
/// async task (see [`IN_PLACE_MAX_PIXELS`]): a walk over its markers gives
/// the size for free. Anything else (other formats, a file nvJPEG's marker
/// walk refuses, such as one cut short) goes to the blocking pool.
pub fn decodes_in_place(bytes: &[u8]) -> bool {
    host_side::host_readable_pixels(bytes).is_some_and(|pixels| pixels <= IN_PLACE_MAX_PIXELS)
}

/// Opens `bytes` as `format`: refuses an image over `max_pixels` from its
/// header, before any pixel memory is allocated, and bounds the decoder's
/// allocations; the decoder and the orientation to apply (none when the
/// EXIF tag is missing or unreadable, the common case).
fn open_checked(bytes: &[u8], format: ImageFormat, max_pixels: u64) -> Result<(impl ImageDecoder + '_, Orientation), DecodeError> {
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: format_name(format), detail: e.to_string() };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format).into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, limit: max_pixels });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut limits = Limits::default();
    // RGBA16 is the widest a PNG decodes to: 8 bytes per pixel, plus slack
    // for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder.set_limits(limits).map_err(corrupt)?;
    Ok((decoder, orientation))
}

/// A JPEG's size and EXIF orientation (1-8), from its header, refused
/// over `max_pixels` as a decode would be.
pub struct JpegHeader {
    pub width: u32,
    pub height: u32,
    pub orientation: u8,
}

pub fn jpeg_header(bytes: &[u8], max_pixels: u64) -> Result<JpegHeader, DecodeError> {
    let (decoder, orientation) = open_checked(bytes, ImageFormat::Jpeg, max_pixels)?;
    let (width, height) = decoder.dimensions();
    Ok(JpegHeader { width, height, orientation: orientation.to_exif() })
}

/// Decodes `bytes` at full size, upright, flattened to `channels`: for a
/// vision model, whose answer is about the client's whole image (the
/// pixel limit is checked from the header first, as above).
pub fn decode_upright(bytes: &[u8], format: ImageFormat, channels: u32, max_pixels: u64) -> Result<(Vec<u8>, (u32, u32)), DecodeError> {
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: format_name(format), detail: e.to_string() };
    let (decoder, orientation) = open_checked(bytes, format, max_pixels)?;
    Ok(upright(DynamicImage::from_decoder(decoder).map_err(corrupt)?, orientation, channels))
}

/// Resizes height x width x channels uint8 pixels of `size` to `target` (bilinear).
pub fn resize_pixels(pixels: Vec<u8>, size: (u32, u32), target: Target) -> Result<Vec<u8>, DecodeError> {
    resize(pixels, size, target)
}

/// The stored (pre-orientation) size that covers `target` once turned.
fn stored_size_for(target: Target, orientation: Orientation) -> (u32, u32) {
    let quarter_turn = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    if quarter_turn { (target.height, target.width) } else { (target.width, target.height) }
}

/// Applies `orientation`, then flattens to `channels`; the pixels and their size.
fn upright(mut image: DynamicImage, orientation: Orientation, channels: u32) -> (Vec<u8>, (u32, u32)) {
    image.apply_orientation(orientation);
    let size = (image.width(), image.height());
    (flatten(image, channels), size)
}

/// To 8-bit gray or RGB, filling any transparency with a contrasting colour.
fn flatten(image: DynamicImage, channels: u32) -> Vec<u8> {
    let image = if image.color().has_alpha() { composite_alpha(image.into_rgba8()) } else { image };
    if channels == 1 { image.into_luma8().into_raw() } else { image.into_rgb8().into_raw() }
}

fn composite_alpha(rgba: image::RgbaImage) -> DynamicImage {
    let (mut sum, mut count) = (0u64, 0u64);
    for p in rgba.pixels() {
        if p[3] >= 128 {
            sum += (u64::from(p[0]) * 299 + u64::from(p[1]) * 587 + u64::from(p[2]) * 114) / 1000;
            count += 1;
        }
    }
    let ink_is_dark = count > 0 && sum / count < 128;
    let bg: u32 = if ink_is_dark { 255 } else { 0 };
    let mut rgb = image::RgbImage::new(rgba.width(), rgba.height());
    for (out, p) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            out[c] = ((u32::from(p[c]) * a + bg * (255 - a) + 127) / 255) as u8;
        }
    }
    DynamicImage::ImageRgb8(rgb)
}

fn resize(pixels: Vec<u8>, (width, height): (u32, u32), target: Target) -> Result<Vec<u8>, DecodeError> {
    if (width, height) == (target.width, target.height) {
        return Ok(pixels);
    }
    let pixel_type = if target.channels == 1 { PixelType::U8 } else { PixelType::U8x3 };
    let internal = |e: &dyn std::fmt::Display| DecodeError::Corrupt { format: "image", detail: format!("resize: {e}") };
    let src = Image::from_vec_u8(width, height, pixels, pixel_type).map_err(|e| internal(&e))?;
    let mut dst = Image::new(target.width, target.height, pixel_type);
    // Bilinear, never nearest: rayon splits a nearest resize whatever the
    // pool, and the gateway's global pool is one thread (crate::threads).
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| internal(&e))?;
    Ok(dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(image: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    const GRAY32: Target = Target { width: 32, height: 32, channels: 1 };

    #[test]
    fn only_small_jpegs_are_decoded_in_place() {
        let encoded = |side: u32, format: ImageFormat| {
            let image = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([x as u8, y as u8, (x ^ y) as u8]));
            let mut bytes = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(image).write_to(&mut bytes, format).unwrap();
            bytes.into_inner()
        };
        assert!(decodes_in_place(&encoded(224, ImageFormat::Jpeg)));
        assert!(decodes_in_place(&encoded(256, ImageFormat::Jpeg)));
        assert!(!decodes_in_place(&encoded(300, ImageFormat::Jpeg)));
        // A PNG's size would need its header parsed: the blocking pool.
        assert!(!decodes_in_place(&encoded(32, ImageFormat::Png)));
        // Cut short (no end-of-image marker): the blocking pool, whose
        // decoder reports it.
        let jpeg = encoded(64, ImageFormat::Jpeg);
        assert!(!decodes_in_place(&jpeg[..jpeg.len() - 10]));
    }

    #[test]
    fn resizes_rgb_to_gray_target() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(64, 48, image::Rgb([200, 200, 200])));
        let out = decode_to_input(&png(img), ImageFormat::Png, GRAY32, 1_000_000).unwrap();
        assert_eq!(out.len(), 32 * 32);
        assert!(out.iter().all(|&v| (198..=202).contains(&v)), "uniform gray stays gray");
    }

    #[test]
    fn transparent_background_contrasts_with_the_ink() {
        // Black ink (one opaque pixel) on a transparent field -> white paper.
        let mut rgba = image::RgbaImage::from_pixel(32, 32, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(5, 5, image::Rgba([0, 0, 0, 255]));
        let out = decode_to_input(&png(DynamicImage::ImageRgba8(rgba.clone())), ImageFormat::Png, GRAY32, 10_000).unwrap();
        assert_eq!(out[0], 255);
        assert_eq!(out[5 * 32 + 5], 0);
        // White ink -> black paper.
        for p in rgba.pixels_mut() {
            p[0] = 255;
            p[1] = 255;
            p[2] = 255;
        }
        let out = decode_to_input(&png(DynamicImage::ImageRgba8(rgba)), ImageFormat::Png, GRAY32, 10_000).unwrap();
        assert_eq!(out[0], 0);
        assert_eq!(out[5 * 32 + 5], 255);
    }

    fn jpeg(image: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).encode_image(&image).unwrap();
        out.into_inner()
    }

    /// A smooth colour photo stand-in: gradients, no noise.
    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + y) * 127 / (width + height)) as u8])
        }))
    }

    /// `jpeg` with an EXIF APP1 segment saying `orientation` (1..8) after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
        let tiff: [u8; 26] = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, // big-endian TIFF header, first IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0, // Orientation, SHORT, 1 value
            0, 0, 0, 0, // no next IFD
        ];
        let mut app1 = vec![0xFF, 0xE1, 0, (2 + 6 + tiff.len()) as u8];
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        [&jpeg[..2], &app1, &jpeg[2..]].concat()
    }

    const RGB224: Target = Target { width: 224, height: 224, channels: 3 };

    #[test]
    fn a_large_jpeg_decoded_at_a_reduced_scale_matches_the_full_decode() {
        let photo = gradient(1920, 1080);
        let bytes = jpeg(photo);
        let scaled = decode_to_input(&bytes, ImageFormat::Jpeg, RGB224, 40_000_000).unwrap();
        assert_eq!(scaled.len(), 224 * 224 * 3);
        // The same bytes decoded in full by the image crate, then resized.
        let full = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg).unwrap().into_rgb8();
        let reference = resize(full.into_raw(), (1920, 1080), RGB224).unwrap();
        let mean_diff = scaled.iter().zip(&reference).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>() / scaled.len() as f64;
        assert!(mean_diff < 2.0, "scaled decode differs from the full one by {mean_diff:.2} per value on average");
    }

    #[test]
    fn exif_orientation_turns_the_image_upright_before_the_resize() {
        // 64x32 stored: left half black, right half white.
        let stored = DynamicImage::ImageLuma8(image::GrayImage::from_fn(64, 32, |x, _| image::Luma([if x < 32 { 0 } else { 255 }])));
        let bytes = jpeg(stored);
        let gray16 = Target { width: 16, height: 16, channels: 1 };
        let mean = |px: &[u8], rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
            let (mut sum, mut n) = (0u32, 0u32);
            for r in rows {
                for c in cols.clone() {
                    sum += u32::from(px[r * 16 + c]);
                    n += 1;
                }
            }
            sum / n
        };
        // As stored: dark on the left.
        let as_stored = decode_to_input(&bytes, ImageFormat::Jpeg, gray16, 1 << 20).unwrap();
        assert!(mean(&as_stored, 0..16, 0..6) < 40 && mean(&as_stored, 0..16, 10..16) > 215);
        // Orientation 6 (turn 90 degrees clockwise to view): the stored left
        // column becomes the top row, so dark on top.
        let turned = decode_to_input(&with_exif_orientation(&bytes, 6), ImageFormat::Jpeg, gray16, 1 << 20).unwrap();
        assert!(mean(&turned, 0..6, 0..16) < 40 && mean(&turned, 10..16, 0..16) > 215, "{turned:?}");
        // Orientation 8 (counter-clockwise): dark at the bottom.
        let turned = decode_to_input(&with_exif_orientation(&bytes, 8), ImageFormat::Jpeg, gray16, 1 << 20).unwrap();
        assert!(mean(&turned, 10..16, 0..16) < 40 && mean(&turned, 0..6, 0..16) > 215, "{turned:?}");
    }

    #[test]
    fn a_truncated_or_garbled_jpeg_is_corrupt() {
        let bytes = jpeg(gradient(640, 480));
        for bad in [&bytes[..bytes.len() / 2], &bytes[..100], b"\xFF\xD8\xFF garbage".as_slice()] {
            let err = decode_to_input(bad, ImageFormat::Jpeg, RGB224, 40_000_000).unwrap_err();
            assert!(matches!(err, DecodeError::Corrupt { format: "JPEG", .. }), "{err:?}");
        }
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        // A valid PNG header claiming 50000x50000, with no pixel data at all.
        let mut bytes = png(DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)));
        bytes[16..20].copy_from_slice(&50_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&50_000u32.to_be_bytes());
        // Fix the IHDR chunk's CRC (over its type and data) so only the size is a lie.
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_to_input(&bytes, ImageFormat::Png, GRAY32, 40_000_000).unwrap_err();
        assert_eq!(err, DecodeError::TooManyPixels { width: 50_000, height: 50_000, limit: 40_000_000 });
    }

    #[test]
    fn truncated_and_garbage_bytes_are_corrupt() {
        let bytes = png(DynamicImage::ImageLuma8(image::GrayImage::new(40, 40)));
        for bad in [&bytes[..bytes.len() / 2], b"definitely not a png".as_slice(), &[]] {
            assert!(matches!(decode_to_input(bad, ImageFormat::Png, GRAY32, 1 << 20), Err(DecodeError::Corrupt { .. })));
        }
    }
}
