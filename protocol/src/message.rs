//! Every message either side may send on the control channel.
//!
//! Messages are small: ids, slot references, shapes, top-k answers. Pixels
//! live in shared memory (see [`crate::shm`]) and are named by a [`SlotRef`].

use serde::{Deserialize, Serialize};

/// Names one leased slot. The generation changes on every lease, so a
/// gateway that reuses an old reference gets an error, never another
/// request's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotRef {
    pub index: u32,
    pub generation: u64,
}

/// Gateway -> host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GatewayMessage {
    /// First message on a connection; `gateway` is a name for the host's logs.
    Hello { protocol_version: u32, gateway: String },
    /// The gateway has mapped the segment named in the welcome.
    SegmentMapped,
    /// Asks for a slot to write one request's pixels into.
    Lease { request_id: u64 },
    /// Gives back a leased slot that was never sent (the request failed first).
    Release { slot: SlotRef },
    /// Runs the model on the pixels in a leased slot; the slot returns to the
    /// pool when the host answers.
    Infer(InferRequest),
    /// The HTTP client went away: skip the request if it has not run yet.
    Cancel { request_id: u64 },
    /// Asks for the host's counters and startup breakdown.
    Status { request_id: u64 },
    /// Starts a job on an iterative model ([`crate::jobs`]); answered [`HostMessage::Job`].
    JobSubmit(crate::jobs::JobSubmit),
    /// Asks where a job is; answered [`HostMessage::Job`].
    JobStatus { request_id: u64, id: String },
    /// Cancels a job (between two of its steps); answered [`HostMessage::Job`].
    JobCancel { request_id: u64, id: String },
    /// Asks for a finished job's output; answered [`HostMessage::JobResult`].
    JobResult { request_id: u64, id: String },
}

/// One request: what is in its slot, and what the gateway asks of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    pub request_id: u64,
    pub slot: SlotRef,
    /// What to do with the slot's contents; must match the model's kind.
    pub ask: Ask,
    /// Time left before the client's deadline, in microseconds, when sent.
    /// Relative, so that the two processes need not share a clock.
    pub budget_us: u64,
    /// The HTTP request's id (X-Request-Id), for the host's log lines about
    /// this request. At most [`MAX_REQUEST_TAG`] bytes.
    pub tag: String,
    /// What the slot holds: the model's input, or an image for the host to
    /// decode (only to a host whose [`ModelInfo::host_decode`] says so).
    pub payload: Payload,
    /// The gateway's span that waits for this answer, when the gateway
    /// exports traces: the host's spans for the request become its
    /// children. None costs one byte.
    pub trace: Option<crate::TraceParent>,
}

/// The form of a request's input in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The model's input, as [`Ask`] says (pixels or tensors).
    Input,
    /// The first `len` bytes of the slot are a JPEG file; the host decodes
    /// it, turns it upright by its EXIF `orientation` (1-8, which the
    /// gateway read from the header) and resizes it to the model's input.
    Jpeg { len: u32, orientation: u8 },
}

/// What a request asks of the host, one variant per [`ModelKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ask {
    /// A classifier: the slot holds one image laid out as the model's
    /// [`ImageShape`]; answer the `k` best classes ([`Output::TopK`]).
    TopK { k: u32 },
    /// A tensor model: the slot holds one batch item's inputs at the
    /// signature's placements; the host writes the outputs over them and
    /// answers [`Output::InSlot`]. A vision model's requests ask this too
    /// (its one input is the image) for `/v2`, which returns them raw.
    Tensors,
    /// A vision model's answer for `/v1/.../predict`: as [`Ask::Tensors`],
    /// except that a segmentation mask comes back 8-bit at the mask's
    /// size, made on the device: the alpha as 0-255 for an alpha mask, or
    /// each pixel's class index for class scores; `width * height` bytes
    /// at the mask output's offset (a quarter of an alpha mask's fp32, and
    /// 1/(4 x classes) of class scores, read back and copied).
    Answer,
}

/// Longest request tag a gateway may send.
pub const MAX_REQUEST_TAG: usize = 64;

