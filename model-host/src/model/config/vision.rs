//! model.toml's `[detection]` and `[segmentation]` tables: a vision model
//! takes `[input]` like a classifier (pixels, normalised on the device) and
//! returns the task's tensors (see `protocol::vision`), which the gateway
//! maps back onto the client's image.
//!
//! ```toml
//! [detection]
//! labels = ["circle", "square", "triangle"]
//! max_boxes = 16            # N: boxes [N, 4] FP32, scores [N] FP32, labels [N] INT64
//! box_format = "cxcywh"     # or "xyxy"
//! box_units = "normalized"  # or "pixels" (of the model's input)
//! resize = "letterbox"      # or "stretch"
//! pad_value = 114           # letterbox padding, 0..=255
//! score_threshold = 0.3     # request defaults
//! max_detections = 16
//! nms = "in_model"          # the only choice: the gateway does no NMS
//!
//! [segmentation]
//! mask = "alpha"            # mask [1, h, w] in 0..1, or "classes": [len(labels), h, w]
//! labels = ["background", "shape"]
//! resize = "stretch"
//! width = 64                # the mask's size; default the input's
//! height = 64
//! ```

use protocol::ImageShape;
use protocol::vision::{BoxFormat, BoxUnits, DetectionSpec, MaskKind, Resize, SegmentationSpec, VisionModel, VisionTask};
use serde::Deserialize;

use super::{InputConfig, Invalid};

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum ResizeToml {
    Stretch,
    Letterbox,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DetectionToml {
    labels: Vec<String>,
    max_boxes: u32,
    box_format: BoxFormatToml,
    box_units: BoxUnitsToml,
    resize: ResizeToml,
    #[serde(default)]
    pad_value: u8,
    #[serde(default = "half")]
    score_threshold: f32,
    max_detections: Option<u32>,
    /// Stated so a reader knows who suppresses overlaps; only "in_model".
    #[serde(default)]
    nms: NmsToml,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BoxFormatToml {
    Xyxy,
    Cxcywh,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BoxUnitsToml {
    Normalized,
    Pixels,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum NmsToml {
    #[default]
    InModel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SegmentationToml {
    mask: MaskToml,
    labels: Vec<String>,
    resize: ResizeToml,
    #[serde(default)]
    pad_value: u8,
    width: Option<u32>,
    height: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MaskToml {
    Classes,
    Alpha,
}

fn half() -> f32 {
    0.5
}

fn resize(r: ResizeToml, pad: u8) -> Resize {
    match r {
        ResizeToml::Stretch => Resize::Stretch,
        ResizeToml::Letterbox => Resize::Letterbox { pad },
    }
}

fn shape(input: &InputConfig) -> ImageShape {
    ImageShape { width: input.width, height: input.height, channels: input.channels }
}

pub(super) fn detection(input: &InputConfig, d: DetectionToml) -> Result<VisionModel, Invalid> {
    if d.labels.is_empty() {
        return Err(("detection.labels", "at least one label is needed".into()));
    }
    if !(1..=4096).contains(&d.max_boxes) {
        return Err(("detection.max_boxes", format!("{} is outside 1..=4096", d.max_boxes)));
    }
    if !(0.0..=1.0).contains(&d.score_threshold) {
        return Err(("detection.score_threshold", format!("{} is outside 0..=1", d.score_threshold)));
    }
    let max_detections = d.max_detections.unwrap_or(d.max_boxes);
    if !(1..=d.max_boxes).contains(&max_detections) {
        return Err(("detection.max_detections", format!("{max_detections} is outside 1..=max_boxes ({})", d.max_boxes)));
    }
    let NmsToml::InModel = d.nms;
    let spec = DetectionSpec {
        labels: d.labels,
        resize: resize(d.resize, d.pad_value),
        box_format: match d.box_format {
            BoxFormatToml::Xyxy => BoxFormat::Xyxy,
            BoxFormatToml::Cxcywh => BoxFormat::Cxcywh,
        },
        box_units: match d.box_units {
            BoxUnitsToml::Normalized => BoxUnits::Normalized,
            BoxUnitsToml::Pixels => BoxUnits::Pixels,
        },
        max_boxes: d.max_boxes,
        score_threshold: d.score_threshold,
        max_detections,
    };
    Ok(VisionModel::new(shape(input), VisionTask::Detection(spec)))
}

pub(super) fn segmentation(input: &InputConfig, s: SegmentationToml) -> Result<VisionModel, Invalid> {
    let mask = match s.mask {
        MaskToml::Classes => MaskKind::Classes,
        MaskToml::Alpha => MaskKind::Alpha,
    };
    let want = if mask == MaskKind::Alpha { Some(2) } else { None };
    if s.labels.len() < 2 || want.is_some_and(|n| s.labels.len() != n) || s.labels.len() > 255 {
        let need = if want.is_some() { "exactly 2 (background, foreground) for an alpha mask" } else { "2..=255, one per class plane" };
        return Err(("segmentation.labels", format!("{} labels; need {need}", s.labels.len())));
    }
    let (width, height) = (s.width.unwrap_or(input.width), s.height.unwrap_or(input.height));
    if !(1..=8192).contains(&width) || !(1..=8192).contains(&height) {
        return Err(("segmentation.width/height", format!("{width}x{height} is outside 1..=8192")));
    }
    let spec = SegmentationSpec { labels: s.labels, resize: resize(s.resize, s.pad_value), mask, width, height };
    Ok(VisionModel::new(shape(input), VisionTask::Segmentation(spec)))
}
