//! JPEG through libjpeg-turbo, decoded at the smallest DCT scale that still
//! covers the model's input.
//!
//! A photo bound for a 224x224 model never needs its full resolution:
//! libjpeg-turbo can run its inverse DCT at k/8 of the size (k = 1..8),
//! skipping most of the IDCT, upsampling and colour conversion work, so a
//! 1920x1080 JPEG decodes at 1/4 (480x270) and a 4032x3024 phone photo at
//! 1/8 (504x378); the resize then starts from that. Figures in
//! docs/benchmarks.md ("Real photos").

use std::cell::RefCell;
use std::sync::OnceLock;

use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat, ScalingFactor};

/// A decoded (possibly scaled) image: 8-bit RGB or gray, row-major.
pub struct Decoded {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

thread_local! {
    /// One decompressor per thread (the blocking pool's), made on first use.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// libjpeg-turbo's reducing scale factors, smallest first.
fn reductions() -> &'static [ScalingFactor] {
    static FACTORS: OnceLock<Vec<ScalingFactor>> = OnceLock::new();
    FACTORS.get_or_init(|| {
        let mut f: Vec<ScalingFactor> =
            Decompressor::supported_scaling_factors().into_iter().filter(|f| f.num() <= f.denom()).collect();
        f.sort_by(|a, b| (a.num() * b.denom()).cmp(&(b.num() * a.denom())));
        f
    })
}

/// The smallest factor that leaves at least `need` (width, height) of a
/// `width` x `height` image; 1/1 if none does.
pub fn scale_for(width: u32, height: u32, need: (u32, u32)) -> ScalingFactor {
    reductions()
        .iter()
        .copied()
        .find(|f| f.scale(width as usize) >= need.0 as usize && f.scale(height as usize) >= need.1 as usize)
        .unwrap_or(ScalingFactor::ONE)
}

/// Decodes `bytes` at the smallest scale that leaves at least `need`
/// pixels each way, to gray (`channels` 1: the luma plane, no colour
/// conversion) or RGB. The caller has checked the pixel count from the
/// header. None for CMYK/YCCK, which libjpeg-turbo does not convert to RGB
/// (the caller decodes those otherwise). Any error is final: corrupt data,
/// and also what libjpeg-turbo only warns about, such as a truncated scan
/// (TurboJPEG reports it as an error after filling the rest with gray).
pub fn decode_scaled(bytes: &[u8], need: (u32, u32), channels: u32) -> Result<Option<Decoded>, String> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        let decompressor = match slot {
            Some(d) => d,
            None => slot.insert(Decompressor::new().map_err(|e| e.to_string())?),
        };
        let header = decompressor.read_header(bytes).map_err(|e| e.to_string())?;
        if matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK) {
            return Ok(None);
        }
        let factor = scale_for(header.width as u32, header.height as u32, need);
        decompressor.set_scaling_factor(factor).map_err(|e| e.to_string())?;
        let scaled = header.scaled(factor);
        let format = if channels == 1 { PixelFormat::GRAY } else { PixelFormat::RGB };
        let pitch = scaled.width * format.size();
        let mut pixels = vec![0; pitch * scaled.height];
        let image = Image { pixels: pixels.as_mut_slice(), width: scaled.width, pitch, height: scaled.height, format };
        decompressor.decompress(bytes, image).map_err(|e| e.to_string())?;
        Ok(Some(Decoded { pixels, width: scaled.width as u32, height: scaled.height as u32 }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_smallest_scale_that_covers_the_input() {
        let ratio = |f: ScalingFactor| (f.num(), f.denom());
        // 1080p for 224x224: 1/4 leaves 480x270; 1/8 (240x135) would not.
        assert_eq!(ratio(scale_for(1920, 1080, (224, 224))), (1, 4));
        // A 12 MP phone photo: 1/8 leaves 504x378.
        assert_eq!(ratio(scale_for(4032, 3024, (224, 224))), (1, 8));
        // Already about the input's size: no reduction.
        assert_eq!(ratio(scale_for(224, 224, (224, 224))), (1, 1));
        assert_eq!(ratio(scale_for(100, 50, (224, 224))), (1, 1));
        // k/8 steps between: 300 wide needs 224, so 6/8 (225), not 7/8.
        assert_eq!(ratio(scale_for(300, 300, (224, 224))), (3, 4));
        // The short side decides.
        assert_eq!(ratio(scale_for(4000, 400, (224, 224))), (5, 8));
    }
}
