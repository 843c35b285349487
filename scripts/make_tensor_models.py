#!/usr/bin/env python3
"""Write two example tensor models, each with the outputs a test can expect.

Tensor models take and return named tensors described by [[inputs]] and
[[outputs]] in model.toml (no image decoding, no labels). These two exercise
the parts of that path an image classifier never touches; nothing is trained
or downloaded, so the script is deterministic and runs in seconds on a CPU:

  detector/   a tiny conv net shaped like a detector: image UINT8 [32,32,3]
              (height, width, channels: decoded RGB pixels, as a client has
              them; the model converts to float CHW itself) and
              score_threshold FP32 [1] in; a Dict[str, Tensor] out:
              boxes FP32 [8,4], scores FP32 [8], labels INT64 [8],
              keep BOOL [8] (scores >= threshold). Seeded random weights.
              Also example.png, item 0's image as a PNG, so a client can
              send it encoded (decoded, it is exactly item 0's pixels).
  dtypes/     one input of every datatype, each [4], and a tuple of ten
              outputs of the same types: logical_not for BOOL, x + 1 for the
              integers (two's-complement wrapping: 255 -> 0, 127 -> -128,
              INT64 max -> INT64 min), x * 2 for the floats (exact).

Each directory gets model.pt, model.toml and reference.json:

  {"model": "<name>",
   "items": [{"inputs":  {"<input name>":  [flattened values...]},
              "outputs": {"<output name>": [flattened values...]}}, ...]}

one entry per batch item, values flattened row-major over the config's dims
(without the batch dim); BOOL as true/false, integers as integers, floats as
the exact value of the stored float (FP16/BF16/FP32 all fit in a double).
Outputs come from torch.jit.load of the saved file on CPU at batch 1.

    .venv/bin/python scripts/make_tensor_models.py --out models
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from typing import Dict, Tuple

SEED = 20262890  # chosen for wide label and keep margins (MIN_MARGIN)
BOXES, CLASSES, SIZE = 8, 5, 32
# A label or keep flag near a tie could flip between CPU and GPU arithmetic
# (cuDNN convolutions may use TF32, ~1e-3 relative); the script refuses to
# write a reference with a top-2 score gap or score-to-threshold distance
# below this.
MIN_MARGIN = 0.05

DTYPES = [  # (config datatype, input name, torch dtype)
    ("BOOL", "bool", torch.bool), ("UINT8", "uint8", torch.uint8),
    ("INT8", "int8", torch.int8), ("INT16", "int16", torch.int16),
    ("INT32", "int32", torch.int32), ("INT64", "int64", torch.int64),
    ("FP16", "fp16", torch.float16), ("BF16", "bf16", torch.bfloat16),
    ("FP32", "fp32", torch.float32), ("FP64", "fp64", torch.float64),
]


class Detector(nn.Module):
    """Per-item only (no batch norm, no cross-item ops), so batching is exact
    up to float rounding; anchors are a buffer so .to(cuda) moves them."""

    def __init__(self):
        super().__init__()
        # Copies of the globals: TorchScript reads module attributes, not globals.
        self.boxes, self.classes, self.size = BOXES, CLASSES, float(SIZE)
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.box_head = nn.Linear(64, BOXES * 4)
        self.cls_head = nn.Linear(64, BOXES * CLASSES)
        # Anchor centres on a 4x2 grid, so boxes spread over the image.
        ys, xs = torch.meshgrid(torch.arange(2.0), torch.arange(4.0), indexing="ij")
        self.register_buffer("anchors", torch.stack([(xs.flatten() + 0.5) * SIZE / 4,
                                                     (ys.flatten() + 0.5) * SIZE / 2], 1))

    def pixels_to_float(self, image: torch.Tensor) -> torch.Tensor:
        # uint8 [N, H, W, C] as a client sends decoded pixels -> float [N, C, H, W] in [0, 1].
        return image.permute(0, 3, 1, 2).float() / 255.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Seeded random weights give nearly equal features; standardising per
        # item spreads them, so labels and keep flags are far from ties.
        f = self.backbone(x * 4.0 - 2.0)
        return (f - f.mean(1, keepdim=True)) / f.std(1, keepdim=True)

    def class_probs(self, features: torch.Tensor) -> torch.Tensor:
        # x4: a sharper softmax, for the same reason.
        return F.softmax(self.cls_head(features).view(-1, self.boxes, self.classes) * 4.0, -1)

    def forward(self, image: torch.Tensor, score_threshold: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.features(self.pixels_to_float(image))
        deltas = self.box_head(features).view(-1, self.boxes, 4)
        centre = self.anchors + deltas[..., :2] * 4.0
        half = torch.sigmoid(deltas[..., 2:]) * 8.0 + 1.0
        boxes = torch.cat([centre - half, centre + half], -1).clamp(0.0, self.size)
        scores, labels = self.class_probs(features).max(-1)
        return {"boxes": boxes, "scores": scores, "labels": labels,
                "keep": scores >= score_threshold}


class Dtypes(nn.Module):
    """Inputs arrive by position in config order, so these short parameter
    names need not match the config's (which shadow Python builtins)."""

    def forward(self, b: torch.Tensor, u8: torch.Tensor, i8: torch.Tensor, i16: torch.Tensor,
                i32: torch.Tensor, i64: torch.Tensor, f16: torch.Tensor, bf16: torch.Tensor,
                f32: torch.Tensor, f64: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.logical_not(b), u8 + 1, i8 + 1, i16 + 1, i32 + 1, i64 + 1,
                f16 * 2, bf16 * 2, f32 * 2, f64 * 2)