/// Host -> gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    Welcome(Welcome),
    /// The handshake failed; the host closes the connection after this.
    Refused { reason: String },
    /// Sent to every gateway whenever the host's phase changes.
    PhaseChanged(Phase),
    Leased { request_id: u64, slot: SlotRef },
    LeaseRefused { request_id: u64, reason: Refusal },
    InferDone { request_id: u64, result: Result<Prediction, InferError> },
    Status { request_id: u64, status: HostStatus },
    /// A job as it is after the submit, status or cancel `request_id` asked for.
    Job { request_id: u64, result: Result<crate::jobs::JobView, crate::jobs::JobError> },
    JobResult { request_id: u64, result: Result<crate::jobs::JobOutput, crate::jobs::JobError> },
    /// The gateway broke the protocol; the host closes the connection after this.
    Violation { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u32,
    pub host_pid: u32,
    pub model: ModelInfo,
    pub segment: SegmentInfo,
    pub phase: Phase,
}

/// What a gateway needs to know about the model to prepare its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub kind: ModelKind,
    pub max_batch_size: u32,
    /// Where the model runs, e.g. "cpu" or "cuda:0".
    pub device: String,
    /// Set when the host decodes JPEGs itself (on its GPU) for an image
    /// classifier: which images the gateway should send it encoded.
    pub host_decode: Option<HostDecode>,
}

/// The host's offer to decode JPEGs (model.toml's `decode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDecode {
    /// Which JPEGs go to the host.
    pub policy: DecodePolicy,
    /// The largest JPEG file a slot takes; a larger one is decoded by the
    /// gateway.
    pub max_bytes: u64,
    /// The most pixels (from the JPEG's header) the host decodes.
    pub max_pixels: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecodePolicy {
    /// Every JPEG (`decode = "host"`).
    Always,
    /// A JPEG of at least `min_pixels` (`decode = "auto"`).
    Auto { min_pixels: u64 },
}

/// The kinds of model a host serves, each with what its requests carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelKind {
    /// Images in (uint8 pixels, `input`), class probabilities out.
    Classifier { input: ImageShape, labels: Vec<String> },
    /// Named, typed tensors in and out, laid out in each slot by the signature.
    Tensors(crate::TensorSignature),
    /// Images in (uint8 pixels, `input`), detection or segmentation
    /// outputs in the slot at the signature's placements; the gateway maps
    /// them back onto the client's image (see [`crate::vision`]).
    Vision(crate::vision::VisionModel),
    /// Integer parameters in, an image out after many steps: served as
    /// jobs ([`crate::jobs`]), never through slots.
    Iterative(crate::jobs::IterativeModel),
}

/// An image input: height x width x channels uint8, row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageShape {
    pub width: u32,
    pub height: u32,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: u32,
}

