//! Encoded image -> the model's input pixels (uint8, height x width x
//! channels), on the CPU.
//!
//! The pixel count is checked from the image header before any pixel
//! memory exists, and the decoder runs under allocation limits, so a small
//! file that claims 50000x50000 pixels costs nothing.
//!
//! Alpha: a transparent background is filled with whatever contrasts with
//! the opaque pixels (white under dark ink, black under light ink), so
//! "black digit on transparent" and "white digit on transparent" both work.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
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

/// Decodes `bytes` as `format` and resizes to `target`.
pub fn decode_to_input(bytes: &[u8], format: ImageFormat, target: Target, max_pixels: u64) -> Result<Vec<u8>, DecodeError> {
    let corrupt = |e: image::ImageError| DecodeError::Corrupt { format: format_name(format), detail: e.to_string() };
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(corrupt)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, limit: max_pixels });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    // RGBA16 is the widest a PNG decodes to: 8 bytes per pixel, plus slack
    // for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(corrupt)?;
    let flat = flatten(image, target.channels);
    resize(flat, (width, height), target)
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
