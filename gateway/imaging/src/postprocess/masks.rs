//! A segmenter's mask (in the slot) back at the client's image size, and
//! the three answers made from it: a PNG (class index map, or 8-bit
//! alpha), a cut-out (the image as RGBA with the alpha applied), or
//! per-class pixel counts and bounding boxes.
//!
//! Each plane's content area (the letterbox padding cropped off) is
//! resized to the original size (bilinear, antialiased when it shrinks).
//! An alpha mask is made 8-bit at the model's size first and resized as
//! 8-bit, then thresholded (alpha >= 128, i.e. >= 0.5): a quarter of the
//! memory and a fraction of the time of a float resize at a photo's size
//! (`cutout_bench`). Class scores are resized as float, one plane per class,
//! then argmaxed: memory is planes x width x height x 4 bytes, bounded by
//! `--max-pixels`.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use protocol::TensorSignature;
use protocol::vision::{MaskKind, SegmentationSpec};
pub use super::areas::ClassArea;
use super::Transform;
use super::areas::{self, alpha_class};
use crate::threads::on_mask_threads;

/// The mask at the original size: one plane, row-major, the alpha (0..255)
/// or each pixel's class, as the model gives. The other form is made
/// only for an answer that needs it (a cut-out of a class map, a PNG of
/// an alpha's classes): the JSON answer reads the plane as it is, which on
/// a 1080p photo saves a pass over 2 M pixels and their copy.
pub struct Mask {
    pub width: u32,
    pub height: u32,
    kind: MaskKind,
    plane: Vec<u8>,
}

/// Reads one item's mask from its answer ([`protocol::Ask::Answer`]) and
/// brings it to the original size: 8-bit as the host made it on its device
/// (see `SegmentationSpec::answer_is_8bit`), else the raw fp32 planes.
pub fn to_original(outputs: &[u8], signature: &TensorSignature, spec: &SegmentationSpec, t: &Transform) -> Result<Mask, String> {
    if spec.answer_is_8bit() { small_to_original(outputs, signature, spec, t) } else { raw_to_original(outputs, signature, spec, t) }
}

/// The 8-bit mask (the alpha, or each pixel's class index) at the original
/// size: the alpha resized bilinear, a class map nearest (an index is not
/// a quantity to blend).
pub fn small_to_original(outputs: &[u8], signature: &TensorSignature, spec: &SegmentationSpec, t: &Transform) -> Result<Mask, String> {
    let at = signature.output_placements()[0];
    let len = spec.width as usize * spec.height as usize;
    let small = outputs.get(at.offset as usize..at.offset as usize + len).ok_or("the mask is outside the slot")?.to_vec();
    let size = (spec.width, spec.height);
    Ok(match spec.mask {
        MaskKind::Alpha => Mask::of_alpha(resize_plane(small, PixelType::U8, size, t, bilinear())?, t),
        MaskKind::Classes => Mask::of_classes(resize_plane(small, PixelType::U8, size, t, ResizeAlg::Nearest)?, t),
    })
}

