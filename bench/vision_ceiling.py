#!/usr/bin/env python3
"""The in-process PyTorch ceiling for a vision model (detection or
segmentation; a model directory with model.pt + model.toml): the best one
Python process does with the same file on the same GPU, for the split to be
measured against (docs/benchmarks.md). Rows per batch size:

  saved      torch.jit.load as saved, fp32, eager, inference_mode
  graph16    frozen + optimize_for_inference, fp16, channels-last input,
             replayed from a CUDA graph over a static input (the model alone)
  pixels16   the serving pipeline for raw pixels: uint8 NHWC batches in
             pinned host memory -> device -> normalise -> graph16 -> the
             answer finished on the GPU (an alpha mask as 8-bit, or the
             boxes) -> pinned host memory
  photo16    the pipeline for photos: JPEG files in memory -> nvJPEG
             (torchvision.io.decode_jpeg on the GPU) -> resize to the input
             (stretch, or letterbox with its padding) -> normalise ->
             graph16 -> answers at the photo's size: the mask resized back
             and reduced to per-class pixel counts and boxes (the JSON
             answer), or the boxes mapped back to the photo's pixels

Throughput is wall-clock (the decode is part CPU), median of --repeats runs;
at batch 1 the same figure is the latency of one image.

    python3 bench/vision_ceiling.py --model /tmp/models/bench-segmenter --photos photos --batches 1,32 --json out.jsonl
"""
import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import decode_jpeg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceiling import graph_of  # noqa: E402  (the same capture as the classifier's ceiling)
from photo_ceiling import timed  # noqa: E402  (wall-clock: the decode is part CPU)


