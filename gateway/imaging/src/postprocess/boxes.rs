//! A detector's outputs (boxes, scores, labels in the slot) to detections
//! in the client's image: the declared box layout to corners in input
//! pixels, the inverse resize, the score threshold, best first, at most
//! `max_detections`. No NMS here: the model does its own (model.toml says so).

use protocol::TensorSignature;
use protocol::vision::{BoxFormat, BoxUnits, DetectionSpec};
use serde::Serialize;

use super::Transform;

/// One box found, in the client's image.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Detection {
    pub label: String,
    pub index: u32,
    pub score: f32,
    /// x0, y0, x1, y1 in the client's image's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// What a request asked for (validated against the model's limits).
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    pub score_threshold: f32,
    pub max_detections: u32,
}

fn f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn i64s(bytes: &[u8]) -> impl Iterator<Item = i64> + '_ {
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

/// The detections in one item's output area (`outputs`, laid out by `signature`).
pub fn detections(outputs: &[u8], signature: &TensorSignature, spec: &DetectionSpec, t: &Transform, pick: Selection) -> Vec<Detection> {
    let at = signature.output_placements();
    let (Some(boxes), Some(scores), Some(labels)) = (outputs.get(at[0].range()), outputs.get(at[1].range()), outputs.get(at[2].range())) else {
        return Vec::new();
    };
    let boxes: Vec<f32> = f32s(boxes).collect();
    let mut found: Vec<Detection> = boxes
        .chunks_exact(4)
        .zip(f32s(scores))
        .zip(i64s(labels))
        .filter(|((_, score), _)| score.is_finite() && *score >= pick.score_threshold)
        .filter_map(|((b, score), label)| {
            let [x0, y0, x1, y1] = corners([b[0], b[1], b[2], b[3]], spec, t.input);
            let (x0, y0) = t.map_back(x0, y0);
            let (x1, y1) = t.map_back(x1, y1);
            // A box wholly in the letterbox padding, or not finite, is nothing.
            if !(x1 > x0 && y1 > y0) {
                return None;
            }
            let index = u32::try_from(label).ok()?;
            let name = spec.labels.get(index as usize).cloned().unwrap_or_else(|| index.to_string());
            Some(Detection { label: name, index, score, bbox: [x0, y0, x1, y1] })
        })
        .collect();
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    found.truncate(pick.max_detections as usize);
    found
}

/// One box in the declared layout to x0, y0, x1, y1 in input pixels.
fn corners(b: [f32; 4], spec: &DetectionSpec, input: (u32, u32)) -> [f32; 4] {
    let [x0, y0, x1, y1] = match spec.box_format {
        BoxFormat::Xyxy => b,
        BoxFormat::Cxcywh => [b[0] - b[2] / 2.0, b[1] - b[3] / 2.0, b[0] + b[2] / 2.0, b[1] + b[3] / 2.0],
    };
    let (sx, sy) = match spec.box_units {
        BoxUnits::Normalized => (input.0 as f32, input.1 as f32),
        BoxUnits::Pixels => (1.0, 1.0),
    };
    [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ImageShape;
    use protocol::vision::{Resize, VisionModel, VisionTask};

    fn spec(format: BoxFormat, units: BoxUnits) -> DetectionSpec {
        DetectionSpec {
            labels: vec!["a".into(), "b".into()],
            resize: Resize::Letterbox { pad: 0 },
            box_format: format,
            box_units: units,
            max_boxes: 3,
            score_threshold: 0.5,
            max_detections: 3,
        }
    }

    fn slot(spec: &DetectionSpec, boxes: [[f32; 4]; 3], scores: [f32; 3], labels: [i64; 3]) -> (Vec<u8>, TensorSignature) {
        let input = ImageShape { width: 64, height: 64, channels: 3 };
        let signature = VisionModel::new(input, VisionTask::Detection(spec.clone())).signature;
        let at = signature.output_placements();
        let mut out = vec![0u8; signature.output_bytes() as usize];
        let b: Vec<u8> = boxes.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
        out[at[0].range()].copy_from_slice(&b);
        out[at[1].range()].copy_from_slice(&scores.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        out[at[2].range()].copy_from_slice(&labels.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        (out, signature)
    }

    #[test]
    fn normalised_centre_boxes_map_to_the_original_through_the_letterbox() {
        let spec = spec(BoxFormat::Cxcywh, BoxUnits::Normalized);
        // 160x100 into 64x64: content 64x40 at (0, 12); the original is 2.5x.
        let t = Transform::new(spec.resize, (160, 100), (64, 64));
        let (out, sig) = slot(&spec, [[0.5, 0.5, 0.25, 0.125], [0.1, 0.5, 0.1, 0.1], [0.0; 4]], [0.6, 0.9, 0.1], [1, 0, 0]);
        let found = detections(&out, &sig, &spec, &t, Selection { score_threshold: 0.5, max_detections: 3 });
        assert_eq!(found.len(), 2, "{found:?}");
        // Best first: the second row (score 0.9).
        assert_eq!((found[0].label.as_str(), found[0].index), ("a", 0));
        // Centre (32, 32) +- (8, 4) input px -> x 24..40 -> 60..100; y 28..36 -> 16..24 -> 40..60.
        assert_eq!(found[1].bbox, [60.0, 40.0, 100.0, 60.0]);
        assert_eq!(found[1].label, "b");
        let one = detections(&out, &sig, &spec, &t, Selection { score_threshold: 0.0, max_detections: 1 });
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn pixel_corner_boxes_through_a_stretch() {
        let mut spec = spec(BoxFormat::Xyxy, BoxUnits::Pixels);
        spec.resize = Resize::Stretch;
        let t = Transform::new(spec.resize, (128, 32), (64, 64));
        let (out, sig) = slot(&spec, [[16.0, 16.0, 32.0, 48.0], [0.0; 4], [0.0; 4]], [0.7, 0.0, 0.0], [0, 0, 0]);
        let found = detections(&out, &sig, &spec, &t, Selection { score_threshold: 0.5, max_detections: 3 });
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bbox, [32.0, 8.0, 64.0, 24.0]);
    }
}