def toml_tensors(section, specs):
    return "".join(f'\n[[{section}]]\nname = "{n}"\ndatatype = "{t}"\ndims = {list(d)}\n'
                   for n, t, d in specs)


def write_config(out, name, description, inputs, outputs, max_batch_size):
    (out / "model.toml").write_text(
        f"# Tensor model written by scripts/make_tensor_models.py; reference.json holds\n"
        f"# example items and their expected outputs.\n"
        f'name = "{name}"\nversion = "1"\nfile = "model.pt"\ndescription = "{description}"\n'
        + toml_tensors("inputs", inputs) + toml_tensors("outputs", outputs)
        + f"\n[batching]\nmax_batch_size = {max_batch_size}\n")


def as_list(t):
    # bf16/fp16 -> float64 is exact; tolist() then gives Python bools/ints/floats.
    return (t.double() if t.is_floating_point() else t).flatten().tolist()


def run_items(model_path, input_names, output_names, items):
    """Run each item alone (batch 1) through the saved file, as a test would."""
    model = torch.jit.load(str(model_path), map_location="cpu").eval()
    out = []
    with torch.no_grad():
        for item in items:
            result = model(*[item[n].unsqueeze(0) for n in input_names])
            if isinstance(result, dict):
                result = [result[n] for n in output_names]
            out.append({"inputs": {n: as_list(item[n]) for n in input_names},
                        "outputs": {n: as_list(r[0]) for n, r in zip(output_names, result)}})
    return out


def safe_threshold(scores):
    """The midpoint of the widest gap between sorted scores, rounded to k/1024
    (exact in FP32), so some boxes are kept, some not, none near the edge."""
    s = sorted(scores.tolist())
    gap, lo = max((b - a, a) for a, b in zip(s, s[1:]))
    return round((lo + gap / 2) * 1024) / 1024


def write_example_png(path):
    """A few coloured rectangles on a dark ground, SIZE x SIZE RGB, saved as a
    PNG; returns its decoded pixels, uint8 [SIZE, SIZE, 3] (PNG is lossless,
    but the pixels used are the ones read back, as a client's decoder sees)."""
    pixels = np.empty((SIZE, SIZE, 3), np.uint8)
    pixels[:] = (30, 34, 48)
    for (y0, y1, x0, x1), rgb in [((3, 14, 2, 15), (220, 40, 40)), ((17, 30, 5, 12), (40, 200, 70)),
                                  ((8, 27, 17, 30), (50, 90, 235)), ((1, 7, 19, 31), (245, 215, 40)),
                                  ((22, 28, 14, 24), (240, 240, 240))]:
        pixels[y0:y1, x0:x1] = rgb
    Image.fromarray(pixels, "RGB").save(path, format="PNG")
    with Image.open(path) as png:
        decoded = np.asarray(png.convert("RGB"))
    assert decoded.shape == (SIZE, SIZE, 3) and np.array_equal(decoded, pixels), "PNG round trip"
    return torch.from_numpy(decoded.copy())