impl ImageShape {
    /// Bytes of one image.
    pub fn len(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * u64::from(self.channels)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ModelKind {
    /// Whether requests prepared for one serve the other: the same kind
    /// and signature. An iterative model's host tag and queue bound name
    /// its host, not its signature, so two replicas of one model differ
    /// there and are still the same.
    pub fn same_signature(&self, other: &ModelKind) -> bool {
        match (self, other) {
            (ModelKind::Iterative(a), ModelKind::Iterative(b)) => a.steps == b.steps && a.params == b.params && a.output == b.output,
            (a, b) => a == b,
        }
    }
}

impl ModelInfo {
    /// Bytes a slot must hold: one image (or one JPEG file, when the host
    /// decodes), or a tensor model's inputs or outputs for one batch item,
    /// whichever is larger.
    pub fn slot_len(&self) -> u64 {
        let input = match &self.kind {
            ModelKind::Classifier { input, .. } => input.len(),
            ModelKind::Tensors(signature) => signature.slot_bytes(),
            ModelKind::Vision(v) => v.signature.slot_bytes(),
            // No request goes through a slot; the segment keeps one byte
            // per slot so that its layout stays valid.
            ModelKind::Iterative(_) => 1,
        };
        input.max(self.host_decode.map_or(0, |d| d.max_bytes))
    }

    /// The classifier's input and labels; None for a tensor model.
    pub fn classifier(&self) -> Option<(ImageShape, &[String])> {
        match &self.kind {
            ModelKind::Classifier { input, labels } => Some((*input, labels)),
            ModelKind::Tensors(_) | ModelKind::Vision(_) | ModelKind::Iterative(_) => None,
        }
    }

    /// The slot's tensor layout (a tensor model's, or a vision model's
    /// image and outputs); None for a classifier.
    pub fn tensors(&self) -> Option<&crate::TensorSignature> {
        match &self.kind {
            ModelKind::Tensors(signature) => Some(signature),
            ModelKind::Vision(v) => Some(&v.signature),
            ModelKind::Classifier { .. } | ModelKind::Iterative(_) => None,
        }
    }

    /// A detection or segmentation model; None otherwise.
    pub fn vision(&self) -> Option<&crate::vision::VisionModel> {
        match &self.kind {
            ModelKind::Vision(v) => Some(v),
            _ => None,
        }
    }

    /// An iterative model (served as jobs); None otherwise.
    pub fn iterative(&self) -> Option<&crate::jobs::IterativeModel> {
        match &self.kind {
            ModelKind::Iterative(m) => Some(m),
            _ => None,
        }
    }
}

/// The gateway's view of the segment the host made for its connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// The POSIX shared-memory name, e.g. "/model-host.1234.7".
    pub os_id: String,
    pub slot_count: u32,
    pub slot_size: u64,
}

/// Where the host is in its life. Gateways report it in /health/ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    Starting,
    /// Reading the model file: bytes read of its size (0 of 0 before the
    /// first read); once all are read, freezing and casting.
    Loading { read: u64, total: u64 },
    Warming { done: u32, total: u32 },
    Ready(StartupTimings),
    Draining,
    Failed { reason: String },
}

impl Phase {
    pub fn is_ready(&self) -> bool {
        matches!(self, Phase::Ready(_))
    }

    /// A short word for logs, metrics and health bodies.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Loading { .. } => "loading",
            Phase::Warming { .. } => "warming",
            Phase::Ready(_) => "ready",
            Phase::Draining => "draining",
            Phase::Failed { .. } => "failed",
        }
    }
}

impl Phase {
    /// One line for people: systemd's status, the gateways' `/v1/hosts`
    /// and `/health/ready`, e.g. "loading weights 43% (1.1 of 2.5 GB)".
    pub fn describe(&self) -> String {
        // Both figures in the file size's unit: "1.1 of 2.5 GB", "3 of 12 MB".
        let (unit, scale, places) = match self {
            Phase::Loading { total, .. } if *total >= 1_000_000_000 => ("GB", 1e9, 1),
            Phase::Loading { total, .. } if *total >= 1_000_000 => ("MB", 1e6, 0),
            _ => ("KB", 1e3, 0),
        };
        let amount = |bytes: u64| format!("{:.*}", places, bytes as f64 / scale);
        match self {
            Phase::Starting => "starting".into(),
            Phase::Loading { total: 0, .. } => "loading weights".into(),
            Phase::Loading { read, total } if read >= total => format!("weights read ({} {unit}); freezing and casting", amount(*total)),
            Phase::Loading { read, total } => format!("loading weights {}% ({} of {} {unit})", read * 100 / total, amount(*read), amount(*total)),
            Phase::Warming { done, total } => format!("warming {done}/{total}"),
            Phase::Ready(t) => format!(
                "ready (ms since start: device {:.0}, weights {:.0}, warm-up done {:.0})",
                t.device_ready_ms, t.weights_loaded_ms, t.warmup_done_ms
            ),
            Phase::Draining => "draining".into(),
            Phase::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// Milliseconds from the host's process start to each startup milestone.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartupTimings {
    pub device_ready_ms: f64,
    pub weights_loaded_ms: f64,
    pub warmup_done_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The model is still loading or warming, or the host is draining.
    NotReady,
    /// Every slot of this connection is in use.
    NoFreeSlot,
    /// The inference queue is full.
    QueueFull,
}

/// The host's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub output: Output,
    pub timings: HostTimings,
}

/// What a request got, one variant per [`Ask`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// (class index, probability), best first, at most the `k` asked for.
    TopK(Vec<(u32, f32)>),
    /// The outputs are in the request's slot, at the signature's output
    /// placements (see [`crate::tensor`]), written before this answer.
    InSlot,
}

