//! model.toml's `[optimization]`: how the model runs on its device.

use serde::Deserialize;

/// How the model runs on its device; measured in docs/benchmarks.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizationConfig {
    /// The dtype the weights are cast to and the input normalised into.
    #[serde(default)]
    pub precision: Precision,
    /// Keep the input NHWC-strided (channels last) instead of making it
    /// contiguous NCHW: the layout tensor cores want for fp16/bf16
    /// convolutions, and free, because the pixels arrive as HWC.
    #[serde(default)]
    pub channels_last: bool,
    /// An image classifier's module is frozen (weights become constants,
    /// conv + batch norm folded) and `optimize_for_inference`d at load, as
    /// in-process PyTorch serving does; false runs the file as saved. A
    /// module that cannot be frozen runs as saved, with a log line saying why.
    #[serde(default = "enabled")]
    pub freeze: bool,
    /// On a GPU, each batch shape's forward pass is captured as a CUDA graph
    /// at warm-up and replayed (one launch instead of hundreds of kernels);
    /// a shape that cannot be captured runs eagerly, with a log line.
    #[serde(default = "enabled")]
    pub cuda_graphs: bool,
    /// cuDNN times every candidate kernel on each new shape at warm-up.
    /// Off by default: on an H200 it cost ResNet-50 fp16 1.45 s per batch
    /// shape at start for no measurable speed (within 2% at batch 32 and
    /// 128, docs/benchmarks.md); cuDNN's heuristic choice is taken at once.
    #[serde(default)]
    pub cudnn_benchmark: bool,
    /// On a GPU with CUDA graphs, a classifier reports READY once four of
    /// its batch shapes are warmed up and captured (the smallest, the
    /// largest and two between: [`super::shapes_before_ready`]); the others
    /// are warmed and captured while it serves, on threads and CUDA streams
    /// of their own, and until one is ready a batch pads to the next ready
    /// shape, so no request waits on the warm-up. false: every shape before
    /// READY.
    #[serde(default = "enabled")]
    pub warm_up_after_ready: bool,
    /// With `freeze`, the module is frozen after READY instead of before
    /// it: until its frozen copy is ready the model serves as loaded and
    /// cast (its shapes warmed, and on a GPU captured, as usual), then the
    /// frozen module serves and its graphs replace the first ones shape by
    /// shape. Freezing is TorchScript's graph passes on a CPU core: 1.2 s
    /// of a 2.5 GB ViT's start on an H100 (docs/benchmarks.md, "Big
    /// models"). An answer may then depend on when it came, by the
    /// rounding that freezing changes (conv + batch norm folded). Off by
    /// default: not yet measured on a GPU. Ignored with the frozen-module
    /// cache, whose entry is frozen already.
    #[serde(default)]
    pub freeze_after_ready: bool,
}

fn enabled() -> bool {
    true
}

impl Default for OptimizationConfig {
    fn default() -> Self {
        Self { precision: Precision::default(), channels_last: false, freeze: true, cuda_graphs: true, cudnn_benchmark: false, warm_up_after_ready: true, freeze_after_ready: false }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Fp16 => tch::Kind::Half,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }
}