def make_detector(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = Detector().eval()
    # Item 0: example.png's pixels. Items 1-2: blocky noise (8x8 scaled up
    # to SIZE; per-pixel noise would average out), uint8 HWC like a client's.
    noise = (torch.rand(2, 8, 8, 3) * 256).to(torch.uint8)
    noise = noise.repeat_interleave(SIZE // 8, 1).repeat_interleave(SIZE // 8, 2)
    images = torch.cat([write_example_png(out / "example.png")[None], noise])
    with torch.no_grad():
        top2 = model.class_probs(model.features(model.pixels_to_float(images))).topk(2, -1).values
    assert (top2[..., 0] - top2[..., 1]).min() > MIN_MARGIN, "a label is near a tie; change SEED"
    # Thresholds: keep some (item 0, so the PNG alone shows both), keep
    # everything, keep nothing.
    thresholds = [safe_threshold(top2[0, :, 0]), 0.0, 1.0]
    label_margin = (top2[..., 0] - top2[..., 1]).min().item()
    keep_margin = min((top2[i, :, 0] - t).abs().min().item() for i, t in enumerate(thresholds))
    assert keep_margin > MIN_MARGIN, "a score is near its threshold; change SEED"
    print(f"detector margins: top-2 gap >= {label_margin:.4f}, score to threshold >= {keep_margin:.4f}")

    torch.jit.script(model).save(str(out / "model.pt"))
    inputs = [("image", "UINT8", (SIZE, SIZE, 3)), ("score_threshold", "FP32", (1,))]
    outputs = [("boxes", "FP32", (BOXES, 4)), ("scores", "FP32", (BOXES,)),
               ("labels", "INT64", (BOXES,)), ("keep", "BOOL", (BOXES,))]
    write_config(out, "detector", "Tiny seeded conv net shaped like a detector (example tensor model)",
                 inputs, outputs, 8)
    items = [{"image": images[i], "score_threshold": torch.tensor([t])} for i, t in enumerate(thresholds)]
    return run_items(out / "model.pt", [n for n, _, _ in inputs], [n for n, _, _ in outputs], items)


def make_dtypes(out):
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.script(Dtypes()).save(str(out / "model.pt"))
    inputs = [(n, t, (4,)) for t, n, _ in DTYPES]
    outputs = [(f"{n}_out", t, (4,)) for t, n, _ in DTYPES]
    write_config(out, "dtypes", "One input and one output of every datatype, simple exact ops "
                 "(example tensor model)", inputs, outputs, 4)

    def ints(dtype, small):
        info = torch.iinfo(dtype)
        return [info.min, info.max, *small]  # max + 1 wraps to min

    # Item 0: ordinary values, negatives included. Item 1: the boundaries.
    values = [{
        "bool": [True, False, False, True],
        "uint8": [0, 1, 7, 200], "int8": [-5, 0, 3, -100], "int16": [-300, 0, 1000, -1],
        "int32": [-70000, 0, 123456, -1], "int64": [-5_000_000_000, 0, 42, -1],
        "fp16": [-1.5, 0.25, 3.0, 1000.0], "bf16": [-2.5, 0.125, 256.0, -0.0078125],
        "fp32": [-1.25, 0.375, 2.0 ** 35, -7.0], "fp64": [-0.1, 1e-300, 3.25, -2.0e300],
    }, {  # extremes: max/2 doubles to max; smallest normals (no subnormals,
          # which a device that flushes them to zero would not keep)
        "bool": [False, True, False, True],
        "uint8": [0, 255, 254, 128], "int8": ints(torch.int8, [-1, 0]),
        "int16": ints(torch.int16, [-1, 0]), "int32": ints(torch.int32, [-1, 0]),
        "int64": ints(torch.int64, [-1, 0]),
        "fp16": [-65504.0 / 4, 65504.0 / 2, 2.0 ** -14, -1.0],
        "bf16": [-2.0 ** 120, 2.0 ** 126, 2.0 ** -126, -1.0],
        "fp32": [-2.0 ** 126, 3.4028234663852886e38 / 2, 2.0 ** -126, -1.0],
        "fp64": [-2.0 ** 1022, 1.7976931348623157e308 / 2, 2.0 ** -1022, -1.0],
    }]
    items = []
    for v in values:
        item = {n: torch.tensor(v[n], dtype=d) for _, n, d in DTYPES}
        for _, n, d in DTYPES:  # the stored value must be the one written down
            assert as_list(item[n]) == v[n], f"{n}: {v[n]} is not exact in {d}"
        items.append(item)
    return run_items(out / "model.pt", [n for n, _, _ in inputs], [n for n, _, _ in outputs], items)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models",
                    help="the models directory; writes <out>/detector and <out>/dtypes")
    args = ap.parse_args()
    # One thread: the same summation order on every machine this runs on.
    torch.set_num_threads(1)
    for name, make in [("detector", make_detector), ("dtypes", make_dtypes)]:
        out = args.out / name
        items = make(out)
        (out / "reference.json").write_text(json.dumps({"model": name, "items": items}) + "\n")
        print(f"wrote {out}/model.pt, model.toml, reference.json ({len(items)} items)")


if __name__ == "__main__":
    main()
