//! Which JPEGs go to the host to decode on its GPU (its `HostDecode`
//! offer, from model.toml's `decode`), instead of being decoded here.
//!
//! A walk over the file's marker segments to its frame header decides,
//! cheaply enough for every JPEG: only a file the host's nvJPEG will take
//! goes (baseline or progressive, 1 or 3 components, not CMYK, ending in
//! its end-of-image marker: a truncated file is decoded here, where
//! libjpeg-turbo reports it as the 400 it is), of the size the policy
//! asks, within the offer's byte and pixel limits. A file that goes still
//! has its header read as a decode would (the gateway's pixel limit, a
//! 413) and its EXIF orientation travels with it. Everything else is
//! decoded here as before.

use protocol::{DecodePolicy, HostDecode};

use crate::decode::{DecodeError, jpeg_header};

/// A JPEG to send as it is, and how to turn it upright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToHost {
    pub orientation: u8,
    /// Width x height once upright (orientations 5-8 swap them): a vision
    /// model's answer is mapped back onto this.
    pub upright: (u32, u32),
}

/// Decides for one JPEG; None: decode it here. An error is the client's
/// (over the pixel limit, an unreadable header).
///
/// `auto` goes by size alone. Sending small JPEGs too while this gateway's
/// decoders were all busy was tried and measured (H200, 224x224 JPEGs, 4
/// gateways, 256 clients): 8,683 img/s against 12,449 with every JPEG
/// decoded by the gateways, because the host's one decode stage then
/// became the limit (docs/benchmarks.md, "Real photos").
pub fn send_to_host(bytes: &[u8], offer: &HostDecode, max_pixels: u64) -> Result<Option<ToHost>, DecodeError> {
    let Some(pixels) = host_readable_pixels(bytes) else { return Ok(None) };
    let wanted = match offer.policy {
        DecodePolicy::Always => true,
        DecodePolicy::Auto { min_pixels } => pixels >= min_pixels,
    };
    if !wanted || bytes.len() as u64 > offer.max_bytes || pixels > offer.max_pixels {
        return Ok(None);
    }
    let header = jpeg_header(bytes, max_pixels)?;
    let upright = if (5..=8).contains(&header.orientation) { (header.height, header.width) } else { (header.width, header.height) };
    Ok(Some(ToHost { orientation: header.orientation, upright }))
}

/// The frame's width x height if nvJPEG takes the file: a start-of-frame
/// nvJPEG decodes (baseline, extended or progressive Huffman) with 1 or 3
/// components, and the end-of-image marker last; None otherwise. Walks the
/// marker segments up to the frame header; never reads past the slice.
pub fn host_readable_pixels(bytes: &[u8]) -> Option<u64> {
    if !bytes.starts_with(&[0xFF, 0xD8]) || !bytes.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut at = 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else { return None };
        let be16 = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let len = usize::from(be16(at + 2)?);
        match marker {
            // SOF0 baseline, SOF1 extended, SOF2 progressive (Huffman):
            // length, precision, height, width, components.
            0xC0..=0xC2 => {
                let (height, width) = (u64::from(be16(at + 5)?), u64::from(be16(at + 7)?));
                return matches!(bytes.get(at + 9), Some(1 | 3)).then_some(width * height);
            }
            // Other frame types (lossless, arithmetic), or the scan before any frame.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA => return None,
            _ if len < 2 => return None,
            _ => at += 2 + len,
        }
    }
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, ImageFormat, RgbImage};

    use super::*;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7])));
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    const ALWAYS: HostDecode = HostDecode { policy: DecodePolicy::Always, max_bytes: 1 << 20, max_pixels: 1 << 20 };

    #[test]
    fn a_plain_jpeg_goes_and_a_truncated_or_foreign_one_stays() {
        let good = jpeg(64, 48);
        assert_eq!(host_readable_pixels(&good), Some(64 * 48));
        assert_eq!(send_to_host(&good, &ALWAYS, 1 << 20).unwrap(), Some(ToHost { orientation: 1, upright: (64, 48) }));
        // Cut short: no end-of-image marker, decoded here (and refused here).
        assert_eq!(host_readable_pixels(&good[..good.len() - 10]), None);
        // A PNG, garbage, a frame header cut off.
        assert_eq!(host_readable_pixels(b"\x89PNG\r\n\x1a\n"), None);
        assert_eq!(host_readable_pixels(&[0xFF, 0xD8, 0xFF, 0xD9]), None);
        assert_eq!(host_readable_pixels(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0xFF, 0xD9]), None);
        // Four components (CMYK): the frame header's count says so.
        let mut cmyk = good.clone();
        let sof = cmyk.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        cmyk[sof + 9] = 4;
        assert_eq!(host_readable_pixels(&cmyk), None);
    }

    proptest::proptest! {
        /// Hostile input to the decision: any bytes, and a real JPEG with
        /// bytes changed anywhere (markers and lengths too). The walk never
        /// panics or reads past the file, and a file it passes starts and
        /// ends as a JPEG; the whole decision never panics either.
        #[test]
        fn the_marker_walk_takes_any_bytes(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            changes in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..16),
        ) {
            let _ = host_readable_pixels(&noise);
            let mut mutant = jpeg(32, 24);
            for (at, value) in changes {
                let at = at % mutant.len();
                mutant[at] = value;
            }
            if host_readable_pixels(&mutant).is_some() {
                proptest::prop_assert!(mutant.starts_with(&[0xFF, 0xD8]) && mutant.ends_with(&[0xFF, 0xD9]));
            }
            let _ = send_to_host(&mutant, &ALWAYS, 1 << 20);
        }
    }

    #[test]
    fn the_offer_decides_by_size_and_policy() {
        let small = jpeg(64, 48);
        let tight = HostDecode { max_bytes: small.len() as u64 - 1, ..ALWAYS };
        assert_eq!(send_to_host(&small, &tight, 1 << 20).unwrap(), None, "over the slot's bytes");
        let few_pixels = HostDecode { max_pixels: 64 * 48 - 1, ..ALWAYS };
        assert_eq!(send_to_host(&small, &few_pixels, 1 << 20).unwrap(), None, "over the host's pixels");
        let auto = HostDecode { policy: DecodePolicy::Auto { min_pixels: 64 * 48 }, ..ALWAYS };
        assert!(send_to_host(&small, &auto, 1 << 20).unwrap().is_some(), "at the threshold");
        let auto = HostDecode { policy: DecodePolicy::Auto { min_pixels: 64 * 48 + 1 }, ..ALWAYS };
        assert_eq!(send_to_host(&small, &auto, 1 << 20).unwrap(), None, "below it");
        // The gateway's own pixel limit still refuses first.
        assert!(matches!(send_to_host(&small, &ALWAYS, 100), Err(DecodeError::TooManyPixels { .. })));
    }
}
