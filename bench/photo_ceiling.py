#!/usr/bin/env python3
"""The in-process PyTorch ceiling for photos: what one Python process does
with JPEG files already in memory on the same GPU, for the host's GPU decode
(model.toml `decode = "host"`) to be measured against (docs/benchmarks.md).

Rows, per batch size, wall-clock (the decode is part CPU, part GPU), median
of --repeats runs:

  decode    torchvision.io.decode_jpeg(files, device="cuda"): nvJPEG, the
            hardware engines where they take the file
  resize    + an antialiased bilinear resize to the model's size on the GPU
  model     + normalise + the model (frozen, optimize_for_inference, in the
            model.toml's precision, channels-last), i.e. photos to answers

    python3 bench/photo_ceiling.py --images photos/ --model models/resnet50 --batches 8,32,64
"""
import argparse
import json
import statistics
import time
import tomllib
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import decode_jpeg


def timed(fn, seconds, repeats):
    """Median seconds per call of fn() over `repeats` runs of `seconds` each."""
    fn()
    torch.cuda.synchronize()
    runs = []
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn()
            calls += 1
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--model", type=Path, help="a model directory (model.pt + model.toml)")
    ap.add_argument("--batches", default="8,32,64")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    files = [torchvision.io.read_file(str(p)) for p in sorted(args.images.glob("*.jpg"))]
    size, run_model = 224, None
    if args.model:
        cfg = tomllib.loads((args.model / "model.toml").read_text())
        size = cfg["input"]["height"]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {len(files)} files, {torch.cuda.get_device_name()}", flush=True)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        chosen = [files[i % len(files)] for i in range(batch)]

        def decode():
            return decode_jpeg(chosen, device="cuda")

        def resize():
            # One resize for the batch (the files are all of one size).
            return F.interpolate(torch.stack(decode()).float(), size=(size, size), mode="bilinear", antialias=True)

        row = {"batch": batch, "files": len(files), "resize": resize}
        with torch.no_grad():
            row["decode_img_s"] = batch / timed(decode, args.seconds, args.repeats)
            row["resize_img_s"] = batch / timed(resize, args.seconds, args.repeats)
        print(f"batch {batch}: decode {row['decode_img_s']:.0f} img/s, + resize {row['resize_img_s']:.0f}", flush=True)
        rows.append(row)
    if args.model:
        # Loaded after the decode rows: only the last column needs it.
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.get("optimization", {}).get("precision"), torch.float32)
        # Cast before freezing, as bench/ceiling.py does: a frozen module's
        # weights are constants that .to() does not reach.
        module = torch.jit.load(str(args.model / "model.pt"), map_location="cuda").eval().to(dtype)
        module = torch.jit.optimize_for_inference(torch.jit.freeze(module))
        mean = torch.tensor(cfg["input"]["mean"], device="cuda").view(1, -1, 1, 1)
        std = torch.tensor(cfg["input"]["std"], device="cuda").view(1, -1, 1, 1)

        def run_model(x):
            x = ((x / 255.0 - mean) / std).to(dtype).contiguous(memory_format=torch.channels_last)
            return module(x).float().softmax(1).topk(5)

        for row in rows:
            resize = row["resize"]
            with torch.no_grad():
                row["model_img_s"] = row["batch"] / timed(lambda: run_model(resize()), args.seconds, args.repeats)
    out = open(args.json, "a") if args.json else None
    print("| batch | decode img/s | + resize img/s | + model img/s |")
    print("|---|---|---|---|")
    for row in rows:
        del row["resize"]
        print(f"| {row['batch']} | {row['decode_img_s']:.0f} | {row['resize_img_s']:.0f} | {row.get('model_img_s', 0):.0f} |")
        if out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
