//! Vision models: images in like a classifier (uint8 pixels, normalised on
//! the device), named tensors out like a tensor model, and a task that
//! tells the gateway how to turn those tensors into an answer about the
//! client's own image (boxes in its pixels, a mask at its size).
//!
//! The slot is laid out as for a tensor model whose one input is `IMAGE`
//! (UINT8 `[height, width, channels]`, at offset 0, so the pixels sit where
//! a classifier's do) and whose outputs are the task's:
//!
//! - detection: `boxes` FP32 `[max_boxes, 4]`, `scores` FP32 `[max_boxes]`,
//!   `labels` INT64 `[max_boxes]` (rows with a low score are padding);
//! - segmentation: `mask` FP32 `[C, h, w]` (class scores, C = labels) or
//!   `[1, h, w]` (an alpha in 0..1).
//!
//! NMS, if the model needs it, is the model's own business: the gateway
//! only thresholds, sorts and truncates.

use serde::{Deserialize, Serialize};

use crate::message::ImageShape;
use crate::tensor::{DataType, TensorSignature, TensorSpec};

/// The one input's name, over v2 as in the slot.
pub const INPUT_IMAGE: &str = "IMAGE";
pub const OUTPUT_BOXES: &str = "boxes";
pub const OUTPUT_SCORES: &str = "scores";
pub const OUTPUT_LABELS: &str = "labels";
pub const OUTPUT_MASK: &str = "mask";

/// A detection or segmentation model as both sides see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionModel {
    pub input: ImageShape,
    pub task: VisionTask,
    /// The slot's layout, made from the two above by [`VisionModel::new`].
    pub signature: TensorSignature,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum VisionTask {
    Detection(DetectionSpec),
    Segmentation(SegmentationSpec),
}

/// How an image of any size becomes the model's input; the gateway keeps
/// the transform per request to map the answer back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resize {
    /// Aspect ratio not kept: the whole image fills the input.
    Stretch,
    /// Aspect ratio kept: scaled to fit, centred, the rest filled with `pad`.
    Letterbox { pad: u8 },
}

impl Resize {
    /// Where an `original` (width, height) image lands in an `input`-sized
    /// model input: (left, top, width, height). The one definition both
    /// sides use: the gateway when it resizes (and maps answers back), the
    /// host when it decodes a JPEG on its GPU, so the two agree to the pixel.
    pub fn content(self, original: (u32, u32), input: (u32, u32)) -> (u32, u32, u32, u32) {
        match self {
            Resize::Stretch => (0, 0, input.0, input.1),
            Resize::Letterbox { .. } => {
                let scale = (f64::from(input.0) / f64::from(original.0.max(1))).min(f64::from(input.1) / f64::from(original.1.max(1)));
                let fit = |n: u32, limit: u32| ((f64::from(n) * scale + 0.5).floor() as u32).clamp(1, limit);
                let (w, h) = (fit(original.0, input.0), fit(original.1, input.1));
                ((input.0 - w) / 2, (input.1 - h) / 2, w, h)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoxFormat {
    /// Corners: x0, y0, x1, y1.
    Xyxy,
    /// Centre and size: cx, cy, w, h.
    Cxcywh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BoxUnits {
    /// Fractions of the model's input width and height (0..1).
    Normalized,
    /// Pixels of the model's input.
    Pixels,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionSpec {
    pub labels: Vec<String>,
    pub resize: Resize,
    pub box_format: BoxFormat,
    pub box_units: BoxUnits,
    /// N: the model returns N rows per image.
    pub max_boxes: u32,
    /// Defaults for the request's `score_threshold` and `max_detections`.
    pub score_threshold: f32,
    pub max_detections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaskKind {
    /// `[C, h, w]` scores, one plane per label; a pixel's class is the best.
    Classes,
    /// `[1, h, w]` in 0..1: foreground (label 1) where >= 0.5.
    Alpha,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentationSpec {
    /// Class names; for an alpha mask, background and foreground.
    pub labels: Vec<String>,
    pub resize: Resize,
    pub mask: MaskKind,
    /// The mask's size (often the input's, or a fraction of it).
    pub width: u32,
    pub height: u32,
}

impl SegmentationSpec {
    /// Planes in the mask output: one per class, or one alpha.
    pub fn planes(&self) -> u32 {
        match self.mask {
            MaskKind::Classes => self.labels.len() as u32,
            MaskKind::Alpha => 1,
        }
    }

    /// Whether the answer to [`crate::Ask::Answer`] holds the mask 8-bit
    /// (`width * height` bytes: the alpha, or each pixel's class index),
    /// made on the host's device; else it holds the raw fp32 planes. Both
    /// sides decide by this: an index must fit a byte.
    pub fn answer_is_8bit(&self) -> bool {
        self.mask == MaskKind::Alpha || self.labels.len() <= 256
    }
}

impl VisionModel {
    /// The labels of either task.
    pub fn labels(&self) -> &[String] {
        match &self.task {
            VisionTask::Detection(d) => &d.labels,
            VisionTask::Segmentation(s) => &s.labels,
        }
    }

    pub fn resize(&self) -> Resize {
        match &self.task {
            VisionTask::Detection(d) => d.resize,
            VisionTask::Segmentation(s) => s.resize,
        }
    }

    /// The model with its slot layout: `IMAGE` in, the task's outputs out
    /// (see the module doc).
    pub fn new(input: ImageShape, task: VisionTask) -> Self {
        let i = input;
        let spec = |name: &str, datatype, dims: Vec<u64>| TensorSpec { name: name.into(), datatype, dims };
        let outputs = match &task {
            VisionTask::Detection(d) => {
                let n = u64::from(d.max_boxes);
                vec![
                    spec(OUTPUT_BOXES, DataType::Fp32, vec![n, 4]),
                    spec(OUTPUT_SCORES, DataType::Fp32, vec![n]),
                    spec(OUTPUT_LABELS, DataType::Int64, vec![n]),
                ]
            }
            VisionTask::Segmentation(s) => {
                vec![spec(OUTPUT_MASK, DataType::Fp32, vec![u64::from(s.planes()), u64::from(s.height), u64::from(s.width)])]
            }
        };
        let image = spec(INPUT_IMAGE, DataType::Uint8, vec![u64::from(i.height), u64::from(i.width), u64::from(i.channels)]);
        Self { input, task, signature: TensorSignature { inputs: vec![image], outputs } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_sits_where_a_classifier_puts_its_pixels() {
        let input = ImageShape { width: 96, height: 64, channels: 3 };
        let spec = DetectionSpec {
            labels: vec!["a".into()],
            resize: Resize::Letterbox { pad: 114 },
            box_format: BoxFormat::Xyxy,
            box_units: BoxUnits::Pixels,
            max_boxes: 10,
            score_threshold: 0.5,
            max_detections: 10,
        };
        let sig = VisionModel::new(input, VisionTask::Detection(spec)).signature;
        assert_eq!(sig.input_placements()[0].offset, 0);
        assert_eq!(sig.input_placements()[0].len, input.len());
        assert_eq!(sig.outputs.iter().map(|o| o.dims.clone()).collect::<Vec<_>>(), [vec![10, 4], vec![10], vec![10]]);
    }
}