class Task:
    """What the model's answer is, and how it is finished on the GPU."""

    def __init__(self, cfg):
        self.size = (cfg["input"]["height"], cfg["input"]["width"])
        self.segmentation = "segmentation" in cfg
        spec = cfg.get("segmentation") or cfg["detection"]
        self.letterbox = spec.get("resize") == "letterbox"
        self.pad = spec.get("pad_value", 0)
        self.threshold = cfg.get("detection", {}).get("score_threshold", 0.5)

    def to_input(self, images):
        """A [B, 3, h, w] uint8 batch (one photo size) -> [B, 3, H, W] float
        at the model's size, and the letterbox's scale and offset."""
        h, w = images.shape[-2:]
        H, W = self.size
        if not self.letterbox:
            return F.interpolate(images.float(), size=(H, W), mode="bilinear", antialias=True), None
        scale = min(H / h, W / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (H - nh) // 2, (W - nw) // 2
        canvas = torch.full((images.shape[0], images.shape[1], H, W), float(self.pad), device=images.device)
        canvas[:, :, top:top + nh, left:left + nw] = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", antialias=True)
        return canvas, (scale, left, top)

    def finish_pixels(self, out):
        """The answer at the model's size, small, on the GPU."""
        if self.segmentation:
            return (out.float() * 255).round().to(torch.uint8)
        boxes, scores, labels = out
        return boxes.float(), scores.float(), labels

    def finish_photo(self, out, photo_hw, letterbox):
        """The answer at the photo's size: per-class pixel counts and boxes of
        the mask resized back, or the boxes in the photo's pixels."""
        h, w = photo_hw
        if self.segmentation:
            mask = F.interpolate(out.float(), size=(h, w), mode="bilinear")[:, 0] >= 0.5
            rows, cols = mask.any(2), mask.any(1)
            return mask.sum((1, 2)), rows.float().argmax(1), cols.float().argmax(1)
        boxes, scores, labels = out
        b = boxes.float()
        H, W = self.size
        cx, cy, bw, bh = b[..., 0] * W, b[..., 1] * H, b[..., 2] * W, b[..., 3] * H
        if letterbox is not None:
            scale, left, top = letterbox
            cx, cy, bw, bh = (cx - left) / scale, (cy - top) / scale, bw / scale, bh / scale
        else:
            cx, cy, bw, bh = cx * w / W, cy * h / H, bw * w / W, bh * h / H
        xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        return xyxy, scores.float(), labels, scores >= self.threshold


def to_host(answer):
    items = answer if isinstance(answer, tuple) else (answer,)
    return [t.to("cpu", non_blocking=True) for t in items]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--photos", type=Path, help="a folder of .jpg files of one size (bench/make_photos.py)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rows", default="saved,graph16,pixels16,photo16")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="append one JSON object per measurement")
    ap.add_argument("--label", default=None, help="default: ceiling-<model name>")
    args = ap.parse_args()
    device = torch.device("cuda")
    cfg = tomllib.loads((args.model / "model.toml").read_text())
    label = args.label or f"ceiling-{cfg['name']}"
    task = Task(cfg)
    H, W = task.size
    rows = args.rows.split(",")
    out = open(args.json, "a") if args.json else None
    mean = torch.tensor(cfg["input"]["mean"], device=device).view(1, -1, 1, 1)
    std = torch.tensor(cfg["input"]["std"], device=device).view(1, -1, 1, 1)

    def normalise(x):
        return ((x / 255.0 - mean) / std).half().contiguous(memory_format=torch.channels_last)

    def record(row, batch, seconds):
        r = {"label": f"{label}-{row}", "batch": batch, "ms_per_batch": round(seconds * 1e3, 4), "img_per_s": round(batch / seconds, 1)}
        print(json.dumps(r), flush=True)
        if out:
            out.write(json.dumps(r) + "\n")
            out.flush()

    started = time.perf_counter()
    saved = torch.jit.load(str(args.model / "model.pt"), map_location=device).eval()
    # Cast before freezing: a frozen module's weights are constants that .to() does not reach.
    frozen16 = torch.jit.load(str(args.model / "model.pt"), map_location=device).eval().half()
    frozen16 = torch.jit.optimize_for_inference(torch.jit.freeze(frozen16))
    print(f"loaded and froze in {time.perf_counter() - started:.2f} s; torch {torch.__version__}, {torch.cuda.get_device_name()}", file=sys.stderr)
    files = [torchvision.io.read_file(str(p)) for p in sorted(args.photos.glob("*.jpg"))] if args.photos else []
    photo_hw = decode_jpeg(files[0]).shape[-2:] if files else None

    for b in [int(x) for x in args.batches.split(",")]:
        pixels = torch.randint(0, 256, (b, H, W, 3), dtype=torch.uint8).pin_memory()
        x32 = ((pixels.to(device).permute(0, 3, 1, 2).float() / 255.0 - mean) / std)
        if "saved" in rows:
            with torch.inference_mode():
                record("saved", b, timed(lambda: saved(x32), args.seconds, args.repeats))
        static_in = normalise(pixels.to(device).permute(0, 3, 1, 2).float())
        graph, static_out = graph_of(frozen16, static_in)
        if "graph16" in rows:
            record("graph16", b, timed(graph.replay, args.seconds, args.repeats))
        if "pixels16" in rows:
            def pixels_step():
                with torch.inference_mode():
                    static_in.copy_(normalise(pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float()))
                    graph.replay()
                    to_host(task.finish_pixels(static_out))
            record("pixels16", b, timed(pixels_step, args.seconds, args.repeats))
        if "photo16" in rows and files:
            chosen = [files[i % len(files)] for i in range(b)]

            def photo_step():
                with torch.inference_mode():
                    images = torch.stack(decode_jpeg(chosen, device="cuda"))
                    x, letterbox = task.to_input(images)
                    static_in.copy_(normalise(x))
                    graph.replay()
                    to_host(task.finish_photo(static_out, photo_hw, letterbox))
            record("photo16", b, timed(photo_step, args.seconds, args.repeats))
        del graph, static_out
    if out:
        out.close()


if __name__ == "__main__":
    main()
