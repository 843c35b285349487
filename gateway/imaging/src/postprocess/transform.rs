//! The resize from the client's image to the model's input, remembered per
//! request so that boxes and masks can be mapped back.
//!
//! Stretch fills the whole input. Letterbox scales by the smaller ratio,
//! rounds the content size half up, centres it (the odd pixel of padding
//! goes right or below) and pads the rest: the same arithmetic as
//! scripts/train_shapes.py, so the model sees what it was trained on.

use protocol::vision::Resize;

use crate::decode::{DecodeError, Target, resize_pixels};

/// Where the client's image went in the model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// The client's image, width x height.
    pub original: (u32, u32),
    /// The model's input.
    pub input: (u32, u32),
    /// The image's area inside the input: left, top, width, height.
    pub content: (u32, u32, u32, u32),
}

impl Transform {
    pub fn new(resize: Resize, original: (u32, u32), input: (u32, u32)) -> Self {
        // Shared with the host, which letterboxes JPEGs it decodes itself.
        Self { original, input, content: resize.content(original, input) }
    }

    /// A point in input pixels to the client's image's pixels, clamped to it.
    pub fn map_back(&self, x: f32, y: f32) -> (f32, f32) {
        let (left, top, w, h) = self.content;
        let ox = (x - left as f32) * self.original.0 as f32 / w as f32;
        let oy = (y - top as f32) * self.original.1 as f32 / h as f32;
        (ox.clamp(0.0, self.original.0 as f32), oy.clamp(0.0, self.original.1 as f32))
    }

    /// The content's area in a map of `size` that covers the whole input
    /// (a mask at another resolution): left, top, width, height.
    pub fn content_in(&self, size: (u32, u32)) -> (f64, f64, f64, f64) {
        let sx = f64::from(size.0) / f64::from(self.input.0);
        let sy = f64::from(size.1) / f64::from(self.input.1);
        let (left, top, w, h) = self.content;
        (f64::from(left) * sx, f64::from(top) * sy, f64::from(w) * sx, f64::from(h) * sy)
    }

    /// The model's input from the client's pixels (`channels` per pixel).
    pub fn apply(&self, pixels: Vec<u8>, channels: u32, resize: Resize) -> Result<Vec<u8>, DecodeError> {
        let (left, top, w, h) = self.content;
        let content = resize_pixels(pixels, self.original, Target { width: w, height: h, channels })?;
        let Resize::Letterbox { pad } = resize else { return Ok(content) };
        let c = channels as usize;
        let (iw, ih) = (self.input.0 as usize, self.input.1 as usize);
        let mut out = vec![pad; iw * ih * c];
        let row = w as usize * c;
        for (y, src) in content.chunks_exact(row).enumerate() {
            let at = ((top as usize + y) * iw + left as usize) * c;
            out[at..at + row].copy_from_slice(src);
        }
        debug_assert_eq!(h as usize * row, content.len());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LETTERBOX: Resize = Resize::Letterbox { pad: 114 };

    #[test]
    fn letterbox_centres_the_content_and_maps_back() {
        // 160x100 into 64x64: scale 0.4, content 64x40 at (0, 12).
        let t = Transform::new(LETTERBOX, (160, 100), (64, 64));
        assert_eq!(t.content, (0, 12, 64, 40));
        assert_eq!(t.map_back(0.0, 12.0), (0.0, 0.0));
        assert_eq!(t.map_back(64.0, 52.0), (160.0, 100.0));
        assert_eq!(t.map_back(32.0, 32.0), (80.0, 50.0));
        // Points in the padding clamp to the image's edge.
        assert_eq!(t.map_back(10.0, 2.0), (25.0, 0.0));
        // A tall one: 78x120, scale 64/120, content 42x64 at (11, 0).
        let t = Transform::new(LETTERBOX, (78, 120), (64, 64));
        assert_eq!(t.content, (11, 0, 42, 64));
        let (x, y) = t.map_back(11.0 + 21.0, 16.0);
        assert!((x - 39.0).abs() < 1e-4 && (y - 30.0).abs() < 1e-4, "{x} {y}");
    }

    #[test]
    fn stretch_scales_each_axis_on_its_own() {
        let t = Transform::new(Resize::Stretch, (200, 50), (64, 64));
        assert_eq!(t.content, (0, 0, 64, 64));
        assert_eq!(t.map_back(32.0, 16.0), (100.0, 12.5));
        assert_eq!(t.content_in((32, 32)), (0.0, 0.0, 32.0, 32.0));
    }

    #[test]
    fn a_mask_at_half_the_input_sees_half_the_content() {
        let t = Transform::new(LETTERBOX, (160, 100), (64, 64));
        assert_eq!(t.content_in((32, 32)), (0.0, 6.0, 32.0, 20.0));
    }

    #[test]
    fn apply_pads_around_the_resized_content() {
        // A white 4x2 gray image into 4x4: content 4x2 at (0, 1).
        let t = Transform::new(LETTERBOX, (4, 2), (4, 4));
        let out = t.apply(vec![255; 8], 1, LETTERBOX).unwrap();
        assert_eq!(out, [[114; 4], [255; 4], [255; 4], [114; 4]].concat());
        let t = Transform::new(Resize::Stretch, (8, 2), (4, 4));
        assert_eq!(t.apply(vec![7; 16], 1, Resize::Stretch).unwrap(), vec![7; 16]);
    }
}
