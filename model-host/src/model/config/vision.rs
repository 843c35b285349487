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

use protocol::shm::layout::MAX_SLOT_SIZE;

use super::{InputConfig, Invalid, ModelKind, VisionConfig, check_input};

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

/// The model.toml fields that make a vision output's declared shape.
pub fn declared_by(output: &str) -> Option<&'static str> {
    match output {
        protocol::vision::OUTPUT_BOXES => Some("detection.max_boxes (boxes are FP32 [max_boxes, 4])"),
        protocol::vision::OUTPUT_SCORES => Some("detection.max_boxes (scores are FP32 [max_boxes])"),
        protocol::vision::OUTPUT_LABELS => Some("detection.max_boxes (labels are INT64 [max_boxes])"),
        protocol::vision::OUTPUT_MASK => Some("segmentation.mask, labels, width and height (mask is FP32 [1 or labels, height, width])"),
        _ => None,
    }
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

/// A vision model: `[input]` checked as a classifier's, then the task.
pub(super) fn kind(input: InputConfig, task: impl FnOnce(&InputConfig) -> Result<VisionModel, Invalid>) -> Result<ModelKind, Invalid> {
    check_input(&input)?;
    let model = task(&input)?;
    let bytes = model.signature.slot_bytes();
    if bytes > MAX_SLOT_SIZE {
        return Err(("input", format!("a batch item needs {bytes} bytes, over the {MAX_SLOT_SIZE}-byte slot limit")));
    }
    Ok(ModelKind::Vision(VisionConfig { input, model }))
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

#[cfg(test)]
mod tests {
    use super::super::{ModelConfigError, ModelKind, load};
    use protocol::vision::{BoxFormat, VisionTask};

    const DETECTOR: &str = r#"
name = "shapes"
version = "1"
file = "model.pt"
[input]
width = 64
height = 48
channels = 3
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[detection]
labels = ["a", "b"]
max_boxes = 16
box_format = "cxcywh"
box_units = "normalized"
resize = "letterbox"
pad_value = 114
[batching]
max_batch_size = 4
"#;

    fn load_text(text: &str) -> Result<super::super::ModelConfig, ModelConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), text).unwrap();
        load(dir.path()).map(|l| l.config)
    }

    fn field_of(text: &str) -> &'static str {
        match load_text(text) {
            Err(ModelConfigError::Invalid { field, .. }) => field,
            other => panic!("not refused by field: {other:?}"),
        }
    }

    #[test]
    fn a_detector_parses_with_defaults_and_its_slot_layout() {
        let config = load_text(DETECTOR).unwrap();
        let ModelKind::Vision(v) = &config.kind else { panic!("not a vision model") };
        let VisionTask::Detection(d) = &v.model.task else { panic!("not a detector") };
        assert_eq!((d.box_format, d.max_detections, d.score_threshold), (BoxFormat::Cxcywh, 16, 0.5));
        assert_eq!(config.item_input_bytes(), 64 * 48 * 3);
        assert_eq!(v.model.signature.outputs[0].dims, [16, 4]);
    }

    #[test]
    fn detection_and_segmentation_fields_are_named() {
        for (from, to, field) in [
            ("max_boxes = 16", "max_boxes = 0", "detection.max_boxes"),
            ("pad_value = 114", "pad_value = 114\nmax_detections = 17", "detection.max_detections"),
            ("pad_value = 114", "pad_value = 114\nscore_threshold = 2.0", "detection.score_threshold"),
            ("labels = [\"a\", \"b\"]", "labels = []", "detection.labels"),
            ("channels = 3", "channels = 4", "input.channels"),
            ("[batching]", "[output]\nkind = \"classification\"\nlabels = [\"x\"]\n[batching]", "detection"),
        ] {
            assert_eq!(field_of(&DETECTOR.replace(from, to)), field, "{to}");
        }
        let start = DETECTOR.find("[detection]").unwrap();
        let end = DETECTOR.find("[batching]").unwrap();
        let segmenter = |body: &str| format!("{}[segmentation]\n{body}\n{}", &DETECTOR[..start], &DETECTOR[end..]);
        assert_eq!(field_of(&segmenter("mask = \"alpha\"\nlabels = [\"bg\", \"fg\", \"x\"]\nresize = \"stretch\"")), "segmentation.labels");
        assert_eq!(field_of(&segmenter("mask = \"classes\"\nlabels = [\"bg\"]\nresize = \"stretch\"")), "segmentation.labels");
        let config = load_text(&segmenter("mask = \"classes\"\nlabels = [\"bg\", \"a\", \"b\"]\nresize = \"stretch\"\nwidth = 32\nheight = 24")).unwrap();
        let ModelKind::Vision(v) = &config.kind else { panic!("not a vision model") };
        assert_eq!(v.model.signature.outputs[0].dims, [3, 24, 32]);
        // An unknown box format is a parse error naming the value.
        let err = load_text(&DETECTOR.replace("\"cxcywh\"", "\"yxyx\"")).unwrap_err().to_string();
        assert!(err.contains("yxyx") && err.contains("box_format"), "{err}");
    }
}
