//! Which JPEGs go to the host to decode on its GPU (its `HostDecode`
//! offer, from model.toml's `decode`), instead of being decoded here.
//!
//! The gateway still reads every JPEG's header first: the pixel limit is
//! checked here (413), and the EXIF orientation travels with the file.
//! Only a file the host's nvJPEG will take goes: baseline or progressive,
//! 1 or 3 components (not CMYK), ending in its end-of-image marker (a
//! truncated file is decoded here, where libjpeg-turbo reports it as the
//! 400 it is), within the offer's byte and pixel limits. Everything else
//! is decoded here as before.

use std::sync::atomic::{AtomicUsize, Ordering};

use protocol::{DecodePolicy, HostDecode};

use crate::decode::{DecodeError, jpeg_header};

/// A JPEG to send as it is, and how to turn it upright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToHost {
    pub orientation: u8,
}

/// Decides for one JPEG; None: decode it here. `busy`: every decoder of
/// this gateway is at work ([`decoders_busy`]). An error is the client's
/// (over the pixel limit, an unreadable header).
pub fn send_to_host(bytes: &[u8], offer: &HostDecode, max_pixels: u64, busy: bool) -> Result<Option<ToHost>, DecodeError> {
    let header = jpeg_header(bytes, max_pixels)?;
    let pixels = u64::from(header.width) * u64::from(header.height);
    let wanted = match offer.policy {
        DecodePolicy::Always => true,
        DecodePolicy::Auto { min_pixels } => pixels >= min_pixels || busy,
    };
    let fits = bytes.len() as u64 <= offer.max_bytes && pixels <= offer.max_pixels && host_can_read(bytes);
    Ok((wanted && fits).then_some(ToHost { orientation: header.orientation }))
}

/// Whether nvJPEG takes the file: a start-of-frame nvJPEG decodes (baseline,
/// extended or progressive Huffman) with 1 or 3 components, and the
/// end-of-image marker last. Walks the marker segments up to the frame
/// header; never reads past the slice.
pub fn host_can_read(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) || !bytes.ends_with(&[0xFF, 0xD9]) {
        return false;
    }
    let mut at = 2;
    loop {
        // Markers may be preceded by fill bytes (0xFF).
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else { return false };
        let Some(len) = bytes.get(at + 2..at + 4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else { return false };
        match marker {
            // SOF0 baseline, SOF1 extended, SOF2 progressive (Huffman).
            0xC0..=0xC2 => return matches!(bytes.get(at + 9), Some(1 | 3)),
            // Other frame types (lossless, arithmetic), or the scan before any frame.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA => return false,
            _ if len < 2 => return false,
            _ => at += 2 + len,
        }
    }
}

/// JPEG decodes running on this gateway's blocking pool now.
static DECODING: AtomicUsize = AtomicUsize::new(0);

/// Counts one decode on this gateway while it lives.
pub struct Decoding(());

impl Decoding {
    pub fn start() -> Self {
        DECODING.fetch_add(1, Ordering::Relaxed);
        Decoding(())
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether every core of this gateway is already decoding: under `auto`, a
/// JPEG then goes to the host rather than wait for a core.
pub fn decoders_busy() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    DECODING.load(Ordering::Relaxed) >= cores
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
        assert!(host_can_read(&good));
        assert_eq!(send_to_host(&good, &ALWAYS, 1 << 20, false).unwrap(), Some(ToHost { orientation: 1 }));
        // Cut short: no end-of-image marker, decoded here (and refused here).
        assert!(!host_can_read(&good[..good.len() - 10]));
        // A PNG, garbage, a frame header cut off.
        assert!(!host_can_read(b"\x89PNG\r\n\x1a\n"));
        assert!(!host_can_read(&[0xFF, 0xD8, 0xFF, 0xD9]));
        assert!(!host_can_read(&[0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0xFF, 0xD9]));
        // Four components (CMYK): the frame header's count says so.
        let mut cmyk = good.clone();
        let sof = cmyk.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        cmyk[sof + 9] = 4;
        assert!(!host_can_read(&cmyk));
    }

    #[test]
    fn the_offer_decides_by_size_and_policy() {
        let small = jpeg(64, 48);
        let tight = HostDecode { max_bytes: small.len() as u64 - 1, ..ALWAYS };
        assert_eq!(send_to_host(&small, &tight, 1 << 20, false).unwrap(), None, "over the slot's bytes");
        let few_pixels = HostDecode { max_pixels: 64 * 48 - 1, ..ALWAYS };
        assert_eq!(send_to_host(&small, &few_pixels, 1 << 20, false).unwrap(), None, "over the host's pixels");
        let auto = HostDecode { policy: DecodePolicy::Auto { min_pixels: 64 * 48 }, ..ALWAYS };
        assert!(send_to_host(&small, &auto, 1 << 20, false).unwrap().is_some(), "at the threshold");
        let auto = HostDecode { policy: DecodePolicy::Auto { min_pixels: 64 * 48 + 1 }, ..ALWAYS };
        assert_eq!(send_to_host(&small, &auto, 1 << 20, false).unwrap(), None, "below it, with idle decoders");
        assert!(send_to_host(&small, &auto, 1 << 20, true).unwrap().is_some(), "below it, with every decoder busy");
        // The gateway's own pixel limit still refuses first.
        assert!(matches!(send_to_host(&small, &ALWAYS, 100, false), Err(DecodeError::TooManyPixels { .. })));
    }
}