/// Where the host spent a request's time, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct HostTimings {
    /// From arrival at the host to the start of its batch.
    pub queue_us: u64,
    /// The batch's copy to the device, pre-processing, forward pass and readback.
    pub inference_us: u64,
    pub batch_size: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InferError {
    /// The request's budget ran out before it reached the model.
    DeadlineExceeded,
    /// The slot reference or the shape does not match what the host leased.
    InvalidRequest(String),
    QueueFull,
    NotReady,
    /// The gateway cancelled it (its client went away) before it ran.
    Cancelled,
    /// The JPEG the host was sent to decode ([`Payload::Jpeg`]) is not one
    /// it can decode: the client's file, so the client's error.
    BadImage(String),
    /// The model failed on this batch; the message is for the host's log.
    Model(String),
}

/// Counters a gateway may fetch; also what the tests use to prove that a
/// gateway restart does not reload the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStatus {
    pub pid: u32,
    pub phase: Phase,
    /// How many times this process has loaded the model: 1 once ready.
    pub model_loads: u32,
    pub connections: u32,
    pub leased_slots: u32,
    pub requests_done: u64,
    pub batches_done: u64,
    pub device: String,
    /// Requests queued or running now.
    pub queue_depth: u64,
    /// (batch shape, batches run at it), for the batch size histogram.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<[u64; 2]>))]
    pub batches_by_size: Vec<(u32, u64)>,
    /// Time spent copying slots out of shared memory (and decoding the
    /// JPEGs sent encoded), over all batches.
    pub copy_seconds_total: f64,
    /// JPEGs the host decoded (requests sent with [`Payload::Jpeg`]).
    pub jpegs_decoded: u64,
    /// Time spent in the model (upload, pre-processing, forward, readback).
    pub inference_seconds_total: f64,
    /// (reason, count) of requests refused or skipped without GPU work.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<Value>>))]
    pub refused: Vec<(String, u64)>,
    /// Batch sizes replayed from a captured CUDA graph; the others run
    /// eagerly (all of them off the GPU).
    pub graph_batch_sizes: Vec<u32>,
    /// An iterative model's jobs and steps; None for other kinds.
    pub jobs: Option<crate::jobs::JobCounts>,
    /// The host's resident memory, its model's bytes on the device, and
    /// its GPU's memory, utilisation and power.
    pub memory: crate::memory::HostMemory,
    /// (reason, spans) the host never exported; empty with traces off.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Vec<Value>>))]
    pub spans_dropped: Vec<(String, u64)>,
}

impl GatewayMessage {
    /// The variant's name, for errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayMessage::Hello { .. } => "Hello",
            GatewayMessage::SegmentMapped => "SegmentMapped",
            GatewayMessage::Lease { .. } => "Lease",
            GatewayMessage::Release { .. } => "Release",
            GatewayMessage::Infer(_) => "Infer",
            GatewayMessage::Cancel { .. } => "Cancel",
            GatewayMessage::Status { .. } => "Status",
            GatewayMessage::JobSubmit(_) => "JobSubmit",
            GatewayMessage::JobStatus { .. } => "JobStatus",
            GatewayMessage::JobCancel { .. } => "JobCancel",
            GatewayMessage::JobResult { .. } => "JobResult",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loading_host_says_how_far_it_is() {
        assert_eq!(Phase::Loading { read: 0, total: 0 }.describe(), "loading weights");
        assert_eq!(Phase::Loading { read: 1_100_000_000, total: 2_530_000_000 }.describe(), "loading weights 43% (1.1 of 2.5 GB)");
        assert_eq!(Phase::Loading { read: 2_530_000_000, total: 2_530_000_000 }.describe(), "weights read (2.5 GB); freezing and casting");
        assert_eq!(Phase::Loading { read: 3_200_000, total: 12_000_000 }.describe(), "loading weights 26% (3 of 12 MB)");
        assert_eq!(Phase::Warming { done: 1, total: 4 }.describe(), "warming 1/4");
    }
}