/// The raw fp32 planes (an alpha in 0..1, or one score plane per class) at
/// the original size.
pub fn raw_to_original(outputs: &[u8], signature: &TensorSignature, spec: &SegmentationSpec, t: &Transform) -> Result<Mask, String> {
    let at = signature.output_placements()[0];
    let bytes = outputs.get(at.range()).ok_or("the mask is outside the slot")?;
    let size = (spec.width, spec.height);
    let plane_len = spec.width as usize * spec.height as usize * 4;
    Ok(match spec.mask {
        MaskKind::Alpha => {
            let plane = bytes.get(..plane_len).ok_or("the alpha mask is shorter than its size")?;
            let small: Vec<u8> = plane.chunks_exact(4).map(|c| alpha_byte(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
            Mask::of_alpha(resize_plane(small, PixelType::U8, size, t, bilinear())?, t)
        }
        MaskKind::Classes => {
            let planes: Vec<Vec<f32>> = bytes
                .chunks_exact(plane_len)
                .map(|plane| {
                    let resized = resize_plane(plane.to_vec(), PixelType::F32, size, t, bilinear())?;
                    Ok(resized.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
                })
                .collect::<Result<_, String>>()?;
            let n = t.original.0 as usize * t.original.1 as usize;
            let classes: Vec<u8> = (0..n)
                .map(|i| planes.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (c, p)| if p[i] > best.1 { (c, p[i]) } else { best }).0 as u8)
                .collect();
            Mask::of_classes(classes, t)
        }
    })
}

fn bilinear() -> ResizeAlg {
    ResizeAlg::Convolution(FilterType::Bilinear)
}

/// An alpha in 0..1 as a byte (0..255), rounded.
fn alpha_byte(value: f32) -> u8 {
    (value.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// One plane (`pixel` type, `size`) cropped to the content and resized to
/// the original, on the masks' threads (a 1080p plane is 2 M pixels one
/// request waits for); its bytes.
fn resize_plane(plane: Vec<u8>, pixel: PixelType, size: (u32, u32), t: &Transform, how: ResizeAlg) -> Result<Vec<u8>, String> {
    on_mask_threads(|| resize_in_this_pool(plane, pixel, size, t, how))
}

/// [`resize_plane`]'s work, split over the rayon pool it runs in.
fn resize_in_this_pool(plane: Vec<u8>, pixel: PixelType, size: (u32, u32), t: &Transform, how: ResizeAlg) -> Result<Vec<u8>, String> {
    let src = Image::from_vec_u8(size.0, size.1, plane, pixel).map_err(|e| e.to_string())?;
    let mut dst = Image::new(t.original.0, t.original.1, pixel);
    let (left, top, w, h) = t.content_in(size);
    let options = ResizeOptions::new().resize_alg(how).crop(left, top, w, h);
    Resizer::new().resize(&src, &mut dst, &options).map_err(|e| e.to_string())?;
    Ok(dst.into_vec())
}

/// A class's alpha: opaque where the class is not 0.
fn class_alpha(c: u8) -> u8 {
    if c == 0 { 0 } else { 255 }
}

impl Mask {
    /// From an alpha at the original size.
    fn of_alpha(alpha: Vec<u8>, t: &Transform) -> Mask {
        Mask { width: t.original.0, height: t.original.1, kind: MaskKind::Alpha, plane: alpha }
    }

    /// From a class map at the original size.
    fn of_classes(classes: Vec<u8>, t: &Transform) -> Mask {
        Mask { width: t.original.0, height: t.original.1, kind: MaskKind::Classes, plane: classes }
    }

    /// The class of each pixel, row-major.
    pub fn classes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.kind {
            MaskKind::Classes => (&self.plane[..]).into(),
            MaskKind::Alpha => self.plane.iter().map(|&a| alpha_class(a)).collect::<Vec<_>>().into(),
        }
    }

    /// 0..255 per pixel: the alpha itself, or 255 where the class is not 0.
    pub fn alpha(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.kind {
            MaskKind::Alpha => (&self.plane[..]).into(),
            MaskKind::Classes => self.plane.iter().map(|&c| class_alpha(c)).collect::<Vec<_>>().into(),
        }
    }

    /// Pixel counts and boxes, one entry per label, on the plane as it is
    /// (see [`super::areas`]).
    pub fn areas(&self, labels: &[String]) -> Vec<ClassArea> {
        match self.kind {
            MaskKind::Alpha => areas::of_alpha(&self.plane, self.width, labels),
            MaskKind::Classes => areas::of_classes(&self.plane, self.width, labels, |c| c),
        }
    }

    /// The PNG answer: the class index map (class scores) or the alpha (an alpha mask).
    pub fn png(&self, kind: MaskKind) -> Result<Vec<u8>, String> {
        let gray = match kind {
            MaskKind::Classes => self.classes(),
            MaskKind::Alpha => self.alpha(),
        };
        encode(&gray, self.width, self.height, ExtendedColorType::L8)
    }

    /// The client's image (RGB, original size) with the alpha applied, as an RGBA PNG.
    pub fn cutout(&self, rgb: &[u8]) -> Result<Vec<u8>, String> {
        let alpha = self.alpha();
        let mut rgba = vec![0u8; alpha.len() * 4];
        for ((out, p), &a) in rgba.chunks_exact_mut(4).zip(rgb.chunks_exact(3)).zip(alpha.iter()) {
            out.copy_from_slice(&[p[0], p[1], p[2], a]);
        }
        encode(&rgba, self.width, self.height, ExtendedColorType::Rgba8)
    }
}

/// PNG with fast deflate (fdeflate) and the Up filter: on a 1920x1080
/// cut-out, 14.7 ms against 17.0 ms with the adaptive filter, for 3% more
/// bytes; on an alpha mask 0.4 ms against 1.0 ms (`cutout_bench`).
fn encode(pixels: &[u8], width: u32, height: u32, color: ExtendedColorType) -> Result<Vec<u8>, String> {
    let mut out = Cursor::new(Vec::new());
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Up)
        .write_image(pixels, width, height, color)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ImageShape;
    use protocol::vision::{Resize, VisionModel, VisionTask};

    fn model(mask: MaskKind, labels: usize, size: u32, resize: Resize) -> (SegmentationSpec, TensorSignature) {
        let spec = SegmentationSpec { labels: (0..labels).map(|i| format!("c{i}")).collect(), resize, mask, width: size, height: size };
        let input = ImageShape { width: 8, height: 8, channels: 3 };
        let sig = VisionModel::new(input, VisionTask::Segmentation(spec.clone())).signature;
        (spec, sig)
    }

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The mask as the host sends an answer (8-bit, made on its device) at
    /// the mask output's offset, the rest of the slot's output area zero.
    fn small(sig: &TensorSignature, bytes: &[u8]) -> Vec<u8> {
        let at = sig.output_placements()[0];
        let mut out = vec![0u8; at.range().end];
        out[at.offset as usize..at.offset as usize + bytes.len()].copy_from_slice(bytes);
        out
    }

    /// An 8-bit alpha gives the mask its fp32 form gives (the host rounds
    /// 255 x alpha as the gateway did), and a class map is resized nearest.
    #[test]
    fn the_8bit_answer_matches_the_raw_planes() {
        let (spec, sig) = model(MaskKind::Alpha, 2, 4, Resize::Letterbox { pad: 0 });
        let levels: Vec<u8> = (0..16).map(|i| (i * 17) as u8).collect();
        let plane: Vec<f32> = levels.iter().map(|&v| f32::from(v) / 255.0).collect();
        let t = Transform::new(spec.resize, (16, 8), (8, 8));
        let raw = raw_to_original(&le(&plane), &sig, &spec, &t).unwrap();
        let eight = to_original(&small(&sig, &levels), &sig, &spec, &t).unwrap();
        assert_eq!((eight.alpha(), eight.classes()), (raw.alpha(), raw.classes()));

        // Classes 2x2 blocks of a 4x4 map, stretched to 8x8: each block 4x4.
        let (spec, sig) = model(MaskKind::Classes, 3, 4, Resize::Stretch);
        let map = [0u8, 0, 1, 1, 0, 0, 1, 1, 2, 2, 0, 0, 2, 2, 0, 0];
        let t = Transform::new(spec.resize, (8, 8), (8, 8));
        let mask = to_original(&small(&sig, &map), &sig, &spec, &t).unwrap();
        for y in 0..8 {
            let want: Vec<u8> = (0..8).map(|x| map[(y / 2) * 4 + x / 2]).collect();
            assert_eq!(mask.classes()[y * 8..(y + 1) * 8], want[..], "row {y}");
        }
        assert_eq!(mask.areas(&spec.labels).iter().map(|a| a.pixels).collect::<Vec<_>>(), [32, 16, 16]);
    }

    #[test]
    fn an_alpha_mask_is_cropped_out_of_the_letterbox_and_resized() {
        // 8x8 input, 4x4 mask; a 16x8 image letterboxes to 8x4 at (0, 2),
        // so the mask's content is rows 1..3: its left half is foreground.
        // The padding rows (0 and 3) say the opposite, and must not show.
        let (spec, sig) = model(MaskKind::Alpha, 2, 4, Resize::Letterbox { pad: 0 });
        let content = [1.0f32, 1.0, 0.0, 0.0];
        let pad = [0.0f32, 0.0, 1.0, 1.0];
        let plane = [pad, content, content, pad].concat();
        let t = Transform::new(spec.resize, (16, 8), (8, 8));
        let mask = raw_to_original(&le(&plane), &sig, &spec, &t).unwrap();
        assert_eq!((mask.width, mask.height), (16, 8));
        // (The bilinear filter's support reaches a little past the crop, so
        // the two columns at the edge are left out.)
        let classes = mask.classes();
        for y in 0..8 {
            let row = &classes[y * 16..(y + 1) * 16];
            assert_eq!((&row[..7], &row[9..]), (&[1u8; 7][..], &[0u8; 7][..]), "row {y}");
        }
        let areas = mask.areas(&spec.labels);
        assert_eq!(areas[0].pixels + areas[1].pixels, 128);
        assert_eq!(areas[1].bbox.map(|b| (b[0], b[1], b[3])), Some((0, 0, 8)));
        assert_eq!(areas[0].bbox.map(|b| (b[1], b[2], b[3])), Some((0, 16, 8)));
        assert_eq!(mask.alpha()[4 * 16], 255);
    }

    /// `n` pixels, each one of `values`, picked by a seeded LCG.
    fn scattered(n: u32, seed: u32, values: &[u8]) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                values[(state >> 28) as usize % values.len()]
            })
            .collect()
    }

    /// The row-by-row counts and boxes equal a pixel-by-pixel walk's, for
    /// classes anywhere (and a label with no pixels, and indexes past the labels).
    #[test]
    fn areas_match_a_pixel_by_pixel_count() {
        // Rows enough for several bands, the last one short.
        let (w, h) = (37u32, 103u32);
        let classes = scattered(w * h, 7, &[0, 0, 1, 2, 5]);
        let labels: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let mask = Mask { width: w, height: h, kind: MaskKind::Classes, plane: classes.clone() };
        let got = mask.areas(&labels);
        for (c, area) in got.iter().enumerate() {
            let at: Vec<(u32, u32)> = (0..w * h).filter(|&i| classes[i as usize] as usize == c).map(|i| (i % w, i / w)).collect();
            assert_eq!(area.pixels, at.len() as u64, "class {c}");
            let bbox = (!at.is_empty()).then(|| {
                let xs = at.iter().map(|p| p.0);
                let ys = at.iter().map(|p| p.1);
                [xs.clone().min().unwrap(), ys.clone().min().unwrap(), xs.max().unwrap() + 1, ys.max().unwrap() + 1]
            });
            assert_eq!(area.bbox, bbox, "class {c}");
        }
        assert_eq!(got[3].pixels, 0);
    }

    /// An alpha's areas, counted on the alpha itself, equal those of its
    /// class map (foreground at >= 128), the edge values included.
    #[test]
    fn an_alphas_areas_are_its_class_maps() {
        let (w, h) = (41u32, 19u32);
        let alpha = scattered(w * h, 11, &[0, 127, 128, 200, 255]);
        let labels: Vec<String> = ["background", "foreground"].map(String::from).to_vec();
        let of_alpha = Mask { width: w, height: h, kind: MaskKind::Alpha, plane: alpha.clone() };
        let classes: Vec<u8> = alpha.iter().map(|&a| u8::from(a >= 128)).collect();
        assert_eq!(of_alpha.classes()[..], classes[..]);
        let of_classes = Mask { width: w, height: h, kind: MaskKind::Classes, plane: classes };
        assert_eq!(of_alpha.areas(&labels), of_classes.areas(&labels));
        // A third label has no pixels; one label alone counts only class 0.
        for labels in [["background", "foreground", "other"].map(String::from).to_vec(), vec!["background".to_string()]] {
            assert_eq!(of_alpha.areas(&labels), of_classes.areas(&labels));
        }
        // Rows of one class only, and a mask with no foreground at all.
        let solid = Mask { width: w, height: h, kind: MaskKind::Alpha, plane: vec![255; (w * h) as usize] };
        assert_eq!(solid.areas(&labels)[1].bbox, Some([0, 0, w, h]));
        assert_eq!(solid.areas(&labels)[0].bbox, None);
        assert_eq!(of_alpha.areas(&labels)[1].pixels, alpha.iter().filter(|&&a| a >= 128).count() as u64);
    }

    /// The resizer splits a big mask's rows over the masks' threads; the
    /// plane it gives is the one a single thread gives, to the byte, for
    /// an alpha (bilinear) and a class map (nearest), stretched and letterboxed.
    #[test]
    fn a_mask_resized_over_many_threads_is_the_one_thread_mask() {
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let (one, many) = (pool(1), pool(7));
        let small = scattered(64 * 64, 5, &[0, 3, 90, 128, 200, 255]);
        for (how, resize) in [(bilinear(), Resize::Stretch), (ResizeAlg::Nearest, Resize::Letterbox { pad: 0 })] {
            let t = Transform::new(resize, (64, 64), (1280, 720));
            let run = |p: &rayon::ThreadPool| p.install(|| resize_in_this_pool(small.clone(), PixelType::U8, (64, 64), &t, how).unwrap());
            assert_eq!(run(&one), run(&many));
        }
    }

    #[test]
    fn class_scores_take_the_best_plane_after_a_stretch() {
        let (spec, sig) = model(MaskKind::Classes, 3, 2, Resize::Stretch);
        // Planes 2x2: class 2 top-left, class 1 bottom-right, class 0 elsewhere.
        let planes = [[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0], [4.0, 0.0, 0.0, 0.0]].concat();
        let t = Transform::new(spec.resize, (4, 4), (8, 8));
        let mask = raw_to_original(&le(&planes), &sig, &spec, &t).unwrap();
        let classes = mask.classes();
        assert_eq!((classes[0], classes[15], classes[3]), (2, 1, 0));
        let png = mask.png(MaskKind::Classes).unwrap();
        let decoded = image::load_from_memory(&png).unwrap().into_luma8();
        assert_eq!(decoded.into_raw(), &classes[..]);
        let cut = image::load_from_memory(&mask.cutout(&[9; 48]).unwrap()).unwrap().into_rgba8();
        assert_eq!(cut.get_pixel(0, 0).0, [9, 9, 9, 255]);
        assert_eq!(cut.get_pixel(3, 0).0, [9, 9, 9, 0]);
    }
}
